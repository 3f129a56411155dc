//! Self-upgrade in place (DESIGN §2 flow 4): a reload that names a new
//! `[supervisor] executable` replaces the running supervisor with that binary by
//! `execve`, keeping the PID, so systemd's MainPID and the UI's parent stay the
//! same and the UI keeps running, jobs included.
//!
//! - [`state`]: the versioned document handed over in a memfd: what the core
//!   knows (pending restart, crash record, counters, readiness, uptime) and the
//!   descriptors that travel with it (guard pipe, control listeners).
//! - [`check`]: `handoff-check --state-version N`, run on the new binary before
//!   anything is given up, and the old binary's side of it.
//! - [`execve`]: the `execve` itself: only the handed-over descriptors lose
//!   `FD_CLOEXEC`, from the main thread (the UI's parent-death signal follows
//!   the thread that forked it).
//! - [`send`]: the old binary's side: the core's handover and the descriptors
//!   into the document, then the exec (and the way back when it fails).
//! - [`adopt`]: waiting for a UI the new binary did not spawn, by pidfd.
//! - [`signals`]: SIGHUP/SIGTERM/SIGINT by signalfd, so none is lost in between.

pub mod adopt;
pub mod check;
pub mod execve;
pub mod send;
pub mod signals;
pub mod state;

/// The state document version this binary writes and the newest it reads.
/// Raise it whenever [`state::CoreState`] changes incompatibly.
pub const STATE_VERSION: u32 = 1;

/// Exit status of the supervisor when it ends for a pending service restart
/// (`[supervisor] unit_fingerprint` changed): the unit lists it in
/// `RestartForceExitStatus=`, so systemd starts the service again with the new
/// unit. 75 is `EX_TEMPFAIL`: "try again".
pub const EXIT_SERVICE_RESTART: u8 = 75;
