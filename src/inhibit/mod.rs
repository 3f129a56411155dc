//! The sleep inhibitor (docs/design.md#the-sleep-inhibitor): while the UI's queue
//! has jobs, the supervisor holds a logind `sleep` lock in `block` mode, so the
//! machine does not suspend in the middle of a generation; it lets go when the
//! queue is idle, the UI stops or the supervisor exits.
//!
//! Like the front door it is a task beside the core that only reads the core's
//! snapshots (the queue, and `gpu.inhibit_sleep` of the config in force, so a
//! reload switches it at once): the core never waits for it, nor for logind.
//! What it wants for a snapshot is the pure [`Want::of`]; the task makes the
//! calls (`logind.rs`) and publishes whether it holds the lock, which
//! [`CoreHandle::snapshot`] adds to the status as `sleep_inhibited`.
//!
//! A self-upgrade hands the lock to the new binary ([`Inhibitor::hand_over`],
//! [`Carried`] in the handoff document), which starts holding it: the machine
//! is never free to sleep between the two binaries while a job runs.
//!
//! Without a system bus or logind (a container, a host without systemd) it says
//! so once at `info` and does nothing more. A failed call is a warning once per
//! distinct error, never more, and never stops anything.

mod logind;
mod socket;

use std::os::fd::OwnedFd;

use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use logind::{LogindError, MODE, WHAT, WHO};

use crate::supervisor::protocol::{CoreHandle, Phase, Snapshot};
use crate::warn_once::WarnOnce;
use logind::Logind;

/// What the inhibitor wants, read from one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// `gpu.inhibit_sleep = false`: no lock, nothing to say.
    Off,
    /// No job runs or waits (or the UI is not ready, so none can): no lock.
    Idle,
    /// This many jobs run or wait: a lock whose `why` says so.
    Busy(u32),
    /// The UI is ready but its last queue probe failed (or none came back
    /// yet): keep what is held, as one lost probe is no reason to let the
    /// machine sleep in the middle of a job.
    Unknown,
}

impl Want {
    /// The want for `s`: busy only while the UI is ready and its last probed
    /// queue has a job running or waiting (a stopping UI has none that will
    /// finish).
    pub fn of(s: &Snapshot) -> Want {
        if !s.inhibit_sleep {
            return Want::Off;
        }
        match (s.state, s.queue) {
            (Phase::Ready, Some(q)) if !q.is_idle() => {
                Want::Busy(q.running.saturating_add(q.pending))
            }
            (Phase::Ready, None) => Want::Unknown,
            _ => Want::Idle,
        }
    }
}

/// The `why` of a lock for `jobs` jobs (running and waiting), as
/// `systemd-inhibit --list` shows it.
pub fn why(jobs: u32) -> String {
    format!("{jobs} generation job(s) running")
}

/// A lock travelling to the next binary in a self-upgrade: logind keeps it as
/// long as the descriptor is open, whichever binary holds it.
#[derive(Debug)]
pub struct Carried {
    /// The lock's descriptor (a FIFO end logind watches).
    pub fd: OwnedFd,
    /// The job count its `why` says.
    pub jobs: u32,
}

/// How long ending the task may wait for a logind call in progress.
const END_WAIT: Duration = Duration::from_secs(2);

/// How the task is asked to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close the lock.
    Release,
    /// Give the lock to the caller (a self-upgrade).
    HandOver,
}

/// The running inhibitor task.
pub struct Inhibitor {
    task: JoinHandle<Option<Lock>>,
    end: oneshot::Sender<End>,
    held: watch::Receiver<Option<bool>>,
}

impl Inhibitor {
    /// Starts the task on `core`'s snapshots, holding `carried` (the previous
    /// binary's lock, after a self-upgrade) until the snapshots say otherwise.
    /// It connects to the system bus at once (unless `gpu.inhibit_sleep` is
    /// off), so that a machine without logind is reported when the supervisor
    /// starts, not at the first job.
    pub fn start(core: &CoreHandle, carried: Option<Carried>) -> Inhibitor {
        let (held_tx, held) = watch::channel(None);
        let (end, end_rx) = oneshot::channel();
        let lock = carried.map(|c| {
            tracing::info!(
                jobs = c.jobs,
                "holding off sleep with the previous binary's inhibitor lock"
            );
            Lock {
                fd: c.fd,
                jobs: c.jobs,
            }
        });
        let task = tokio::spawn(run(core.subscribe(), held_tx, lock, end_rx));
        Inhibitor { task, end, held }
    }

    /// Whether the lock is held now, for [`CoreHandle::attach_inhibitor`]:
    /// `Some(held)`, or `None` while the inhibitor takes no lock at all
    /// (switched off, or no logind).
    pub fn held(&self) -> watch::Receiver<Option<bool>> {
        self.held.clone()
    }

    /// Ends the task, which closes the lock if one is held: the core has
    /// ended for a stop.
    pub async fn stop(self) {
        // The task says so when it closes one.
        drop(self.end_task(End::Release).await);
    }

    /// Ends the task and takes its lock, if it holds one, for the next binary
    /// of a self-upgrade (the descriptor stays close-on-exec until the exec
    /// hands it over).
    pub async fn hand_over(self) -> Option<Carried> {
        let lock = self.end_task(End::HandOver).await?;
        Some(Carried {
            fd: lock.fd,
            jobs: lock.jobs,
        })
    }

    /// Asks the task to end and waits for it, at most [`END_WAIT`] (a logind
    /// call that hangs loses the lock, by the abort, rather than the stop).
    async fn end_task(mut self, how: End) -> Option<Lock> {
        let _ = self.end.send(how);
        match tokio::time::timeout(END_WAIT, &mut self.task).await {
            Ok(lock) => lock.ok().flatten(),
            Err(_) => {
                self.task.abort();
                None
            }
        }
    }
}

/// A lock logind gave: held as long as `fd` is open.
struct Lock {
    fd: OwnedFd,
    jobs: u32,
}

/// The system bus as far as the task knows it.
enum Bus {
    /// Not connected yet (or the connection was lost).
    Unknown,
    /// Connected, logind there.
    Connected(Logind),
    /// No bus or no logind: said once, nothing more is tried.
    Absent,
}

/// The task's state: the bus, the lock, what it last published and warned.
struct Task {
    bus: Bus,
    lock: Option<Lock>,
    held: watch::Sender<Option<bool>>,
    /// The last error warned about, so the same one is not warned again.
    warned: WarnOnce,
}

/// Follows the snapshots until told to end or the core ends; returns the lock
/// when told to hand it over, else closes it.
async fn run(
    mut snapshots: watch::Receiver<Snapshot>,
    held: watch::Sender<Option<bool>>,
    lock: Option<Lock>,
    mut end: oneshot::Receiver<End>,
) -> Option<Lock> {
    if lock.is_some() {
        held.send_replace(Some(true));
    }
    let mut task = Task {
        bus: Bus::Unknown,
        lock,
        held,
        warned: WarnOnce::default(),
    };
    let mut last = None;
    loop {
        let want = Want::of(&snapshots.borrow_and_update());
        if last != Some(want) {
            task.apply(want).await;
            last = Some(want);
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() {
                // The core has ended, for a stop or a handoff: the daemon says
                // which (or drops the inhibitor: a release).
                let how = (&mut end).await;
                return task.end(how);
            },
            how = &mut end => return task.end(how),
        }
    }
}

impl Task {
    /// Makes the lock what `want` asks for. Called once per change of it, so
    /// each failure is met (and logged) once per change.
    async fn apply(&mut self, want: Want) {
        match want {
            Want::Off => {
                self.release();
                self.publish(None);
            }
            Want::Idle => {
                self.release();
                if self.connected().await.is_some() {
                    self.publish(Some(false));
                }
            }
            Want::Busy(jobs) => self.take(jobs).await,
            // Nothing is taken or closed: a ready UI whose queue is not known
            // yet has no lock (the start), one that had jobs keeps it.
            Want::Unknown => {
                if self.lock.is_none() && self.connected().await.is_some() {
                    self.publish(Some(false));
                }
            }
        }
    }

    /// Takes a lock for `jobs`, then closes the one it replaces (a new count
    /// gets a new `why`; the old lock holds until the new one is there).
    async fn take(&mut self, jobs: u32) {
        if self.lock.as_ref().is_some_and(|l| l.jobs == jobs) {
            // Back from an unknown queue to the count the lock says.
            return;
        }
        let why = why(jobs);
        let mut result = match self.connected().await {
            Some(bus) => bus.inhibit(&why).await,
            None => return,
        };
        if result.as_ref().is_err_and(LogindError::connection_lost) {
            // The bus restarted, say: one more try on a new connection.
            self.bus = Bus::Unknown;
            result = match self.connected().await {
                Some(bus) => bus.inhibit(&why).await,
                None => return,
            };
        }
        match result {
            Ok(fd) => {
                let first = self.lock.is_none();
                self.lock = Some(Lock { fd, jobs });
                self.warned.clear();
                if first {
                    tracing::info!(
                        jobs,
                        "holding off sleep (logind inhibitor lock) while jobs run"
                    );
                } else {
                    tracing::debug!(jobs, "sleep inhibitor lock renewed for the new count");
                }
            }
            Err(e) if e.unavailable() => return self.absent(&e),
            Err(e) => {
                if e.connection_lost() {
                    self.bus = Bus::Unknown;
                }
                let mut what = match &self.lock {
                    Some(old) => format!(
                        "cannot renew the sleep inhibitor lock; the one for {} job(s) stays",
                        old.jobs
                    ),
                    None => {
                        "cannot take a sleep inhibitor lock; the machine may suspend while jobs run"
                            .into()
                    }
                };
                if e.denied() {
                    what.push_str(
                        " (a supervisor not running as root needs polkit's \
                         org.freedesktop.login1.inhibit-block-sleep; or set gpu.inhibit_sleep = false)",
                    );
                }
                self.warn(&what, &e);
            }
        }
        self.publish(Some(self.lock.is_some()));
    }

    /// The connection to logind, made on first need; `None` when there is no
    /// logind (said once) or the bus cannot be reached just now (warned).
    async fn connected(&mut self) -> Option<&Logind> {
        if matches!(self.bus, Bus::Unknown) {
            let probed = match Logind::connect().await {
                Ok(bus) => match bus.present().await {
                    Ok(true) => Ok(bus),
                    Ok(false) => Err(LogindError::NoLogind),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match probed {
                Ok(bus) => self.bus = Bus::Connected(bus),
                Err(e) if e.unavailable() => self.absent(&e),
                Err(e) => self.warn("cannot reach logind on the system bus", &e),
            }
        }
        match &self.bus {
            Bus::Connected(bus) => Some(bus),
            Bus::Unknown | Bus::Absent => None,
        }
    }

    /// No logind here: one line, then the inhibitor takes no lock any more.
    fn absent(&mut self, e: &LogindError) {
        if !matches!(self.bus, Bus::Absent) {
            tracing::info!("not inhibiting sleep while jobs run: {e}");
        }
        self.bus = Bus::Absent;
        self.release();
        self.publish(None);
    }

    /// Warns about `e` unless it is the error warned about last.
    fn warn(&mut self, what: &str, e: &LogindError) {
        if self.warned.is_new(&e.to_string()) {
            tracing::warn!(error = %e, "{what}");
        } else {
            tracing::debug!(error = %e, "{what}");
        }
    }

    /// Ends as asked: the lock for a handover, else closed.
    fn end(mut self, how: Result<End, oneshot::error::RecvError>) -> Option<Lock> {
        if how == Ok(End::HandOver) {
            return self.lock.take();
        }
        self.release();
        None
    }

    /// Closes the lock, if one is held.
    fn release(&mut self) {
        if let Some(lock) = self.lock.take() {
            tracing::info!(
                jobs = lock.jobs,
                "sleep no longer held off (inhibitor lock closed)"
            );
        }
    }

    fn publish(&self, held: Option<bool>) {
        self.held.send_if_modified(|now| {
            let changed = *now != held;
            *now = held;
            changed
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::protocol::Queue;

    fn snapshot(state: Phase, queue: Option<Queue>, on: bool) -> Snapshot {
        let json = serde_json::json!({
            "state": state, "status_line": "", "reason": null, "flavor": "forge",
            "gpus": null, "ui_pid": null, "queue": queue, "restart_pending": null,
            "last_reload": null, "config_generation": "", "models": 0,
            "layout_conflicts": [], "uptime_seconds": 0, "ready_since_unix": null,
            "restarts": {}, "crashes": 0, "reloads": {}, "last_time_to_ready_ms": null,
            "images": {"declared": 0, "rendered": 0, "pending": 0, "rendering": null, "failed": []},
        });
        let mut s: Snapshot = serde_json::from_value(json).expect("a snapshot");
        s.inhibit_sleep = on;
        s
    }

    fn q(running: u32, pending: u32) -> Option<Queue> {
        Some(Queue { running, pending })
    }

    #[test]
    fn busy_only_while_ready_with_jobs_running_or_waiting() {
        assert_eq!(
            Want::of(&snapshot(Phase::Ready, q(1, 2), true)),
            Want::Busy(3)
        );
        assert_eq!(
            Want::of(&snapshot(Phase::Ready, q(0, 1), true)),
            Want::Busy(1)
        );
        assert_eq!(Want::of(&snapshot(Phase::Ready, q(0, 0), true)), Want::Idle);
        // A failed queue probe: not known, not idle.
        assert_eq!(Want::of(&snapshot(Phase::Ready, None, true)), Want::Unknown);
        // A UI that stops or restarts finishes no job: the machine may sleep.
        for phase in [
            Phase::Stopping,
            Phase::Starting,
            Phase::Backoff,
            Phase::Failed,
        ] {
            assert_eq!(
                Want::of(&snapshot(phase, q(1, 0), true)),
                Want::Idle,
                "{phase:?}"
            );
        }
    }

    #[test]
    fn switched_off_wants_nothing_whatever_runs() {
        assert_eq!(Want::of(&snapshot(Phase::Ready, q(1, 0), false)), Want::Off);
        assert_eq!(Want::of(&snapshot(Phase::Ready, None, false)), Want::Off);
    }

    #[test]
    fn a_huge_queue_does_not_overflow_the_count() {
        let s = snapshot(Phase::Ready, q(u32::MAX, 5), true);
        assert_eq!(Want::of(&s), Want::Busy(u32::MAX));
    }

    #[test]
    fn the_why_counts_the_jobs() {
        assert_eq!(why(1), "1 generation job(s) running");
        assert_eq!(why(12), "12 generation job(s) running");
    }
}
