//! The [`Snapshot`]: built here and nowhere else, after every step of the loop
//! and once when the core is made (the channel's first value), from the parts
//! of the core's state. The front door's counters and the sleep inhibitor's
//! state live outside the core and are added by [`super::CoreHandle::snapshot`].

use std::time::Instant;

use super::status_line::{StatusInput, render};
use super::{Supervisor, Ui, watchdog};
use crate::supervisor::pending::Pending;
use crate::supervisor::protocol::{Phase, Snapshot};

/// Local `HH:MM` of a unix time, for status lines.
pub(super) fn local_hhmm(unix: u64) -> String {
    let t = unix as libc::time_t;
    // SAFETY: localtime_r writes into the zeroed struct we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        format!("{:02}:{:02}", tm.tm_hour, tm.tm_min)
    } else {
        format!("@{unix}")
    }
}

impl Supervisor {
    /// The snapshot of the state as it is now.
    pub(super) fn snapshot(&self) -> Snapshot {
        let (phase, reason, pid) = match &self.slot.ui {
            Ui::Starting { proc, since, .. } => (
                Phase::Starting,
                Some(format!(
                    "waiting for {} to answer (pid {}, {}s)",
                    self.config.ui.flavor,
                    proc.pid(),
                    since.elapsed().as_secs() / 5 * 5
                )),
                Some(proc.pid()),
            ),
            Ui::Ready { proc, .. } => (Phase::Ready, None, Some(proc.pid())),
            Ui::Preparing {
                waiting: Some(why), ..
            } => (Phase::Waiting, Some(why.clone()), None),
            Ui::Preparing { .. } => (
                Phase::Starting,
                Some(format!(
                    "preparing {}: checking GPUs, laying out the data directory",
                    self.config.ui.flavor
                )),
                None,
            ),
            Ui::Stopping { pid, why } => (Phase::Stopping, Some(why.clone()), Some(*pid)),
            Ui::Backoff { why, .. } => (Phase::Backoff, Some(why.clone()), None),
            Ui::Waiting { why, .. } => (Phase::Waiting, Some(why.clone()), None),
            Ui::Failed { why } => (Phase::Failed, Some(why.clone()), None),
            Ui::Down => (
                Phase::Stopping,
                Some("supervisor is shutting down".into()),
                None,
            ),
        };
        let pending = self.pending.as_ref().map(Pending::published);
        let models = self.config.models.values().map(|m| m.len()).sum();
        let queue = if phase == Phase::Ready {
            self.slot.probing.queue
        } else {
            None
        };
        let downloads = self.download_progress();
        let download_part = crate::download::summary::status_part(&downloads);
        let now = Instant::now();
        let health =
            self.slot
                .watchdog
                .status(now, std::time::SystemTime::now(), &self.config.health);
        let stalled = watchdog::stall_words(&health);
        let vram = self.slot.idle_unload.status();
        let status_line = render(&StatusInput {
            phase: Some(phase),
            reason: reason.as_deref(),
            flavor: self.config.ui.flavor.name(),
            gpus: self.config.ui.gpus.as_deref(),
            models,
            queue,
            queue_probed: self.slot.probing.sent.is_some(),
            pending: pending.as_ref(),
            deadline_local: pending
                .as_ref()
                .and_then(|p| p.deadline_unix)
                .map(local_hhmm),
            reload_rejected: self.reloads.rejected.as_deref(),
            reload_errors: self
                .reloads
                .last
                .as_ref()
                .filter(|r| r.result == crate::supervisor::protocol::ReloadResult::Applied)
                .map_or(0, |r| r.errors.len()),
            conflicts: self.layout.conflicts.len(),
            downloads: download_part.as_deref(),
            missing_targets: self.layout.missing_targets.len(),
            stalled: stalled.as_deref(),
            unloaded: vram.unloaded,
        });
        let mut snap = Snapshot {
            state: phase,
            status_line,
            reason,
            flavor: self.config.ui.flavor.name().into(),
            gpus: self.config.ui.gpus.clone(),
            ui_pid: pid,
            queue,
            restart_pending: pending,
            last_reload: self.reloads.last.clone(),
            config_generation: self.source.hash.clone(),
            models,
            layout_conflicts: self.layout.conflicts.clone(),
            uptime_seconds: self.life.started.elapsed().as_secs(),
            ready_since_unix: if phase == Phase::Ready {
                self.slot.ready_since_unix
            } else {
                None
            },
            restarts: self.counters.restarts.clone(),
            crashes: self.counters.crashes,
            reloads: self.counters.reloads.clone(),
            last_time_to_ready_ms: self.slot.last_time_to_ready_ms,
            downloads,
            missing_targets: self.layout.missing_targets.clone(),
            refresh_failed: self.slot.refresh.failed(),
            refresh_failures: self.slot.refresh.failures,
            draining: self.life.draining,
            images: self.images.book.status(),
            health,
            vram,
            queue_oldest_wait_seconds: queue.map(|_| self.slot.queue_age.oldest(now).as_secs_f64()),
            front: None,
            inhibit_sleep: self.config.gpu.inhibit_sleep,
            sleep_inhibited: None,
            pod_deletion_cost: None,
            queue_keep: self.keep.status(),
            instances: Vec::new(),
        };
        self.add_instances(&mut snap);
        snap
    }
}
