//! Replacing the running binary with `execve`.
//!
//! Every descriptor the supervisor opens is close-on-exec; only those named here
//! lose the flag, so the new binary inherits exactly the handed-over set. The
//! call must come from the process's main thread: the UI was forked by it with
//! `PR_SET_PDEATHSIG`, which fires when the forking *thread* ends, and `execve`
//! from another thread ends the main one. The daemon's signals are blocked all
//! along (see [`super::signals`]): one arriving meanwhile stays pending for the
//! new binary.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Whether the caller runs on the process's main thread.
pub fn on_main_thread() -> bool {
    nix::unistd::gettid() == nix::unistd::getpid()
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD on a descriptor number only change its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::FD_CLOEXEC
        } else {
            flags & !libc::FD_CLOEXEC
        };
        if libc::fcntl(fd, libc::F_SETFD, flags) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Execs `exe` with `args` (argv\[0\] is `exe`) and the current environment,
/// handing over `keep`. Returns only on failure, with everything as before.
pub fn exec(exe: &Path, args: &[OsString], keep: &[RawFd]) -> io::Error {
    if !on_main_thread() {
        return io::Error::other("not on the main thread: the UI's parent-death signal would fire");
    }
    let cstr = |s: &[u8]| CString::new(s).map_err(io::Error::other);
    let argv: io::Result<Vec<CString>> = std::iter::once(exe.as_os_str())
        .chain(args.iter().map(|a| a.as_os_str()))
        .map(|a| cstr(a.as_bytes()))
        .collect();
    let (path, argv) = match (cstr(exe.as_os_str().as_bytes()), argv) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    for (i, fd) in keep.iter().enumerate() {
        if let Err(e) = set_cloexec(*fd, false) {
            for fd in &keep[..i] {
                let _ = set_cloexec(*fd, true);
            }
            return e;
        }
    }
    let err = match nix::unistd::execv(&path, &argv) {
        Err(e) => io::Error::from(e),
        Ok(never) => match never {},
    };
    for fd in keep {
        let _ = set_cloexec(*fd, true);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_refuses_to_run_off_the_main_thread() {
        // Test functions run on worker threads: an exec here would end the main
        // thread, and with it every child it forked with PR_SET_PDEATHSIG.
        assert!(!on_main_thread());
        let err = exec(Path::new("/bin/true"), &[], &[]);
        assert!(err.to_string().contains("not on the main thread"), "{err}");
    }
}
