//! A guard process for the UI's group. `PR_SET_PDEATHSIG` reaches only the UI's
//! main process: a SIGKILLed supervisor would leave the rest of the group (the
//! Python under A1111's `webui.sh`, multiprocessing workers) running and holding
//! GPU memory. Under systemd the cgroup catches them; outside it, this does.
//!
//! The guard is a forked child of the supervisor that blocks reading a pipe whose
//! only writer is the supervisor. When the supervisor dies, however it dies, the
//! kernel closes that end, the read returns end-of-file, and the guard SIGKILLs the
//! whole group and exits. After a normal stop the supervisor writes one byte
//! instead: the group is already gone, and the guard exits without killing (so it
//! never signals a process group id the kernel has since handed out again).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The name the guard shows in `ps` (at most 15 bytes).
const NAME: &[u8] = b"sd-webui-guard\0";

/// How long `release` waits for the guard to exit before leaving it to be reaped
/// by whoever reaps orphans.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// A running guard; [`GroupGuard::release`] ends it without killing. Dropped
/// without release, it kills the group (nothing of the UI outlives its handle).
#[derive(Debug)]
pub struct GroupGuard {
    pid: Pid,
    release: OwnedFd,
}

impl GroupGuard {
    /// Forks a guard for process group `pgid`.
    pub fn spawn(pgid: i32) -> io::Result<GroupGuard> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // SAFETY: the supervisor has other threads (tokio's blocking pool, notify),
        // so the child may only make async-signal-safe calls: `guard_main` uses
        // raw syscalls only (dup2, close_range/close, prctl, sigaction, read, kill,
        // _exit), allocates nothing and never returns.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            0 => unsafe { guard_main(read.as_raw_fd(), pgid) },
            pid => Ok(GroupGuard {
                pid: Pid::from_raw(pid),
                release: write,
            }),
        }
    }

    /// The group is gone: tells the guard to exit without killing, and reaps it.
    pub async fn release(self) {
        if let Err(e) = nix::unistd::write(&self.release, b"x") {
            tracing::warn!(guard = self.pid.as_raw(), error = %e, "cannot release the UI group's guard");
        }
        let pid = self.pid;
        drop(self.release);
        let step = Duration::from_millis(2);
        let mut waited = Duration::ZERO;
        while waited < RELEASE_WAIT {
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                // Exited and reaped, or already reaped.
                Ok(_) | Err(_) => return,
            }
            tokio::time::sleep(step).await;
            waited += step;
        }
        tracing::warn!(
            guard = pid.as_raw(),
            "the UI group's guard did not exit when released"
        );
    }
}

/// The guard itself, in the forked child.
///
/// # Safety
/// Only to be called in the child right after `fork`; never returns.
unsafe fn guard_main(read: RawFd, pgid: i32) -> ! {
    unsafe {
        // The pipe becomes stdin; every other inherited descriptor is closed, above
        // all the pipe's write end (else the read never ends) and the supervisor's
        // sockets (else a restarted supervisor finds its port held). stdout and
        // stderr stay: they are the journal.
        if libc::dup2(read, 0) < 0 {
            libc::_exit(1);
        }
        if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) != 0 {
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(65_536) as i32
            } else {
                1024
            };
            for fd in 3..max {
                libc::close(fd);
            }
        }
        libc::prctl(libc::PR_SET_NAME, NAME.as_ptr(), 0, 0, 0);
        // A terminal's Ctrl-C or hangup reaches the supervisor's process group, the
        // guard included: the supervisor handles those and then releases the guard.
        for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTERM] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let mut byte = 0u8;
        loop {
            let n = libc::read(0, (&raw mut byte).cast(), 1);
            if n == 1 {
                libc::_exit(0);
            }
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            // End of file (the supervisor is gone) or a broken pipe: kill the group.
            libc::kill(-pgid, libc::SIGKILL);
            libc::_exit(0);
        }
    }
}
