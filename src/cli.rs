//! Command-line interface: the subcommands of docs/design.md#commands and their exit codes.
//!
//! Exit codes: 0 success; 1 invalid config or failed operation; 2 usage error
//! (clap); 3 layout finished with conflicts; 4 no daemon answered; 5 timed out;
//! `run` exits 75 when the service unit changed and systemd should start it again
//! (`RestartForceExitStatus=75`, see docs/upgrade.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::client::{self, ClientAction, Target};
use crate::supervisor::protocol::{QueueOp, RestartWhen};

/// Runs a Stable Diffusion web UI (Forge, A1111, ComfyUI) as a supervised service.
#[derive(Debug, Parser)]
#[command(name = "sd-webui-supervisor", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: lay out the data dir, start the UI, report to systemd.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Internal: the state document of the binary this one replaces.
        #[arg(long, hide = true)]
        handoff_fd: Option<i32>,
        /// Also act as init (reap orphans, forward signals); automatic as PID 1.
        #[arg(long)]
        init: bool,
    },
    /// Prove this binary can take over a running supervisor: reads state
    /// version N and accepts the config file. Run by the old binary before a
    /// self-upgrade; prints `state-version M`.
    HandoffCheck {
        /// The state version the running supervisor writes.
        #[arg(long)]
        state_version: u32,
        /// The config file the new binary will run with.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Parse and validate a config file; print every problem.
    CheckConfig {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show the running daemon's status (`--json` for scripts).
    Status {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// Print the status snapshot as JSON (schema: docs/status.schema.json).
        #[arg(long)]
        json: bool,
    },
    /// Make the running daemon re-read its config file (like `systemctl reload`).
    Reload {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
    },
    /// Restart the UI: once its queue is empty (default) or at once.
    Restart {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// Wait until no job runs or waits (the default).
        #[arg(long, conflicts_with = "now")]
        when_idle: bool,
        /// Restart at once, interrupting running jobs.
        #[arg(long)]
        now: bool,
    },
    /// Block until the UI is ready and its queue is empty; exit 5 on timeout.
    WaitIdle {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// Drain first: `/readyz` answers 503 from now on (a Kubernetes preStop
        /// hook), then wait until no job runs or waits.
        #[arg(long)]
        drain: bool,
        /// Give up after this long (`30s`, `10m`); default: wait without limit.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
    /// Start the running daemon's failed downloads again (a wrong hash, an
    /// HTTP 401/403/404, a missing token file or a full disk are not retried
    /// by themselves).
    RetryDownloads {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
    },
    /// Download every declared `{ url, sha256 }` model into the cache, lay out
    /// the data dir, and exit: 0 when all are in, 1 when one failed.
    FetchModels {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Render declared images (`[images.<name>]`) now, through the running
    /// daemon, once the UI is ready and idle; print their paths. Exit 1 with the
    /// UI's error when a render fails.
    Generate {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// Images to render; default: every declared image.
        #[arg(value_name = "NAME")]
        names: Vec<String>,
        /// Render even images whose file already matches their declaration.
        #[arg(long)]
        force: bool,
    },
    /// The journal of ComfyUI prompts: pause or resume new submissions at the
    /// front door, list what is kept, release a quarantined prompt.
    Queue {
        /// What to do.
        #[command(subcommand)]
        op: QueueCommand,
    },
    /// Lay out the data dir once (links, folders, settings) and exit; 3 on conflicts.
    Layout {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// Print the plan, one action a line, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The `queue` subcommands.
#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// Hold new prompts at the front door (running and queued work goes on).
    Pause {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
    },
    /// Let new prompts through again.
    Resume {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
    },
    /// The kept prompts (pending, running, quarantined) and the last finished.
    List {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// Print JSON (the `GET /v1/queue` answer).
        #[arg(long)]
        json: bool,
    },
    /// Send a quarantined prompt to the UI again.
    Release {
        /// Where the daemon is.
        #[command(flatten)]
        target: Target,
        /// The prompt's id, as `queue list` shows it.
        prompt_id: String,
    },
}

/// Runs a parsed command line and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    match cli.command {
        Command::CheckConfig { config } => match Config::load(&config) {
            Ok(_) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Layout { config, dry_run } => crate::layout::command(&config, dry_run),
        Command::FetchModels { config } => {
            crate::logging::init();
            crate::download::command::fetch_models(&config)
        }
        Command::Run {
            config,
            handoff_fd,
            init,
        } => {
            // Before the runtime starts: the split needs a single-threaded process.
            if crate::init::wanted(init)
                && let Err(e) = crate::init::split()
            {
                eprintln!("cannot start as init: {e}");
                return ExitCode::from(1);
            }
            run_daemon(&config, handoff_fd)
        }
        Command::HandoffCheck {
            state_version,
            config,
        } => crate::handoff::check::check_mode(state_version, config.as_deref()),
        Command::Status { target, json } => client::run(&target, ClientAction::Status { json }),
        Command::Reload { target } => client::run(&target, ClientAction::Reload),
        Command::RetryDownloads { target } => client::run(&target, ClientAction::RetryDownloads),
        Command::Queue { op } => {
            let (target, op, json) = match op {
                QueueCommand::Pause { target } => (target, QueueOp::Pause, false),
                QueueCommand::Resume { target } => (target, QueueOp::Resume, false),
                QueueCommand::List { target, json } => (target, QueueOp::List, json),
                QueueCommand::Release { target, prompt_id } => {
                    (target, QueueOp::Release { prompt_id }, false)
                }
            };
            client::run(&target, ClientAction::Queue { op, json })
        }
        Command::Restart { target, now, .. } => {
            let when = if now {
                RestartWhen::Now
            } else {
                RestartWhen::Idle
            };
            client::run(&target, ClientAction::Restart(when))
        }
        Command::WaitIdle {
            target,
            timeout,
            drain,
        } => {
            let action = if drain {
                ClientAction::Drain(timeout)
            } else {
                ClientAction::WaitIdle(timeout)
            };
            client::run(&target, action)
        }
        Command::Generate {
            target,
            names,
            force,
        } => client::run(&target, ClientAction::Generate { names, force }),
    }
}

/// Threads of the daemon's blocking pool (one runs a layout, the rest read files
/// and resolve names).
const BLOCKING_THREADS: usize = 4;

/// The daemon runs on a current-thread runtime: the UI is spawned with
/// `PR_SET_PDEATHSIG`, which fires when the *forking thread* exits, so all spawning
/// happens on the main thread, which lives as long as the process.
///
/// Memory: the daemon idles for months, so it keeps few threads (the blocking
/// pool serves layouts, file reads and name lookups, at most [`BLOCKING_THREADS`]
/// at once; idle, the daemon runs 2 threads: this one and the file watcher's).
fn run_daemon(config: &std::path::Path, handoff_fd: Option<i32>) -> ExitCode {
    // Before any thread exists, so every thread inherits the mask.
    if let Err(e) = crate::handoff::signals::hold() {
        eprintln!("cannot block SIGHUP/SIGTERM/SIGINT: {e}");
        return ExitCode::from(1);
    }
    crate::logging::init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::daemon::run(config, handoff_fd)) {
        Ok(crate::daemon::Exit::Stopped) => ExitCode::SUCCESS,
        Ok(crate::daemon::Exit::ServiceRestart) => {
            ExitCode::from(crate::handoff::EXIT_SERVICE_RESTART)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
