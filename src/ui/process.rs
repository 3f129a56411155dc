//! The UI process: spawned in its own process group, killed if the supervisor
//! dies (the main process by the kernel, the rest of the group by a [`guard`]),
//! stopped as a group, and not considered gone until every process of the group is
//! gone (so GPU memory is free before the next start).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::guard::GroupGuard;
use super::output::{OutputTail, Redactor, Stream, spawn_relay};

/// What to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment (on top of the supervisor's own).
    pub env: BTreeMap<String, String>,
}

/// A running UI process group.
#[derive(Debug)]
pub struct UiProcess {
    child: Child,
    pid: i32,
    /// Kills the group if the supervisor dies; none if it could not be forked.
    guard: Option<GroupGuard>,
    /// The last lines of the UI's output (relayed, redacted).
    output: OutputTail,
}

/// How to stop the UI (see [`UiProcess::stop`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopPlan {
    /// Longest wait for the main process after the first SIGINT before SIGKILL.
    pub grace: Duration,
    /// Send SIGINT again this often during the grace: a Forge or A1111 still
    /// importing torch loses the first one (ui-apis.md §10).
    pub resend: Option<Duration>,
}

/// Makes the supervisor the reaper of orphaned descendants, so that processes the UI
/// leaves behind are reaped by us (and waited for) instead of lingering as zombies
/// under an init that may not reap them.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with integer arguments has no memory-safety preconditions.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl UiProcess {
    /// Spawns the UI. Must be called from a thread that lives as long as the
    /// supervisor (the daemon's current-thread runtime): `PR_SET_PDEATHSIG` fires
    /// when the forking *thread* exits.
    /// Its stdout and stderr are relayed by tasks (see [`super::output`]), with
    /// every secret of `redactor` masked.
    pub fn spawn(launch: &Launch, redactor: &Redactor) -> io::Result<UiProcess> {
        let (program, args) = launch
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command"))?;
        let mut cmd = Command::new(program);
        // systemd's notify socket and watchdog are the supervisor's, not the UI's.
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            cmd.env_remove(key);
        }
        cmd.args(args)
            .envs(&launch.env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (prctl, getppid, signal, sigprocmask, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The supervisor may have died before prctl took effect.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                // A Python UI that inherits SIG_IGN for SIGINT never stops on SIGINT.
                for sig in [
                    libc::SIGINT,
                    libc::SIGTERM,
                    libc::SIGHUP,
                    libc::SIGQUIT,
                    libc::SIGPIPE,
                ] {
                    libc::signal(sig, libc::SIG_DFL);
                }
                let mut empty: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut empty);
                libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| io::Error::other("spawned child has no pid"))?;
        let output = OutputTail::default();
        if let Some(out) = child.stdout.take() {
            spawn_relay(
                out,
                Stream::Stdout,
                pid as u32,
                redactor.clone(),
                output.clone(),
            );
        }
        if let Some(err) = child.stderr.take() {
            spawn_relay(
                err,
                Stream::Stderr,
                pid as u32,
                redactor.clone(),
                output.clone(),
            );
        }
        let guard = GroupGuard::spawn(pid)
            .inspect_err(|e| {
                tracing::warn!(pid, error = %e, "cannot fork the UI group's guard; if the supervisor is killed, the UI's child processes may outlive it");
            })
            .ok();
        Ok(UiProcess {
            child,
            pid,
            guard,
            output,
        })
    }

    /// PID of the UI (also its process group id).
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The last lines the UI printed.
    pub fn output(&self) -> &OutputTail {
        &self.output
    }

    /// Waits for the UI's main process to exit.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Sends a signal to the whole group.
    pub fn signal(&self, sig: Signal) {
        if let Err(e) = killpg(Pid::from_raw(self.pid), sig)
            && e != Errno::ESRCH
        {
            tracing::warn!(ui_pid = self.pid, signal = %sig, error = %e, "cannot signal the UI's process group");
        }
    }

    /// Stops the group: SIGINT (again every `plan.resend`), up to `plan.grace` for
    /// the main process to exit, SIGKILL to the group, then waits until no process
    /// of the group remains. Returns the main process's exit status.
    pub async fn stop(mut self, plan: StopPlan) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGINT);
        let start = tokio::time::Instant::now();
        // A year stands for "no limit" when the grace would overflow the clock.
        let deadline = start
            .checked_add(plan.grace)
            .unwrap_or_else(|| start + Duration::from_secs(365 * 24 * 3600));
        let status = loop {
            let now = tokio::time::Instant::now();
            let next = match plan.resend {
                Some(every) if !every.is_zero() => {
                    now.checked_add(every).unwrap_or(deadline).min(deadline)
                }
                _ => deadline,
            };
            match tokio::time::timeout_at(next, self.child.wait()).await {
                Ok(status) => break status?,
                Err(_) if next < deadline => {
                    tracing::info!(
                        ui_pid = self.pid,
                        "UI still running after SIGINT; sending it again"
                    );
                    self.signal(Signal::SIGINT);
                }
                Err(_) => {
                    tracing::warn!(ui_pid = self.pid, grace = ?plan.grace, "UI did not exit after SIGINT; sending SIGKILL to its group");
                    self.signal(Signal::SIGKILL);
                    break self.child.wait().await?;
                }
            }
        };
        self.signal(Signal::SIGKILL);
        wait_group_gone(self.pid).await;
        self.release_guard().await;
        Ok(status)
    }

    /// After the main process exited by itself: kill and reap what it left behind.
    pub async fn reap_group(mut self) {
        self.signal(Signal::SIGKILL);
        wait_group_gone(self.pid).await;
        self.release_guard().await;
    }

    async fn release_guard(&mut self) {
        if let Some(guard) = self.guard.take() {
            guard.release().await;
        }
    }
}

/// Waits until no process of group `pgid` exists, reaping group members that were
/// re-parented to us (we are a subreaper). Re-sends SIGKILL every few seconds: a
/// process stuck in the GPU driver may take a while.
async fn wait_group_gone(pgid: i32) {
    let group = Pid::from_raw(pgid);
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(20);
    loop {
        // Reap any zombie of the group that is our child; the main process was
        // already reaped by tokio, so this never steals its status.
        while let Ok(status) = waitpid(Pid::from_raw(-pgid), Some(WaitPidFlag::WNOHANG)) {
            if matches!(status, nix::sys::wait::WaitStatus::StillAlive) {
                break;
            }
        }
        match killpg(group, None) {
            Err(Errno::ESRCH) => return,
            _ => {
                if waited.as_millis().is_multiple_of(5000) && !waited.is_zero() {
                    tracing::warn!(pgid, waited = ?waited, "processes of the old UI are still alive");
                    let _ = killpg(group, Signal::SIGKILL);
                }
            }
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

/// Short description of an exit status for status lines: `exit 1`, `signal 9 (SIGKILL)`.
pub fn describe_exit(status: &ExitStatus) -> String {
    if let Some(code) = status.code() {
        format!("exit {code}")
    } else if let Some(sig) = status.signal() {
        match Signal::try_from(sig) {
            Ok(s) => format!("signal {sig} ({s})"),
            Err(_) => format!("signal {sig}"),
        }
    } else {
        status.to_string()
    }
}
