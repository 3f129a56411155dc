//! A restart owed to the UI, and the pure rule that says when it is due
//! ([`Pending::decide`]): at once under `immediately`, when the queue has been
//! seen empty for `idle_grace` by readings taken after the restart became pending,
//! at the deadline regardless — never under `manual`.
//!
//! While it waits on a busy UI it asks for a probe every [`BUSY_POLL`], so an
//! emptied queue is seen within that time whatever `restart.poll_interval` says;
//! with nothing pending the core probes at `poll_interval` only.

use std::time::{Duration, Instant};

use super::protocol::{PendingRestart, Queue, RestartCause, RestartPolicy, RestartReason};
use super::timers::{after, unix_after, unix_now};

/// Probe period while a restart waits for a busy UI (goal: the queue is seen
/// empty within 250 ms of emptying).
pub const BUSY_POLL: Duration = Duration::from_millis(200);

/// A queue reading: the queue (None: the probe failed) and when its probe was sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Reading {
    /// What the probe found.
    pub queue: Option<Queue>,
    /// When the probe was sent; `None`: no probe answered yet.
    pub sent: Option<Instant>,
}

/// What to do about a pending restart now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Not yet. Keep `idle_since`; probe again by `probe_at` (if set).
    Wait {
        idle_since: Option<Instant>,
        probe_at: Option<Instant>,
    },
    /// Restart now, counted under `reason`.
    Restart {
        reason: RestartReason,
        deadline_passed: bool,
    },
}

/// A restart owed to the UI.
#[derive(Debug, Clone)]
pub struct Pending {
    /// Why, one entry per cause.
    pub reasons: Vec<RestartCause>,
    /// Effective policy (an explicit `restart --when-idle` waits even under `manual`).
    pub policy: RestartPolicy,
    since_unix: u64,
    /// `None`: never (none configured, or beyond what the clock can hold).
    deadline: Option<Instant>,
    deadline_unix: Option<u64>,
    /// When the queue was first seen empty (reset when it fills again).
    idle_since: Option<Instant>,
    /// When this restart became pending: only queue readings taken later count.
    created: Instant,
}

impl Pending {
    /// A restart pending from `now`, due at the latest `deadline_after` from now.
    pub fn new(now: Instant, policy: RestartPolicy, deadline_after: Option<Duration>) -> Pending {
        Pending {
            reasons: Vec::new(),
            policy,
            since_unix: unix_now(),
            deadline: deadline_after.and_then(|d| after(now, d)),
            deadline_unix: deadline_after.map(unix_after),
            idle_since: None,
            created: now,
        }
    }

    /// Merges another request into this one (several reloads make one restart).
    pub fn merge(&mut self, reasons: Vec<RestartCause>, policy: RestartPolicy) {
        if policy != RestartPolicy::Manual {
            self.policy = policy;
        }
        for r in reasons {
            if !self.reasons.contains(&r) {
                self.reasons.push(r);
            }
        }
    }

    /// The counter a restart for these reasons goes to: a health reason
    /// first (it is why the restart could not wait), then `requested` when
    /// that is all, else `config`.
    pub fn counter(&self) -> RestartReason {
        if self.reasons.contains(&RestartCause::Stalled) {
            RestartReason::Stall
        } else if self.reasons.contains(&RestartCause::GpuError) {
            RestartReason::GpuError
        } else if self.reasons.iter().all(|r| *r == RestartCause::Requested) {
            RestartReason::Requested
        } else {
            RestartReason::Config
        }
    }

    /// When it became pending: only queue readings taken since count.
    pub fn created(&self) -> Instant {
        self.created
    }

    /// The deadline, if one can come.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// When the grace that began at the last empty reading ends.
    pub fn grace_end(&self, grace: Duration) -> Option<Instant> {
        self.idle_since.and_then(|s| after(s, grace))
    }

    /// Stores what [`Pending::decide`] said to keep.
    pub fn keep(&mut self, idle_since: Option<Instant>) {
        self.idle_since = idle_since;
    }

    /// Carried across a self-upgrade: the same reasons, policy and deadline
    /// (`deadline_in_ms` is what is left of it, for the monotonic timer).
    pub fn handed_over(&self, now: Instant) -> crate::handoff::state::PendingState {
        crate::handoff::state::PendingState {
            reasons: self.reasons.clone(),
            policy: self.policy,
            since_unix: self.since_unix,
            deadline_unix: self.deadline_unix,
            deadline_in_ms: self.deadline.map(|d| {
                u64::try_from(d.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
            }),
        }
    }

    /// Takes over a restart pending in the binary this one replaced. Only queue
    /// readings taken from `now` on count.
    pub fn taken_over(p: &crate::handoff::state::PendingState, now: Instant) -> Pending {
        Pending {
            reasons: p.reasons.clone(),
            policy: p.policy,
            since_unix: p.since_unix,
            deadline: p
                .deadline_in_ms
                .and_then(|ms| after(now, Duration::from_millis(ms))),
            deadline_unix: p.deadline_unix,
            idle_since: None,
            created: now,
        }
    }

    /// The protocol's view.
    pub fn published(&self) -> PendingRestart {
        PendingRestart {
            reasons: self.reasons.clone(),
            policy: self.policy,
            since_unix: self.since_unix,
            deadline_unix: self.deadline_unix,
        }
    }

    /// Decides, for a UI that is ready, whether the restart is due at `now`.
    pub fn decide(&self, now: Instant, reading: Reading, grace: Duration) -> Decision {
        let wait = |idle_since, probe_at| Decision::Wait {
            idle_since,
            probe_at,
        };
        match self.policy {
            RestartPolicy::Manual => return wait(None, None),
            RestartPolicy::Immediately => {
                return Decision::Restart {
                    reason: self.counter(),
                    deadline_passed: false,
                };
            }
            RestartPolicy::WhenIdle => {}
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Decision::Restart {
                reason: self.counter(),
                deadline_passed: true,
            };
        }
        // A reading taken before the restart was scheduled says nothing about
        // jobs submitted since.
        let Some(sent) = reading.sent.filter(|s| *s >= self.created) else {
            return wait(None, Some(now));
        };
        match reading.queue {
            Some(q) if q.is_idle() => {
                let since = self.idle_since.unwrap_or(now);
                // Act only on a reading taken after the grace ended: a job may
                // have arrived since the probe that started it.
                match after(since, grace) {
                    Some(end) if now >= end && sent >= end => Decision::Restart {
                        reason: self.counter(),
                        deadline_passed: false,
                    },
                    // Probe again right when the grace ends.
                    end => wait(Some(since), Some(end.unwrap_or(now).max(now))),
                }
            }
            _ => wait(None, Some(after(sent, BUSY_POLL).unwrap_or(now).max(now))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    fn busy() -> Option<Queue> {
        Some(Queue {
            running: 1,
            pending: 0,
        })
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0.checked_add(Duration::from_millis(ms)).unwrap_or(t0)
    }

    fn pending(t0: Instant, deadline: Option<Duration>) -> Pending {
        let mut p = Pending::new(t0, RestartPolicy::WhenIdle, deadline);
        p.merge(vec!["ui.extra_args".into()], RestartPolicy::WhenIdle);
        p
    }

    /// Feeds readings through decide as the core does; returns the restart time.
    fn run(p: &mut Pending, readings: &[(u64, Option<Queue>)]) -> Option<(u64, Decision)> {
        let t0 = p.created;
        for &(ms, queue) in readings {
            let now = at(t0, ms);
            let d = p.decide(
                now,
                Reading {
                    queue,
                    sent: Some(now),
                },
                GRACE,
            );
            match d {
                Decision::Wait { idle_since, .. } => p.keep(idle_since),
                restart => return Some((ms, restart)),
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_grace_from_the_first_empty_reading() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut p = pending(t0, None);
        let got = run(
            &mut p,
            &[
                (0, busy()),
                (200, Some(Queue::default())),
                (5_000, Some(Queue::default())),
                (10_200, Some(Queue::default())),
            ],
        );
        assert_eq!(
            got,
            Some((
                10_200,
                Decision::Restart {
                    reason: RestartReason::Config,
                    deadline_passed: false
                }
            ))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_in_the_grace_starts_it_again() {
        let t0 = tokio::time::Instant::now().into_std();
        let mut p = pending(t0, None);
        let got = run(
            &mut p,
            &[
                (0, Some(Queue::default())),
                (9_000, busy()),
                (10_100, Some(Queue::default())),
                (19_000, Some(Queue::default())),
            ],
        );
        assert_eq!(got, None, "the grace restarted at 10.1 s");
    }

    #[test]
    fn a_stale_reading_counts_for_nothing() {
        let t0 = Instant::now();
        let p = pending(at(t0, 1_000), None);
        let d = p.decide(
            at(t0, 20_000),
            Reading {
                queue: Some(Queue::default()),
                sent: Some(t0),
            },
            GRACE,
        );
        assert_eq!(
            d,
            Decision::Wait {
                idle_since: None,
                probe_at: Some(at(t0, 20_000))
            }
        );
    }

    #[test]
    fn busy_means_probe_again_soon_and_the_deadline_wins() {
        let t0 = Instant::now();
        let p = pending(t0, Some(Duration::from_secs(60)));
        let reading = Reading {
            queue: busy(),
            sent: Some(at(t0, 1_000)),
        };
        assert_eq!(
            p.decide(at(t0, 1_050), reading, GRACE),
            Decision::Wait {
                idle_since: None,
                probe_at: Some(at(t0, 1_200))
            }
        );
        assert!(matches!(
            p.decide(at(t0, 60_000), reading, GRACE),
            Decision::Restart {
                deadline_passed: true,
                ..
            }
        ));
    }

    #[test]
    fn a_deadline_beyond_the_clock_is_never() {
        let t0 = Instant::now();
        let p = pending(t0, Some(Duration::MAX));
        assert_eq!(p.deadline(), None);
        assert!(p.published().deadline_unix.is_some());
        let far = Pending::new(t0, RestartPolicy::WhenIdle, Some(Duration::MAX));
        assert_eq!(far.grace_end(Duration::MAX), None);
    }

    #[test]
    fn merged_reloads_make_one_restart_and_manual_does_not_override() {
        let t0 = Instant::now();
        let mut p = Pending::new(t0, RestartPolicy::WhenIdle, None);
        p.merge(vec![RestartCause::Requested], RestartPolicy::WhenIdle);
        assert_eq!(p.counter(), RestartReason::Requested);
        p.merge(
            vec!["extensions".into(), RestartCause::Requested],
            RestartPolicy::Manual,
        );
        assert_eq!(p.reasons, [RestartCause::Requested, "extensions".into()]);
        assert_eq!(p.policy, RestartPolicy::WhenIdle);
        assert_eq!(p.counter(), RestartReason::Config);
        let manual = Pending::new(t0, RestartPolicy::Manual, None);
        assert_eq!(
            manual.decide(t0, Reading::default(), GRACE),
            Decision::Wait {
                idle_since: None,
                probe_at: None
            }
        );
    }
}
