//! A start of the UI: GPU preflight and launch preparation in a task, the data
//! directory's layout, the launch, readiness (and what follows it: the
//! ComfyUI queue signal, managed settings, the UI's refresh routes). Every slow
//! step runs as a task of [`super::work`]; a newer start supersedes an older.

use super::timers::{after, unix_now};
use super::transient::{io_transient, is_transient};
use super::work::Event;
use super::{LayoutWaiter, Supervisor, Ui};
use crate::supervisor::protocol::RestartReason;
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::gpu::{Preflight, preflight};
use crate::ui::launch::{self, Prepared};
use crate::ui::port;
use crate::ui::process::UiProcess;
use crate::ui::settings_sync;
use std::time::{Duration, Instant};

/// How often a port held by another process is checked again.
const PORT_RECHECK: Duration = Duration::from_secs(2);
/// First readiness probe after the launch.
const FIRST_PROBE: Duration = Duration::from_millis(100);

/// The cores of several instances lay out the same data dir: their layouts
/// run one after the other (each its own, with the same links).
static LAYOUT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Supervisor {
    /// Begins a start: preflight and launch preparation in a task, then the
    /// layout, then the launch (see [`Supervisor::on_event`]). A start already
    /// under way is superseded (its results are ignored).
    pub(super) fn start_ui(&mut self) {
        self.slot.start_seq = self.slot.start_seq.wrapping_add(1);
        let start = self.slot.start_seq;
        let waiting = match std::mem::replace(&mut self.slot.ui, Ui::Down) {
            Ui::Waiting { why, .. } => Some(why),
            Ui::Preparing { waiting, .. } => waiting,
            _ => None,
        };
        self.slot.ui = Ui::Preparing {
            start,
            prepared: None,
            waiting,
        };
        let (gpu, config) = (self.gpu.clone(), self.config.clone());
        self.tasks.spawn(async move {
            let preflight = preflight(&gpu, config.ui.gpus.as_deref()).await;
            let launch = match preflight {
                Preflight::Ok => Some(launch::prepare(&config)),
                Preflight::Waiting(_) => None,
            };
            // Something else listening on the UI's port: our UI could not bind it,
            // and the probes would talk to that program.
            let ui_port = config.ui_own_port();
            let port_held = tokio::task::spawn_blocking(move || {
                port::held_by(ui_port).map(|h| port::held_message(ui_port, &h))
            })
            .await
            .unwrap_or(None);
            Event::Prepared {
                start,
                preflight,
                launch,
                port_held,
            }
        });
    }

    pub(super) fn on_prepared(
        &mut self,
        start: u64,
        preflight: Preflight,
        launch: Option<Result<Prepared, launch::PrepareError>>,
        port_held: Option<String>,
    ) {
        if !matches!(self.slot.ui, Ui::Preparing { start: s, .. } if s == start) {
            return;
        }
        if let (Preflight::Ok, Some(why)) = (&preflight, port_held) {
            tracing::warn!(reason = %why, recheck = ?PORT_RECHECK, "not starting the UI");
            self.slot.ui = Ui::Waiting {
                recheck: after(Instant::now(), PORT_RECHECK),
                why,
            };
            self.ready_once();
            return;
        }
        if let Preflight::Waiting(why) = preflight {
            tracing::warn!(reason = %why, recheck = ?self.gpu.recheck, "not starting the UI");
            self.slot.ui = Ui::Waiting {
                recheck: after(Instant::now(), self.gpu.recheck),
                why,
            };
            self.ready_once();
            return;
        }
        self.slot.ui = Ui::Preparing {
            start,
            prepared: launch,
            waiting: None,
        };
        self.request_layout(Some(LayoutWaiter::Start(start)));
    }

    /// Lays out the config in force (one layout at a time; see [`super::work::LayoutLane`]).
    pub(super) fn request_layout(&mut self, waiter: Option<LayoutWaiter>) {
        if self.layout.lane.request(waiter) {
            self.spawn_layout();
        }
    }

    pub(super) fn spawn_layout(&mut self) {
        let config = self.config.clone();
        self.tasks.spawn(async move {
            let began = Instant::now();
            let mut transient = false;
            let report = tokio::task::spawn_blocking(move || {
                // Instances share the data dir: one layout at a time.
                let _one = LAYOUT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
                let report = crate::layout::apply(&config);
                // Links to cached downloads no longer declared are gone now:
                // the files go too.
                if report.is_ok() {
                    crate::download::cache::sweep_after_layout(&config);
                }
                report
            })
                .await
                .map_err(|e| format!("layout task failed: {e}"))
                .and_then(|r| {
                    r.map_err(|e| {
                        // A transient failure of any one link is retried.
                        transient = match &e {
                            crate::layout::LayoutError::Links(l) => {
                                l.0.iter().any(|f| is_transient(&f.error))
                            }
                            e => is_transient(e),
                        };
                        format!("layout failed: {e}")
                    })
                });
            if let Ok(r) = &report {
                tracing::debug!(took = ?began.elapsed(), actions = r.actions_applied, "layout done");
            }
            Event::LaidOut { report, transient }
        });
    }

    pub(super) fn on_laid_out(
        &mut self,
        report: Result<crate::layout::LayoutReport, String>,
        transient: bool,
    ) {
        let error = match report {
            Ok(report) => {
                self.layout.conflicts = report.conflicts.iter().map(ToString::to_string).collect();
                for c in &self.layout.conflicts {
                    tracing::warn!(conflict = %c, "layout conflict: kept the user's file");
                }
                self.note_missing_targets(&report);
                None
            }
            Err(e) => Some(e),
        };
        self.layout.transient = transient;
        let Some(waiters) = self.layout.lane.finished() else {
            // The config changed while it ran: lay out the newer one first.
            self.spawn_layout();
            return;
        };
        for w in waiters {
            match w {
                LayoutWaiter::Start(start) => self.launch(start, error.clone()),
                LayoutWaiter::Reload(applying) => self.finish_reload(applying, error.clone()),
                LayoutWaiter::Downloads => self.downloads_linked(error.as_deref()),
            }
        }
    }

    /// Launches start number `start` once its data dir is laid out.
    pub(super) fn launch(&mut self, start: u64, layout_error: Option<String>) {
        let prepared = match &mut self.slot.ui {
            Ui::Preparing {
                start: s, prepared, ..
            } if *s == start => prepared.take(),
            _ => return,
        };
        let failed = |why: String| {
            tracing::error!(reason = %why, "cannot start the UI");
            Ui::Failed { why }
        };
        let prepared = match (layout_error, prepared) {
            (Some(why), _) if self.layout.transient => {
                self.retry_later(format!("cannot prepare the data directory: {why}"));
                return;
            }
            (Some(why), _) => {
                tracing::error!(reason = %why, "cannot prepare the data directory");
                self.slot.ui = Ui::Failed { why };
                self.ready_once();
                return;
            }
            (None, Some(Ok(p))) => p,
            (None, Some(Err(why))) => {
                self.slot.ui = failed(why.to_string());
                self.ready_once();
                return;
            }
            (None, None) => return,
        };
        let config = &self.config;
        match UiProcess::spawn(&prepared.launch, &prepared.redactor) {
            Ok(proc) => {
                self.slot.transient.succeeded();
                tracing::info!(ui_pid = proc.pid(), flavor = %config.ui.flavor, port = config.ui_own_port(), "UI launched");
                if let Some(reason) = self.slot.start_reason.take() {
                    *self.counters.restarts.entry(reason).or_default() += 1;
                }
                let probe = Probe::new(
                    config.ui.flavor,
                    config.ui_own_port(),
                    prepared.auth.clone(),
                );
                self.images_ui_launched(prepared.auth);
                self.slot.refresh.ui_launched();
                self.slot.probing = super::Probing::default();
                let now = Instant::now();
                self.timers.probe_at(after(now, FIRST_PROBE));
                self.slot.ui = Ui::Starting {
                    proc,
                    probe,
                    since: now,
                };
            }
            Err(e) if io_transient(&e) => {
                let program = prepared.launch.argv.first().cloned().unwrap_or_default();
                self.retry_later(format!("cannot run {program}: {e}"));
            }
            Err(e) => {
                let program = prepared.launch.argv.first().cloned().unwrap_or_default();
                let counter = self
                    .slot
                    .start_reason
                    .take()
                    .unwrap_or(RestartReason::Crash);
                self.record_crash(format!("cannot run {program}: {e}"), counter);
            }
        }
    }

    /// A transient failure before launch: `waiting`, and try again after a backoff
    /// (not a crash: nothing ran, and nothing here needs the admin).
    pub(super) fn retry_later(&mut self, why: String) {
        let delay = self.slot.transient.failed();
        tracing::warn!(reason = %why, retry_in = ?delay, "cannot start the UI now; retrying");
        self.slot.ui = Ui::Waiting {
            recheck: after(Instant::now(), delay),
            why: format!("{why}; retrying in {}s", delay.as_secs()),
        };
        self.ready_once();
    }

    /// Keeps the declared model targets that do not exist for the status, and logs
    /// each one once when it goes missing (not on every relayout).
    pub(super) fn note_missing_targets(&mut self, report: &crate::layout::LayoutReport) {
        let now: Vec<String> = report.dangling.iter().map(ToString::to_string).collect();
        for d in now
            .iter()
            .filter(|d| !self.layout.missing_targets.contains(d))
        {
            tracing::warn!(missing = %d, "model target missing: not linked");
        }
        for d in self
            .layout
            .missing_targets
            .iter()
            .filter(|d| !now.contains(d))
        {
            tracing::info!(was = %d, "model target present again");
        }
        self.layout.missing_targets = now;
    }

    pub(super) fn became_ready(&mut self) {
        let Ui::Starting { proc, probe, since } = std::mem::replace(&mut self.slot.ui, Ui::Down)
        else {
            return;
        };
        let took = since.elapsed();
        tracing::info!(ui_pid = proc.pid(), took = ?took, "UI is ready");
        self.slot.last_time_to_ready_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        self.slot.ready_since_unix = Some(unix_now());
        let signal = (self.config.ui.flavor == Flavor::Comfyui).then(|| {
            let events = self.signals.clone();
            QueueSignal::start(self.config.ui_own_port(), move |news| {
                let _ = events.send(Event::from(news));
            })
        });
        self.slot.ui = Ui::Ready {
            proc,
            probe,
            since: Instant::now(),
            _signal: signal,
        };
        self.timers.probe_at(Some(Instant::now()));
        self.ready_once();
        self.keep_ui_ready();
        self.enforce_settings();
        if let Ui::Ready { probe, .. } = &self.slot.ui {
            let probe = probe.clone();
            self.learn_routes(probe);
        }
    }

    /// Managed settings are enforced on every start: the UI may have read its
    /// settings file before a reload rewrote it (while it was starting), so the
    /// managed keys that differ from what it reports are sent now.
    pub(super) fn enforce_settings(&mut self) {
        let wanted = self.config.settings.clone();
        self.sync_settings(wanted);
    }

    /// Brings `wanted` settings in line with the running UI, in a task.
    pub(super) fn sync_settings(&mut self, wanted: serde_json::Map<String, serde_json::Value>) {
        let Ui::Ready { probe, .. } = &self.slot.ui else {
            return;
        };
        if !self.config.ui.flavor.has_options_api() || wanted.is_empty() {
            return;
        }
        let probe = probe.clone();
        self.tasks.spawn(async move {
            Event::SettingsSynced(settings_sync::sync(&probe, &wanted).await)
        });
    }

    pub(super) fn on_settings_synced(&mut self, done: settings_sync::Synced) {
        if !done.sent.is_empty() {
            tracing::info!(keys = ?done.sent, "managed settings sent to the UI");
        }
        for key in &done.unknown {
            tracing::warn!(key = %key, "setting not known to the UI; not sent (it stays in the settings file)");
        }
        if let Some(e) = &done.error {
            tracing::warn!(error = %e, "settings not applied live; they apply at the next start");
        }
        if let Some(r) = self.reloads.last.as_mut()
            && r.result == crate::supervisor::protocol::ReloadResult::Applied
        {
            for key in done.unknown {
                if !r.unknown_settings.contains(&key) {
                    r.unknown_settings.push(key);
                }
            }
        }
    }
}
