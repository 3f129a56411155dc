//! Waiting for a UI this binary did not spawn: after a handoff the UI is still
//! this process's child (same PID), but tokio's `Child` that watched it was in
//! the old image. A pidfd turns its exit into a readiness event; `waitpid` then
//! reaps it and yields the status, as `Child::wait` would have.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A child process known only by its pid.
#[derive(Debug)]
pub struct PidChild {
    pid: i32,
    fd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl PidChild {
    /// Adopts `pid`, which must be a child of this process.
    pub fn adopt(pid: i32) -> io::Result<PidChild> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor to us alone.
        let owned = unsafe { OwnedFd::from_raw_fd(raw) };
        // pidfd_open sets close-on-exec itself.
        // SAFETY: an OwnedFd is open and always names the same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) }?;
        let mut child = PidChild {
            pid,
            fd,
            status: None,
        };
        // Fails with ECHILD when it is not our child: then it cannot be waited for.
        child.status = reap(pid)?;
        Ok(child)
    }

    /// The pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Waits for the process to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            let mut ready = self.fd.readable().await?;
            match reap(self.pid)? {
                Some(s) => self.status = Some(s),
                None => ready.clear_ready(),
            }
        }
    }
}

/// `waitpid(pid, WNOHANG)`: the status once it exited, `None` while it runs.
fn reap(pid: i32) -> io::Result<Option<ExitStatus>> {
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid writes the status into our local.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(None),
        r if r == pid => Ok(Some(ExitStatus::from_raw(status))),
        _ => Err(io::Error::last_os_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_adopted_child_is_waited_for_by_pid() {
        let child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.2; exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Forget std's handle: from here on the child is known by its pid only.
        std::mem::forget(child);
        let mut adopted = PidChild::adopt(pid).unwrap();
        let status = adopted.wait().await.unwrap();
        assert_eq!(status.code(), Some(7));
        // Cancel-safe and idempotent.
        assert_eq!(adopted.wait().await.unwrap().code(), Some(7));
    }

    #[test]
    fn a_process_that_is_not_our_child_is_refused() {
        // pid 1 is nobody's child.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { assert!(PidChild::adopt(1).is_err()) });
    }
}
