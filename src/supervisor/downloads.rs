//! The core's side of models fetched at run time: it owns the download
//! [`Manager`], re-aims it on every applied reload, and when files arrive
//! relays out (linking them like store models) and asks the UI to rescan. The
//! UI never waits for downloads: the layout links only what is present.
//!
//! Nothing here awaits: the manager's tasks report through a bridge to the
//! core's event channel and the core applies each report to the manager it
//! owns ([`Manager::on_report`]);
//! finished downloads that arrive close together (all the cached ones at start)
//! share one layout ([`super::timers::RELINK_AFTER`]), and the refresh calls
//! run as tracked work ([`Supervisor::spawn_refresh`]) once that layout is done.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::work::Event;
use super::{Supervisor, Ui};
use crate::download::{self, Manager, ModelProgress};

/// How often the snapshot is refreshed while downloads run (progress, rate).
pub(super) const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The core's part of downloads.
#[derive(Default)]
pub(super) struct Downloads {
    /// Created when the config first declares a download.
    pub(super) manager: Option<Manager>,
    /// Model kinds whose downloads finished since the last relayout for them:
    /// refreshed together once it is done.
    pub(super) finished: std::collections::BTreeSet<crate::ui::flavor::ModelKind>,
}

impl Supervisor {
    /// Starts (or re-aims) the downloads for the config in force. The manager
    /// is created on first use; its events reach the core as [`Event::Download`].
    pub(super) fn apply_downloads(&mut self) {
        // With instances the leader alone downloads (into the shared cache).
        if !self.leads() {
            return;
        }
        if self.downloads.manager.is_none() {
            if self.config.downloads.models.is_empty() {
                return;
            }
            let (tx, mut rx) = mpsc::unbounded_channel();
            self.downloads.manager = Some(Manager::new(tx));
            // A bridge, not work: it ends when the manager (the only sender) is
            // dropped with the core, like ComfyUI's queue signal.
            let events = self.signals.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if events.send(Event::Download(ev)).is_err() {
                        break;
                    }
                }
            });
        }
        if let Some(manager) = &mut self.downloads.manager {
            manager.apply(&self.config);
        }
    }

    /// A download task reported: the manager applies it. A finished file is
    /// linked by the next relink, shortly (failures are in the snapshot, and
    /// logged by the manager).
    pub(super) fn on_download(&mut self, report: download::Report) {
        let Some(manager) = &mut self.downloads.manager else {
            return;
        };
        let Some(download::Outcome::Done { models }) = manager.on_report(report) else {
            return;
        };
        if matches!(self.slot.ui, Ui::Preparing { prepared: None, .. }) {
            // The start's own layout is still to come and links it with the rest.
            return;
        }
        self.downloads
            .finished
            .extend(models.iter().map(|(kind, _)| *kind));
        self.timers.relink_soon(Instant::now());
    }

    /// The relink's layout is done: Forge/A1111 are asked to rescan the kinds
    /// that arrived (ComfyUI rescans by itself), as tracked work.
    pub(super) fn downloads_linked(&mut self, layout_error: Option<&str>) {
        let kinds = std::mem::take(&mut self.downloads.finished);
        if let Some(e) = layout_error {
            tracing::error!(error = %e, "relayout after a download failed");
            return;
        }
        let probe = match &self.slot.ui {
            Ui::Ready { probe, .. } => probe,
            // Launched but not ready: it has listed its models already.
            Ui::Starting { .. } => {
                self.slot.refresh.refresh_once_ready(kinds);
                return;
            }
            _ => return, // the next start lays out and loads everything
        };
        let probe = probe.clone();
        self.refresh_kinds(probe, kinds);
    }

    /// `retry-downloads`: failed downloads start again; returns how many.
    pub(super) fn retry_downloads(&mut self) -> usize {
        self.downloads.manager.as_mut().map_or(0, Manager::retry)
    }

    /// Every declared download with its progress.
    pub(super) fn download_progress(&self) -> Vec<ModelProgress> {
        self.downloads
            .manager
            .as_ref()
            .map_or_else(Vec::new, Manager::snapshot)
    }

    /// When the snapshot should next be refreshed for progress, if anything runs.
    pub(super) fn next_progress(&self, now: Instant) -> Option<Instant> {
        let active = self.downloads.manager.as_ref().is_some_and(Manager::busy);
        active.then(|| super::timers::after(now, PROGRESS_EVERY))?
    }
}
