//! The crash record: how many times the UI crashed lately, and what follows —
//! a backoff of 1 s doubling to 60 s, or `failed` after [`MAX_CRASHES`] crashes
//! within [`CRASH_WINDOW`]. Pure: the caller passes the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Crashes within this window count towards `failed`.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// This many crashes within [`CRASH_WINDOW`] → `failed`.
pub const MAX_CRASHES: usize = 5;
/// The longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What a crash leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start again after `delay`; `recent` crashes within the window so far.
    Backoff { delay: Duration, recent: usize },
    /// Too many crashes: give up until a restart or reload.
    GiveUp { recent: usize },
}

/// Recent crashes and the current backoff streak.
#[derive(Debug, Default)]
pub struct CrashRecord {
    times: VecDeque<Instant>,
    consecutive: u32,
}

impl CrashRecord {
    /// Records a crash at `now` and says what follows.
    pub fn record(&mut self, now: Instant) -> Verdict {
        self.times.push_back(now);
        while self
            .times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASH_WINDOW)
        {
            self.times.pop_front();
        }
        self.consecutive = self.consecutive.saturating_add(1);
        let recent = self.times.len();
        if recent >= MAX_CRASHES {
            return Verdict::GiveUp { recent };
        }
        let shift = self.consecutive.saturating_sub(1).min(6);
        let delay = Duration::from_secs(1u64 << shift).min(MAX_BACKOFF);
        Verdict::Backoff { delay, recent }
    }

    /// A UI that ran well for longer than the window starts its backoff afresh.
    pub fn ran(&mut self, for_: Duration) {
        if for_ > CRASH_WINDOW {
            self.consecutive = 0;
        }
    }

    /// Forgets everything (an explicit restart or a reload that starts the UI).
    pub fn clear(&mut self) {
        *self = CrashRecord::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_then_gives_up_within_the_window() {
        let mut r = CrashRecord::default();
        let mut delays = Vec::new();
        for _ in 0..4 {
            match r.record(tokio::time::Instant::now().into_std()) {
                Verdict::Backoff { delay, .. } => delays.push(delay.as_secs()),
                Verdict::GiveUp { .. } => panic!("gave up too early"),
            }
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        assert_eq!(delays, [1, 2, 4, 8]);
        assert_eq!(
            r.record(tokio::time::Instant::now().into_std()),
            Verdict::GiveUp { recent: 5 }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_crashes_leave_the_window_and_a_long_run_resets_the_streak() {
        let mut r = CrashRecord::default();
        for _ in 0..4 {
            r.record(tokio::time::Instant::now().into_std());
        }
        tokio::time::advance(CRASH_WINDOW + Duration::from_secs(1)).await;
        r.ran(CRASH_WINDOW + Duration::from_secs(1));
        assert_eq!(
            r.record(tokio::time::Instant::now().into_std()),
            Verdict::Backoff {
                delay: Duration::from_secs(1),
                recent: 1
            }
        );
    }

    #[test]
    fn the_backoff_is_capped() {
        let mut r = CrashRecord::default();
        let t0 = Instant::now();
        let mut last = Duration::ZERO;
        for i in 0..20u64 {
            // One crash every two minutes: never `failed`, the streak keeps growing.
            let at = t0.checked_add(Duration::from_secs(120 * i)).unwrap_or(t0);
            if let Verdict::Backoff { delay, .. } = r.record(at) {
                last = delay;
            }
        }
        assert_eq!(last, MAX_BACKOFF);
    }
}
