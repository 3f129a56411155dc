//! The new binary proves itself before the old one gives anything up:
//! `NEW handoff-check --state-version N --config FILE` must start, read state
//! version `N`, accept the config file, print `state-version M` and exit 0.
//! Anything else rejects the reload and the old binary keeps running.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use super::STATE_VERSION;
use crate::config::Config;

/// How long the check may take (a cold page cache on a big store path).
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the new binary was refused; the text goes to status, log and `reload`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Nothing at the path.
    #[error("{} does not exist", .0.display())]
    Missing(PathBuf),
    /// Not a file with an execute bit.
    #[error("{} is not an executable file", .0.display())]
    NotExecutable(PathBuf),
    /// Could not be started.
    #[error("{} cannot be run: {why}", path.display())]
    Spawn {
        /// The binary.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
    /// Ran past [`CHECK_TIMEOUT`].
    #[error("{} did not finish its handoff check within {}s", .0.display(), CHECK_TIMEOUT.as_secs())]
    Timeout(PathBuf),
    /// Exited non-zero (or printed nothing usable).
    #[error("{} failed its handoff check ({status}){}", path.display(), if output.is_empty() { String::new() } else { format!(": {output}") })]
    Failed {
        /// The binary.
        path: PathBuf,
        /// `exit 1`, `signal 9`, …
        status: String,
        /// The first lines of what it printed.
        output: String,
    },
    /// Reads only an older state version than this binary writes.
    #[error("{} reads handoff state version {theirs}, this supervisor writes version {ours}; not handing over", path.display())]
    OlderState {
        /// The binary.
        path: PathBuf,
        /// What it reads.
        theirs: u32,
        /// What we write.
        ours: u32,
    },
}

/// The `handoff-check` command, in the new binary.
pub fn check_mode(state_version: u32, config: Option<&Path>) -> ExitCode {
    if state_version > STATE_VERSION {
        eprintln!(
            "handoff state version {state_version} is newer than this binary reads ({STATE_VERSION})"
        );
        return ExitCode::from(1);
    }
    if let Some(path) = config
        && let Err(e) = Config::load(path)
    {
        eprintln!("{e}");
        return ExitCode::from(1);
    }
    println!("state-version {STATE_VERSION}");
    ExitCode::SUCCESS
}

/// Runs the check on `exe` (the old binary's side).
pub async fn check_binary(exe: &Path, config: &Path) -> Result<(), CheckError> {
    let path = exe.to_path_buf();
    let meta = match std::fs::metadata(exe) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckError::Missing(path));
        }
        Err(e) => {
            return Err(CheckError::Spawn {
                path,
                why: e.to_string(),
            });
        }
    };
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(CheckError::NotExecutable(path));
    }
    let mut cmd = tokio::process::Command::new(exe);
    cmd.arg("handoff-check")
        .arg("--state-version")
        .arg(STATE_VERSION.to_string())
        .arg("--config")
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| CheckError::Spawn {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let out = match tokio::time::timeout(CHECK_TIMEOUT, child.wait_with_output()).await {
        Err(_) => return Err(CheckError::Timeout(path)),
        Ok(Err(e)) => {
            return Err(CheckError::Spawn {
                path,
                why: e.to_string(),
            });
        }
        Ok(Ok(out)) => out,
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let theirs = stdout
        .lines()
        .find_map(|l| l.strip_prefix("state-version "))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match (out.status.success(), theirs) {
        (true, Some(theirs)) if theirs >= STATE_VERSION => Ok(()),
        (true, Some(theirs)) => Err(CheckError::OlderState {
            path,
            theirs,
            ours: STATE_VERSION,
        }),
        (ok, _) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stderr), stdout);
            let output: Vec<&str> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .take(3)
                .collect();
            Err(CheckError::Failed {
                path,
                status: if ok {
                    "exit 0 without a state version".into()
                } else {
                    crate::ui::process::describe_exit(&out.status)
                },
                output: output.join("; "),
            })
        }
    }
}
