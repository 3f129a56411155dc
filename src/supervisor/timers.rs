//! The core's clock: every deadline it keeps, in one structure, and arithmetic on
//! instants that saturates — a valid config may ask for `500000000000y`, and
//! "later than the clock can hold" means never, not a panic.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Longest the loop sleeps without a reason (it re-checks its timers then).
const IDLE_WAKE: Duration = Duration::from_secs(3600);
/// Period of `EXTEND_TIMEOUT_USEC` messages before the first `READY=1`.
pub const EXTEND_EVERY: Duration = Duration::from_secs(5);
/// How long finished downloads are collected before one relayout links them all
/// (at start, every model already in the cache reports done within moments).
pub const RELINK_AFTER: Duration = Duration::from_millis(200);

/// `now + d`, or `None` when that is beyond what an `Instant` can hold.
pub fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Unix seconds `d` from now, saturating.
pub fn unix_after(d: Duration) -> u64 {
    unix_now().saturating_add(d.as_secs())
}

/// The periodic duties of the loop: the systemd watchdog, start-timeout
/// extensions until the first `READY=1`, the next UI probe, and the relayout
/// that links finished downloads.
#[derive(Debug)]
pub struct Timers {
    watchdog_every: Option<Duration>,
    next_watchdog: Option<Instant>,
    /// `None` once `READY=1` was sent.
    next_extend: Option<Instant>,
    /// `None`: no probe scheduled.
    next_probe: Option<Instant>,
    /// `None`: no finished download waits to be linked.
    next_relink: Option<Instant>,
}

/// Which periodic duties are due.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    /// Send `WATCHDOG=1`.
    pub watchdog: bool,
    /// Send `EXTEND_TIMEOUT_USEC`.
    pub extend: bool,
}

impl Timers {
    /// Timers from `now`, with the watchdog period systemd asked for.
    pub fn new(now: Instant, watchdog_every: Option<Duration>) -> Timers {
        Timers {
            watchdog_every,
            next_watchdog: watchdog_every.and_then(|d| after(now, d)),
            next_extend: Some(now),
            next_probe: None,
            next_relink: None,
        }
    }

    /// `READY=1` went out: no more extensions.
    pub fn ready_sent(&mut self) {
        self.next_extend = None;
    }

    /// Probe at `at` (replacing any earlier schedule); `None` stops probing.
    pub fn probe_at(&mut self, at: Option<Instant>) {
        self.next_probe = at;
    }

    /// Probe no later than `at`.
    pub fn probe_by(&mut self, at: Instant) {
        self.next_probe = Some(self.next_probe.map_or(at, |p| p.min(at)));
    }

    /// Whether a probe is due at `now`.
    pub fn probe_due(&self, now: Instant) -> bool {
        self.next_probe.is_some_and(|p| now >= p)
    }

    /// A download finished: relink [`RELINK_AFTER`] from now, unless a relink
    /// is already due (it takes this one along).
    pub fn relink_soon(&mut self, now: Instant) {
        if self.next_relink.is_none() {
            self.next_relink = Some(after(now, RELINK_AFTER).unwrap_or(now));
        }
    }

    /// Whether the relink is due at `now`; clears it when it is.
    pub fn take_relink(&mut self, now: Instant) -> bool {
        let due = self.next_relink.is_some_and(|r| now >= r);
        if due {
            self.next_relink = None;
        }
        due
    }

    /// Takes the watchdog and extension duties due at `now`, rescheduling them.
    pub fn take_due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        if self.next_watchdog.is_some_and(|w| now >= w) {
            due.watchdog = true;
            self.next_watchdog = self.watchdog_every.and_then(|d| after(now, d));
        }
        if self.next_extend.is_some_and(|e| now >= e) {
            due.extend = true;
            self.next_extend = after(now, EXTEND_EVERY);
        }
        due
    }

    /// The earliest of these timers and `others`, at most [`IDLE_WAKE`] away,
    /// never before `now`. `probing` says whether the next probe counts (not
    /// while one is in flight).
    pub fn next_wake(
        &self,
        now: Instant,
        probing: bool,
        others: impl IntoIterator<Item = Option<Instant>>,
    ) -> Instant {
        let probe = self.next_probe.filter(|_| probing);
        [
            self.next_watchdog,
            self.next_extend,
            probe,
            self.next_relink,
        ]
        .into_iter()
        .chain(others)
        .flatten()
        .fold(after(now, IDLE_WAKE).unwrap_or(now), Instant::min)
        .max(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn far_durations_mean_never() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), None);
        assert!(unix_after(Duration::MAX) == u64::MAX);
        let t = Timers::new(now, Some(Duration::MAX));
        let wake = t.next_wake(now, true, [after(now, Duration::MAX)]);
        assert!(wake >= now);
    }

    #[tokio::test(start_paused = true)]
    async fn watchdog_and_extensions_come_due_and_reschedule() {
        let now = tokio::time::Instant::now().into_std();
        let mut t = Timers::new(now, Some(Duration::from_secs(30)));
        assert_eq!(
            t.take_due(now),
            Due {
                watchdog: false,
                extend: true
            }
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        let later = tokio::time::Instant::now().into_std();
        assert_eq!(
            t.take_due(later),
            Due {
                watchdog: true,
                extend: true
            }
        );
        t.ready_sent();
        assert_eq!(t.take_due(later), Due::default());
        assert_eq!(
            t.next_wake(later, false, [None]),
            after(later, Duration::from_secs(30)).unwrap_or(later)
        );
    }

    #[test]
    fn finished_downloads_close_together_share_one_relink() {
        let now = Instant::now();
        let mut t = Timers::new(now, None);
        t.ready_sent();
        assert!(!t.take_relink(now));
        t.relink_soon(now);
        let due = after(now, RELINK_AFTER).unwrap_or(now);
        t.relink_soon(due);
        assert_eq!(
            t.next_wake(now, false, []),
            due,
            "the first finish sets the time"
        );
        assert!(!t.take_relink(now));
        assert!(t.take_relink(due));
        assert!(!t.take_relink(due), "taken once");
        assert!(t.next_wake(due, false, []) > due);
    }

    #[test]
    fn a_probe_in_flight_does_not_wake_the_loop() {
        let now = Instant::now();
        let mut t = Timers::new(now, None);
        t.ready_sent();
        t.probe_at(Some(now));
        assert_eq!(t.next_wake(now, true, []), now);
        assert!(t.next_wake(now, false, []) > now);
        t.probe_by(after(now, Duration::from_secs(5)).unwrap_or(now));
        assert!(t.probe_due(now));
    }
}
