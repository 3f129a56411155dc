//! PID 1 duties for `run` in a container (`docker run`, Kubernetes): reap every
//! orphan, turn SIGTERM into the supervisor's graceful stop, exit with a status
//! that says how it ended.
//!
//! A container has no init that reaps: the UI's grandchildren (a `webui.sh`
//! launcher, multiprocessing workers) that outlive their parent are re-parented to
//! PID 1 and stay zombies unless PID 1 waits for them. Reaping "every child" from
//! inside the supervisor would race with its own waits for the UI and the group
//! guard (whoever calls `waitpid` first gets the status). So the process splits in
//! two, as tini does: the parent stays PID 1 and only reaps and forwards signals;
//! the child is the supervisor, unchanged (it does not make itself a subreaper
//! here, so orphans go to PID 1). The parent's only own child is the supervisor,
//! so nothing it reaps is anyone else's to wait for.
//!
//! Exit status of PID 1 (documented in docs/containers.md): the supervisor's own
//! (0 after a graceful stop, 1 for a bad config or a failed start), or 128 + N
//! when the supervisor was killed by signal N (137: SIGKILL, e.g. out of memory).
//! When the supervisor is gone, everything left in the container is SIGKILLed
//! (PID 1) or every remaining child is (`--init` elsewhere) before exiting.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid};

/// Set in the supervisor half after [`split`]: orphans go to the init half, so
/// the supervisor must not make itself their subreaper.
static UNDER_INIT: AtomicBool = AtomicBool::new(false);

/// Signals the init half forwards to the supervisor: stop (TERM, INT, QUIT),
/// reload (HUP). Nothing goes to the UI directly: stopping it is the supervisor's
/// business (SIGINT to its group, `stop_timeout`, SIGKILL).
const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
];

/// Exit status when PID 1 could not start the supervisor at all.
const EXIT_INIT_FAILED: i32 = 1;

/// Whether `run` should do an init's duties: asked with `--init`, or running as
/// PID 1 (a container without `--init` of its own).
pub fn wanted(flag: bool) -> bool {
    flag || getpid() == Pid::from_raw(1)
}

/// Whether this process is the supervisor half under [`split`]'s init.
pub fn under_init() -> bool {
    UNDER_INIT.load(Ordering::Relaxed)
}

/// Forks the supervisor off and turns the calling process into its init. Returns
/// in the child (the supervisor goes on); the parent never returns. Must be
/// called while the process has a single thread (before any runtime starts).
pub fn split() -> io::Result<()> {
    let mut watched = SigSet::empty();
    watched.add(Signal::SIGCHLD);
    for sig in FORWARDED {
        watched.add(sig);
    }
    let mut previous = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&watched), Some(&mut previous))?;
    let pid1 = getpid() == Pid::from_raw(1);
    if !pid1 {
        // Outside a PID namespace of its own, orphans go to the nearest subreaper.
        crate::ui::process::become_subreaper()?;
    }
    // SAFETY: the process has one thread (documented precondition), so the child
    // may run arbitrary code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
            // Outside a PID namespace: if the init half dies, stop gracefully.
            // SAFETY: prctl with integer arguments has no memory-safety preconditions.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM, 0, 0, 0) };
            UNDER_INIT.store(true, Ordering::Relaxed);
            Ok(())
        }
        ForkResult::Parent { child } => {
            let code = supervise(child, &watched, pid1);
            std::process::exit(code)
        }
    }
}

/// The init half: waits for signals, reaps, forwards; returns the exit status.
fn supervise(supervisor: Pid, watched: &SigSet, pid1: bool) -> i32 {
    loop {
        let sig = match watched.wait() {
            Ok(sig) => sig,
            Err(e) => {
                eprintln!("sd-webui-supervisor init: cannot wait for signals: {e}");
                // Nothing else to do but keep reaping until the supervisor is gone.
                Signal::SIGCHLD
            }
        };
        if sig != Signal::SIGCHLD {
            if let Err(e) = kill(supervisor, sig)
                && e != Errno::ESRCH
            {
                eprintln!("sd-webui-supervisor init: cannot forward {sig} to the supervisor: {e}");
            }
            continue;
        }
        if let Some(code) = reap(supervisor) {
            clear_out(pid1);
            return code;
        }
    }
}

/// Reaps every exited child; the supervisor's exit status once it is among them.
fn reap(supervisor: Pid) -> Option<i32> {
    let mut ended = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == supervisor => ended = Some(code),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == supervisor => {
                ended = Some(128_i32.saturating_add(sig as i32));
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return ended,
            Ok(_) => {}
            Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("sd-webui-supervisor init: waitpid: {e}");
                return ended.or(Some(EXIT_INIT_FAILED));
            }
        }
    }
}

/// After the supervisor: nothing of the container may outlive it. As PID 1,
/// SIGKILL everything else in the namespace; elsewhere, every remaining child
/// (orphans re-parented to this subreaper). Then reap them all.
fn clear_out(pid1: bool) {
    if pid1 {
        // kill(-1) from a namespace's init reaches every other process in it.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    } else {
        for pid in own_children() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    loop {
        match waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// This process's children, from /proc (a subreaper has no other list of them).
fn own_children() -> Vec<Pid> {
    let me = getpid().as_raw();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name();
            let pid: i32 = name.to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            (parent_of(&stat)? == me).then_some(Pid::from_raw(pid))
        })
        .collect()
}

/// The parent pid in a `/proc/PID/stat` line: `pid (comm) state ppid ...`, where
/// comm may itself contain spaces and parentheses.
fn parent_of(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parent_of;

    #[test]
    fn parent_of_reads_past_a_command_name_with_parentheses() {
        assert_eq!(
            parent_of("42 (py (worker) x) S 7 42 42 0 -1 4194560"),
            Some(7)
        );
        assert_eq!(parent_of("42 (python3) Z 1 42"), Some(1));
        assert_eq!(parent_of("garbage"), None);
    }
}
