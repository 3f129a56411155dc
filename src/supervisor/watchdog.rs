//! The core's side of `[health]` (docs/design.md, "Health"): it feeds the
//! stall watchdog ([`super::stall`]) with queue readings and ComfyUI's
//! progress news and carries out what it decides (interrupt, then restart),
//! and it turns the CUDA faults the output relay spotted into a restart once
//! the queue is idle: at once for a broken context, for an out-of-memory error
//! only when no progress followed it before the queue emptied.

use std::time::Instant;

use super::pending::Pending;
use super::stall::{StallAction, StallWatch};
use super::work::Event;
use super::{Supervisor, Ui};
use crate::supervisor::protocol::{HealthStatus, RestartCause, RestartPolicy, RestartReason};
use crate::ui::api::QueueReading;
use crate::ui::cuda_faults::CudaFault;

/// What the health watch knows of the running UI.
#[derive(Debug, Default)]
pub(super) struct Watchdog {
    stall: StallWatch,
    /// An out-of-memory error no progress has followed yet: when, and its line.
    oom: Option<(Instant, String)>,
    /// The fault that made this UI unhealthy (a restart is scheduled).
    gpu_error: Option<String>,
    /// CUDA faults seen since the supervisor started.
    gpu_faults: u64,
}

impl Watchdog {
    /// The findings, for the snapshot; `wall` is the wall clock at `now`.
    pub(super) fn status(
        &self,
        now: Instant,
        wall: std::time::SystemTime,
        config: &crate::config::HealthConfig,
    ) -> HealthStatus {
        let stall = self.stall.stalled(now, config.stall_timeout);
        // From the exact times, not whole seconds: the value stays the same
        // from one snapshot to the next.
        let since = |quiet: std::time::Duration| {
            wall.checked_sub(quiet)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
        };
        HealthStatus {
            stalled_since_unix: stall.map(|(quiet, _)| since(quiet)),
            stall_interrupted: stall.is_some_and(|(_, interrupted)| interrupted),
            stalled_jobs: self.stall.interrupted_total,
            gpu_error: self.gpu_error.clone(),
            gpu_faults: self.gpu_faults,
        }
    }
}

/// The stall for the status line: `job stalled: no progress since 12:01,
/// interrupted`; `None` while no job stalls.
pub(super) fn stall_words(health: &HealthStatus) -> Option<String> {
    let since = super::snapshot::local_hhmm(health.stalled_since_unix?);
    let interrupted = if health.stall_interrupted {
        ", interrupted"
    } else {
        ""
    };
    Some(format!(
        "job stalled: no progress since {since}{interrupted}"
    ))
}

impl Supervisor {
    /// A queue reading of the ready UI, probed at `sent`: progress, faults,
    /// then what to do.
    pub(super) fn watch_reading(&mut self, reading: &QueueReading, sent: Instant) {
        let now = Instant::now();
        self.slot.watchdog.stall.reading(now, reading);
        self.take_cuda_faults(now);
        self.check_oom(reading, sent);
        self.check_stall(now);
    }

    /// ComfyUI said on `/ws` that a prompt moves.
    pub(super) fn watch_progress(&mut self, prompt: Option<String>) {
        if matches!(self.slot.ui, Ui::Ready { .. }) {
            self.slot.watchdog.stall.progressed(Instant::now(), prompt);
        }
    }

    /// The UI is stopping or gone: what was seen of it ends with it.
    pub(super) fn watch_ui_gone(&mut self) {
        self.slot.watchdog.stall.forget();
        self.slot.watchdog.oom = None;
        self.slot.watchdog.gpu_error = None;
    }

    fn check_stall(&mut self, now: Instant) {
        let health = &self.config.health;
        match self
            .slot
            .watchdog
            .stall
            .decide(now, health.stall_timeout, health.stall_grace)
        {
            StallAction::None => {}
            StallAction::Interrupt { job, quiet } => {
                let Ui::Ready { probe, .. } = &self.slot.ui else {
                    return;
                };
                tracing::warn!(job = ?job, quiet = ?quiet, "a job made no progress for health.stall_timeout; interrupting it");
                let probe = probe.clone();
                self.tasks.spawn(async move {
                    Event::Interrupted(probe.interrupt(job.as_deref()).await)
                });
            }
            StallAction::Restart { quiet } => {
                tracing::error!(quiet = ?quiet, "the stalled job did not move after its interrupt; restarting the UI");
                let p = self
                    .pending
                    .get_or_insert_with(|| Pending::new(now, RestartPolicy::Immediately, None));
                p.merge(vec![RestartCause::Stalled], RestartPolicy::Immediately);
                self.keep_ui_crashed();
                self.restart_now(RestartReason::Stall, false);
            }
        }
    }

    fn take_cuda_faults(&mut self, now: Instant) {
        let Ui::Ready { proc, .. } = &self.slot.ui else {
            return;
        };
        for fault in proc.output().take_faults() {
            self.slot.watchdog.gpu_faults = self.slot.watchdog.gpu_faults.saturating_add(1);
            tracing::warn!(line = fault.text(), "CUDA fault in the UI's output");
            if !self.config.health.gpu_errors {
                continue;
            }
            match fault {
                CudaFault::Broken(text) => self.mark_unhealthy(text),
                CudaFault::OutOfMemory(text) => {
                    if self.slot.watchdog.oom.is_none() {
                        self.slot.watchdog.oom = Some((now, text));
                    }
                }
            }
        }
    }

    /// An out-of-memory error counts once the queue is idle with no progress
    /// of any job since; progress after it clears it. Only a reading probed
    /// after the error was seen says so (one sent before may predate the job).
    fn check_oom(&mut self, reading: &QueueReading, sent: Instant) {
        let Some((at, _)) = &self.slot.watchdog.oom else {
            return;
        };
        if self
            .slot
            .watchdog
            .stall
            .last_progress()
            .is_some_and(|p| p > *at)
        {
            self.slot.watchdog.oom = None;
        } else if reading.queue.is_idle()
            && sent > *at
            && let Some((_, text)) = self.slot.watchdog.oom.take()
        {
            self.mark_unhealthy(text);
        }
    }

    /// Schedules the restart of an unhealthy UI for when it is idle (like
    /// `restart --when-idle`: under `restart.policy = "manual"` too).
    fn mark_unhealthy(&mut self, text: String) {
        if self.slot.watchdog.gpu_error.is_some() {
            return;
        }
        tracing::error!(line = %text, "the UI's CUDA context is unusable; restarting it once idle");
        self.slot.watchdog.gpu_error = Some(text);
        self.schedule(vec![RestartCause::GpuError], RestartPolicy::WhenIdle);
    }
}
