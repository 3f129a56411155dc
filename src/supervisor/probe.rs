//! Probes of the running UI on the core's timers: readiness while it starts,
//! the queue once ready, and the pending restart's decision on each reading
//! ([`super::pending::Pending::decide`]).

use super::pending::{Decision, Reading};
use super::timers::after;
use super::work::{AfterStop, Event};
use super::{Supervisor, Ui};
use crate::supervisor::protocol::RestartReason;
use crate::ui::api::Probe;
use crate::ui::port;
use std::time::{Duration, Instant};

/// Readiness probe period while the UI starts.
const STARTING_PROBE: Duration = Duration::from_millis(250);

impl Supervisor {
    /// Timers: readiness and queue probes, startup timeout, backoff, GPU re-checks,
    /// pending-restart deadline and idle grace.
    pub(super) fn on_timers(&mut self, now: Instant) {
        let probe_due = !self.slot.probing.in_flight && self.timers.probe_due(now);
        match &self.slot.ui {
            Ui::Starting { since, probe, proc } => {
                let timeout = self.config.ui.startup_timeout;
                if now.saturating_duration_since(*since) >= timeout {
                    let why = format!(
                        "UI did not answer within {}",
                        humantime::format_duration(timeout)
                    );
                    self.begin_stop(
                        why.clone(),
                        AfterStop::Crash {
                            why,
                            counter: RestartReason::StartupTimeout,
                        },
                        Duration::ZERO,
                    );
                } else if probe_due {
                    let probe = probe.clone();
                    let group = i32::try_from(proc.pid()).ok();
                    self.spawn_probe(probe, group);
                    self.timers.probe_at(after(now, STARTING_PROBE));
                }
            }
            Ui::Ready { probe, .. } if probe_due => {
                let probe = probe.clone();
                self.spawn_probe(probe, None);
                self.timers
                    .probe_at(after(now, self.config.restart.poll_interval));
            }
            Ui::Backoff { until: Some(t), .. }
            | Ui::Waiting {
                recheck: Some(t), ..
            } if now >= *t => {
                self.start_ui();
            }
            _ => {}
        }
        self.check_pending(now);
    }

    /// A readiness probe when `readiness_of` names the UI's process group (the
    /// answer counts only when that group listens on the port: a foreign listener
    /// answering never makes the UI ready), else a queue probe.
    pub(super) fn spawn_probe(&mut self, probe: Probe, readiness_of: Option<i32>) {
        self.slot.probing.in_flight = true;
        let sent = Instant::now();
        let ui_port = self.config.ui_own_port();
        self.tasks.spawn(async move {
            if let Some(group) = readiness_of {
                let answers = probe.ready().await;
                let ours = answers
                    && tokio::task::spawn_blocking(move || port::listened_by_group(ui_port, group))
                        .await
                        .unwrap_or(false);
                if answers && !ours {
                    tracing::debug!(
                        port = ui_port,
                        "the port answers, but not from the UI's processes"
                    );
                }
                Event::Ready(ours)
            } else {
                Event::Queue(probe.queue().await, sent)
            }
        });
    }

    /// Whether the UI was last seen idle: its queue probed empty and no
    /// declared image rendering (a render is a job like any other).
    pub(super) fn seen_idle(&self) -> bool {
        self.slot.probing.queue.is_some_and(|q| q.is_idle()) && !self.images.busy()
    }

    /// Asks [`super::pending::Pending::decide`] whether the pending restart is due.
    pub(super) fn check_pending(&mut self, now: Instant) {
        if !matches!(self.slot.ui, Ui::Ready { .. }) {
            return;
        }
        let Some(service) = self
            .pending
            .as_ref()
            .map(|p| Supervisor::restart_is_service(&p.reasons))
        else {
            return;
        };
        // With instances: wait for this one's turn of the rolling restart
        // (the others are asked again at the next probe).
        if !self.may_restart(service) {
            if let Some(at) = after(now, crate::supervisor::pending::BUSY_POLL) {
                self.timers.probe_by(at);
            }
            return;
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        // A declared image being rendered is a job like any other.
        let queue = if self.images.busy() {
            Some(crate::supervisor::protocol::Queue {
                running: 1,
                pending: 0,
            })
        } else {
            self.slot.probing.queue
        };
        let reading = Reading {
            queue,
            sent: self.slot.probing.sent,
        };
        match p.decide(now, reading, self.config.restart.idle_grace) {
            Decision::Wait {
                idle_since,
                probe_at,
            } => {
                p.keep(idle_since);
                if let Some(at) = probe_at {
                    self.timers.probe_by(at);
                }
            }
            Decision::Restart {
                reason,
                deadline_passed,
            } => {
                if deadline_passed {
                    tracing::warn!(reasons = ?p.reasons, "restart deadline passed; restarting although the UI may be busy");
                }
                self.restart_now(reason, !deadline_passed);
            }
        }
    }
}
