//! The stall watchdog (`[health]`, docs/design.md "Health"): a job that runs
//! but no longer advances is interrupted after `health.stall_timeout`, and the
//! UI restarted when it is still stuck `health.stall_grace` later (a UI stuck
//! in a CUDA call never sees its interrupt).
//!
//! Pure: the core feeds it the queue readings and ComfyUI's progress news and
//! asks it what to do; it keeps no clock of its own. A job is only judged once
//! its progress is visible: Forge/A1111 report it in every reading, ComfyUI
//! only on `/ws`, and only for prompts whose messages reach the supervisor —
//! a prompt sent with another client's id shows none, and silence is not a
//! stall there.

use std::time::{Duration, Instant};

use crate::ui::api::QueueReading;

/// What the core should do about the running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StallAction {
    /// Nothing (no job, it moves, or its time is not up).
    None,
    /// Interrupt it: no progress for the stall timeout.
    Interrupt {
        /// The job (ComfyUI: its prompt id, which the interrupt names).
        job: Option<String>,
        /// How long it went without progress.
        quiet: Duration,
    },
    /// Restart the UI: still no progress the grace after the interrupt.
    Restart {
        /// How long it went without progress.
        quiet: Duration,
    },
}

/// The running job as the watchdog last saw it.
#[derive(Debug, Clone)]
struct Watched {
    job: Option<String>,
    mark: Option<String>,
    /// Its last progress (or when it was first seen).
    moved: Instant,
    /// Whether its progress is visible at all.
    visible: bool,
    /// When it was interrupted for a stall.
    interrupted: Option<Instant>,
}

/// The watchdog's state; see the module doc.
#[derive(Debug, Clone, Default)]
pub struct StallWatch {
    watched: Option<Watched>,
    /// ComfyUI progress news for a prompt not (yet) seen running: the news
    /// may come before the reading that shows the prompt.
    early: Option<(Option<String>, Instant)>,
    /// Jobs interrupted for a stall since the supervisor started.
    pub interrupted_total: u64,
    /// The last progress seen of any job.
    progress_at: Option<Instant>,
}

impl StallWatch {
    /// A queue reading at `now`.
    pub fn reading(&mut self, now: Instant, r: &QueueReading) {
        if r.queue.running == 0 {
            self.watched = None;
            return;
        }
        match &mut self.watched {
            Some(w) if w.job == r.job => {
                if r.mark.is_some() && w.mark != r.mark {
                    w.mark = r.mark.clone();
                    w.moved = now;
                    self.progress_at = Some(now);
                    w.visible = true;
                    w.interrupted = None;
                }
            }
            _ => {
                let early = self
                    .early
                    .take()
                    .filter(|(id, _)| id.is_none() || *id == r.job);
                self.watched = Some(Watched {
                    job: r.job.clone(),
                    mark: r.mark.clone(),
                    moved: early.as_ref().map_or(now, |(_, t)| *t),
                    visible: r.mark.is_some() || early.is_some(),
                    interrupted: None,
                });
            }
        }
    }

    /// ComfyUI said on `/ws` that `prompt` (when named) is moving.
    pub fn progressed(&mut self, now: Instant, prompt: Option<String>) {
        match &mut self.watched {
            Some(w) if prompt.is_none() || prompt == w.job => {
                self.progress_at = Some(now);
                w.moved = now;
                w.visible = true;
                w.interrupted = None;
            }
            _ => self.early = Some((prompt, now)),
        }
    }

    /// When any job last made progress (a new sampling step, a ComfyUI
    /// progress message).
    pub fn last_progress(&self) -> Option<Instant> {
        self.progress_at
    }

    /// The UI went away (a stop, a crash): nothing runs any more.
    pub fn forget(&mut self) {
        self.watched = None;
        self.early = None;
    }

    /// What to do at `now`, with `timeout` (`None`: the watchdog is off) and
    /// `grace`. An interrupt is asked for once per stall.
    pub fn decide(
        &mut self,
        now: Instant,
        timeout: Option<Duration>,
        grace: Duration,
    ) -> StallAction {
        let (Some(timeout), Some(w)) = (timeout, self.watched.as_mut()) else {
            return StallAction::None;
        };
        if !w.visible {
            return StallAction::None;
        }
        let quiet = now.saturating_duration_since(w.moved);
        match w.interrupted {
            None if quiet >= timeout => {
                w.interrupted = Some(now);
                self.interrupted_total = self.interrupted_total.saturating_add(1);
                StallAction::Interrupt {
                    job: w.job.clone(),
                    quiet,
                }
            }
            Some(at) if now.saturating_duration_since(at) >= grace => {
                StallAction::Restart { quiet }
            }
            _ => StallAction::None,
        }
    }

    /// The stall in progress, for the status: how long the running job has
    /// gone without progress once that passed the timeout, and whether it was
    /// interrupted.
    pub fn stalled(&self, now: Instant, timeout: Option<Duration>) -> Option<(Duration, bool)> {
        let w = self.watched.as_ref().filter(|w| w.visible)?;
        let quiet = now.saturating_duration_since(w.moved);
        (quiet >= timeout?).then_some((quiet, w.interrupted.is_some()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::api::Queue;

    const T: Option<Duration> = Some(Duration::from_secs(60));
    const GRACE: Duration = Duration::from_secs(10);

    fn running(job: &str, mark: Option<&str>) -> QueueReading {
        QueueReading {
            queue: Queue {
                running: 1,
                pending: 0,
            },
            job: Some(job.into()),
            mark: mark.map(str::to_owned),
            waiting: Vec::new(),
        }
    }

    fn secs(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_forge_job_without_progress_is_interrupted_then_restarted() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        w.reading(t0, &running("a", Some("0/1 3/20")));
        w.reading(secs(t0, 30), &running("a", Some("0/1 4/20")));
        assert_eq!(
            w.decide(secs(t0, 80), T, GRACE),
            StallAction::None,
            "moved at 30"
        );
        w.reading(secs(t0, 90), &running("a", Some("0/1 4/20")));
        let act = w.decide(secs(t0, 90), T, GRACE);
        assert!(
            matches!(act, StallAction::Interrupt { quiet, .. } if quiet == Duration::from_secs(60))
        );
        assert_eq!(w.decide(secs(t0, 95), T, GRACE), StallAction::None, "once");
        assert_eq!(
            w.stalled(secs(t0, 95), T),
            Some((Duration::from_secs(65), true))
        );
        assert!(matches!(
            w.decide(secs(t0, 100), T, GRACE),
            StallAction::Restart { .. }
        ));
        assert_eq!(w.interrupted_total, 1);
    }

    #[test]
    fn progress_or_a_new_job_or_idle_clears_the_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        w.reading(t0, &running("a", Some("1")));
        assert!(matches!(
            w.decide(secs(t0, 60), T, GRACE),
            StallAction::Interrupt { .. }
        ));
        // The interrupt worked: the next job runs.
        w.reading(secs(t0, 61), &running("b", Some("1")));
        assert_eq!(w.decide(secs(t0, 75), T, GRACE), StallAction::None);
        assert_eq!(w.stalled(secs(t0, 75), T), None);
        w.reading(secs(t0, 76), &QueueReading::default());
        assert_eq!(w.decide(secs(t0, 500), T, GRACE), StallAction::None);
        w.reading(secs(t0, 501), &running("c", Some("1")));
        assert_eq!(
            w.decide(secs(t0, 502), None, GRACE),
            StallAction::None,
            "off"
        );
    }

    #[test]
    fn a_comfyui_prompt_is_judged_only_once_its_progress_is_seen() {
        let t0 = Instant::now();
        let mut w = StallWatch::default();
        // Another client's prompt: no news ever reaches us.
        w.reading(t0, &running("p1", None));
        assert_eq!(w.decide(secs(t0, 3600), T, GRACE), StallAction::None);
        // A prompt whose news we see; the news came before the reading.
        w.progressed(secs(t0, 3601), Some("p2".into()));
        w.reading(secs(t0, 3602), &running("p2", None));
        w.progressed(secs(t0, 3610), Some("p2".into()));
        assert_eq!(w.decide(secs(t0, 3660), T, GRACE), StallAction::None);
        assert!(matches!(
            w.decide(secs(t0, 3670), T, GRACE),
            StallAction::Interrupt { job: Some(j), .. } if j == "p2"
        ));
        // News of another prompt does not count for this one.
        w.progressed(secs(t0, 3675), Some("p3".into()));
        assert!(matches!(
            w.decide(secs(t0, 3680), T, GRACE),
            StallAction::Restart { .. }
        ));
        w.forget();
        assert_eq!(w.decide(secs(t0, 4000), T, GRACE), StallAction::None);
    }
}
