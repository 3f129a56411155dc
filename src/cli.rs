//! Command-line interface: the subcommands of DESIGN §3.1 and their exit codes.
//!
//! Exit codes: 0 success; 1 invalid config or failed operation; 2 usage error
//! (clap); 3 layout finished with conflicts; 4 no daemon answered; 5 timed out.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::control::client::{self, ClientAction, Target};
use crate::supervisor::protocol::RestartWhen;

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
            init_tracing();
            crate::download::command::fetch_models(&config)
        }
        Command::Run { config } => run_daemon(&config),
        Command::Status { target, json } => client::run(&target, ClientAction::Status { json }),
        Command::Reload { target } => client::run(&target, ClientAction::Reload),
        Command::RetryDownloads { target } => client::run(&target, ClientAction::RetryDownloads),
        Command::Restart { target, now, .. } => {
            let when = if now {
                RestartWhen::Now
            } else {
                RestartWhen::Idle
            };
            client::run(&target, ClientAction::Restart(when))
        }
        Command::WaitIdle { target, timeout } => {
            client::run(&target, ClientAction::WaitIdle(timeout))
        }
    }
}

/// Logs go to stderr (the journal under systemd, which adds its own timestamps).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if under_journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// The daemon runs on a current-thread runtime: the UI is spawned with
/// `PR_SET_PDEATHSIG`, which fires when the *forking thread* exits, so all spawning
/// happens on the main thread, which lives as long as the process.
fn run_daemon(config: &std::path::Path) -> ExitCode {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(crate::daemon::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}
