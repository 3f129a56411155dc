//! SIGHUP, SIGTERM and SIGINT through a signalfd, so that none is lost across a
//! self-upgrade.
//!
//! The three are blocked in every thread from the start ([`hold`], before the
//! runtime creates any thread) and read from a signalfd. A blocked signal that
//! nobody has read stays pending in the kernel, and pending signals survive
//! `execve`: a `systemctl reload` or `stop` that arrives while the old binary
//! hands over is read by the new one. A signal read when the core is already
//! gone is sent to the process again, for the same reason.

use std::io;

use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, pthread_sigmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The signals the daemon handles.
fn set() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set.add(s);
    }
    set
}

/// Blocks the daemon's signals in the calling thread and every thread it creates
/// later. Call first thing on the main thread.
pub fn hold() -> io::Result<()> {
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set()), None).map_err(io::Error::from)
}

/// The daemon's signals, read one at a time.
#[derive(Debug)]
pub struct Signals {
    fd: AsyncFd<SignalFd>,
}

impl Signals {
    /// Opens the signalfd (after [`hold`]).
    pub fn open() -> io::Result<Signals> {
        let sfd = SignalFd::with_flags(&set(), SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        // SAFETY: the SignalFd owns its descriptor and always reports the same one.
        let fd = unsafe { AsyncFd::register_with_interest(sfd, Interest::READABLE) }?;
        Ok(Signals { fd })
    }

    /// The next signal.
    pub async fn next(&mut self) -> io::Result<Signal> {
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.get_inner().read_signal() {
                Ok(Some(info)) => {
                    if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                        return Ok(sig);
                    }
                }
                Ok(None) => ready.clear_ready(),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Sends `sig` to this process again: it stays pending (blocked everywhere)
/// until whoever runs next reads it — this binary or the one it execs.
pub fn resend(sig: Signal) {
    if let Err(e) = kill(nix::unistd::getpid(), sig) {
        tracing::warn!(signal = %sig, error = %e, "cannot re-send a signal to ourselves");
    }
}
