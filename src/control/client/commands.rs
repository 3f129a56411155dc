//! The client subcommands as the CLI runs them: resolve the socket, make one
//! request, print the answer for people (or JSON for scripts), pick the exit code.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Client, ClientError, EXIT_FAILED, EXIT_TIMEOUT, Target, WaitIdle};
use crate::control::status_text;
use crate::supervisor::protocol::{QueueList, QueueOp, ReloadOutcome, ReloadResult, RestartWhen};

/// What a CLI client command does, once its target is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// `status [--json]`.
    Status {
        /// Print the snapshot JSON instead of the text for people.
        json: bool,
    },
    /// `reload`.
    Reload,
    /// `restart [--when-idle|--now]`.
    Restart(RestartWhen),
    /// `wait-idle [--timeout DUR]`.
    WaitIdle(Option<Duration>),
    /// `retry-downloads`.
    RetryDownloads,
    /// `wait-idle --drain [--timeout DUR]`.
    Drain(Option<Duration>),
    /// `generate [NAME...] [--force]`: render declared images now.
    Generate {
        /// Image names; empty: all.
        names: Vec<String>,
        /// Render those already on disk too.
        force: bool,
    },
    /// `queue pause|resume|list|release ID`.
    Queue {
        /// What to do.
        op: QueueOp,
        /// Print the listing as JSON.
        json: bool,
    },
}

/// Runs one client command and returns the exit code; prints results to stdout
/// and problems to stderr.
pub fn run(target: &Target, action: ClientAction) -> ExitCode {
    let client = match target.socket_path() {
        Ok(socket) => Client::new(socket),
        Err(e) => return fail(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    runtime.block_on(act(&client, action))
}

async fn act(client: &Client, action: ClientAction) -> ExitCode {
    let result = match action {
        ClientAction::Status { json: true } => client.status_json().await.map(|v| {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            ExitCode::SUCCESS
        }),
        ClientAction::Status { json: false } => client.status().await.map(|s| {
            print!("{}", status_text::render(&s, now_unix()));
            // A bar per download on a terminal; plain figures in a pipe.
            let bar = if std::io::stdout().is_terminal() {
                30
            } else {
                0
            };
            for line in crate::download::summary::lines(&s.downloads, bar) {
                println!("{:<10} {line}", "Download:");
            }
            ExitCode::SUCCESS
        }),
        ClientAction::RetryDownloads => client.retry_downloads().await.map(|n| {
            println!(
                "{n} failed download{} started again",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }),
        ClientAction::Reload => client.reload().await.map(|outcome| report_reload(&outcome)),
        ClientAction::Restart(when) => client.restart(when).await.map(|line| {
            println!("{line}");
            ExitCode::SUCCESS
        }),
        ClientAction::WaitIdle(timeout) => client.wait_idle(timeout).await.map(report_wait),
        ClientAction::Drain(timeout) => client.drain(timeout).await.map(report_wait),
        ClientAction::Generate { names, force } => {
            client.generate(&names, force).await.map(|r| match r {
                Ok(paths) => {
                    for p in paths {
                        println!("{}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(message) => {
                    eprintln!("{message}");
                    ExitCode::from(EXIT_FAILED)
                }
            })
        }
        ClientAction::Queue { op, json } => client.queue(&op).await.map(|list| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
            } else {
                print!("{}", queue_text(&op, &list));
            }
            ExitCode::SUCCESS
        }),
    };
    result.unwrap_or_else(|e| fail(&e))
}

/// The journal for people: one line of state, one line per kept prompt, the
/// last finished ones.
fn queue_text(op: &QueueOp, list: &QueueList) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let said = match op {
        QueueOp::Pause => "queue paused: new prompts are held at the front door\n",
        QueueOp::Resume => "queue resumed\n",
        QueueOp::Release { .. } => "released: sent to the UI again\n",
        QueueOp::List => "",
    };
    s.push_str(said);
    let _ = writeln!(
        s,
        "{}{}; {} kept",
        if list.paused {
            "paused"
        } else {
            "taking prompts"
        },
        if list.replaying {
            "; replaying the journal"
        } else {
            ""
        },
        list.prompts.len()
    );
    for p in &list.prompts {
        let _ = writeln!(
            s,
            "  {}  {:<11}  strikes {}  sent again {}",
            p.prompt_id,
            format!("{:?}", p.state).to_lowercase(),
            p.strikes,
            p.resubmits
        );
    }
    if matches!(op, QueueOp::List) && !list.history.is_empty() {
        let _ = writeln!(s, "recently finished:");
        for d in list.history.iter().rev().take(10) {
            let _ = writeln!(s, "  {}  {:?}", d.prompt_id, d.outcome);
        }
    }
    s
}

/// Prints how a wait ended; exit 5 when it timed out.
fn report_wait(w: WaitIdle) -> ExitCode {
    match w {
        WaitIdle::Idle(s) => {
            println!("{}", s.status_line);
            ExitCode::SUCCESS
        }
        WaitIdle::TimedOut(message) => {
            eprintln!("{message}");
            ExitCode::from(EXIT_TIMEOUT)
        }
    }
}

/// Prints a reload outcome; exit 1 when it was rejected.
fn report_reload(o: &ReloadOutcome) -> ExitCode {
    if o.result == ReloadResult::Rejected {
        eprintln!("reload rejected; the running config stays in force:");
        for e in &o.errors {
            eprintln!("{e}");
        }
        return ExitCode::from(EXIT_FAILED);
    }
    println!("reload {}", o.result);
    let lists = [
        ("applied live", &o.applied_live),
        ("restart scheduled for", &o.needs_restart),
        ("takes effect at the next start", &o.next_start),
        (
            "settings the UI does not know (not sent)",
            &o.unknown_settings,
        ),
    ];
    for (name, list) in lists.into_iter().filter(|(_, l)| !l.is_empty()) {
        println!("{name}: {}", list.join(", "));
    }
    if !o.errors.is_empty() {
        // The new config is in force, but not everything it asks for is done
        // (a link that could not be made): a script must notice.
        eprintln!("reload applied, but not everything could be done:");
        for e in &o.errors {
            eprintln!("{e}");
        }
        return ExitCode::from(EXIT_FAILED);
    }
    ExitCode::SUCCESS
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("sd-webui-supervisor: {e}");
    ExitCode::from(e.exit_code())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
