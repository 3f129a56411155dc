//! Idle VRAM (`gpu.unload_after`, docs/design.md "Idle GPU memory"): once the
//! queue has been empty that long, the models leave the GPU (ComfyUI
//! `POST /free`, Forge `POST /sdapi/v1/unload-checkpoint`), so a shared or
//! desktop GPU gets its memory back; the next job loads them again (both UIs
//! do it by themselves). A job, or a new UI, counts as loaded again.

use std::time::{Duration, Instant};

use super::work::Event;
use super::{Supervisor, Ui};
use crate::supervisor::protocol::VramStatus;
use crate::ui::api::ProbeError;

/// Where the models are, as far as the supervisor knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Models {
    /// Loaded (or unknown: a UI loads its model at start or on first use).
    #[default]
    Loaded,
    /// The unload call is out.
    Unloading,
    /// Unloaded; the next job loads them again.
    Unloaded,
}

/// The core's state for idle unloads.
#[derive(Debug, Default)]
pub(super) struct IdleUnload {
    /// When the queue was first read idle (the probe's send time), since the
    /// last busy reading.
    idle_since: Option<Instant>,
    models: Models,
    /// Unloads done since the supervisor started.
    unloads: u64,
}

impl IdleUnload {
    /// The findings, for the snapshot.
    pub(super) fn status(&self) -> VramStatus {
        VramStatus {
            unloaded: self.models == Models::Unloaded,
            unloads: self.unloads,
        }
    }

    /// Whether an unload is due at `now` after `after` of idleness.
    fn due(&self, now: Instant, after: Option<Duration>) -> bool {
        match (after, self.idle_since) {
            (Some(after), Some(since)) => {
                self.models == Models::Loaded && now.saturating_duration_since(since) >= after
            }
            _ => false,
        }
    }
}

impl Supervisor {
    /// A queue reading (in `probing`) probed at `sent`: idle time, and the
    /// unload when due.
    pub(super) fn unload_reading(&mut self, sent: Instant) {
        let idle = self.seen_idle();
        let u = &mut self.slot.idle_unload;
        if !idle {
            u.idle_since = None;
            if u.models == Models::Unloaded {
                // The job loads the models again.
                u.models = Models::Loaded;
            }
            return;
        }
        u.idle_since.get_or_insert(sent);
        // A restart owed for idle comes first: the new UI starts empty anyway.
        if self.pending.is_some() || !u.due(Instant::now(), self.config.gpu.unload_after) {
            return;
        }
        let Ui::Ready { probe, .. } = &self.slot.ui else {
            return;
        };
        tracing::info!(after = ?self.config.gpu.unload_after, "queue idle for gpu.unload_after; unloading the models from the GPU");
        u.models = Models::Unloading;
        let probe = probe.clone();
        self.tasks
            .spawn(async move { Event::Unloaded(probe.unload_models().await) });
    }

    /// The unload call answered.
    pub(super) fn on_unloaded(&mut self, result: Result<(), ProbeError>) {
        let u = &mut self.slot.idle_unload;
        if u.models != Models::Unloading {
            return; // a job or a new UI came in between
        }
        match result {
            Ok(()) => {
                u.models = Models::Unloaded;
                u.unloads = u.unloads.saturating_add(1);
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not unload the models; trying again after another gpu.unload_after");
                u.models = Models::Loaded;
                u.idle_since = Some(Instant::now());
            }
        }
    }

    /// A new UI (or none): its models are its own.
    pub(super) fn unload_ui_gone(&mut self) {
        self.slot.idle_unload = IdleUnload {
            unloads: self.slot.idle_unload.unloads,
            ..IdleUnload::default()
        };
    }
}
