//! The UI's life: preflight and launch preparation, layout, launch, readiness,
//! queue probes, unexpected exits (counted in [`super::crash`]), graceful stop
//! and restart. Every slow step runs as a task of [`super::work`].

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::crash::{CRASH_WINDOW, MAX_CRASHES, Verdict};
use super::pending::{Decision, Reading};
use super::timers::{after, unix_now};
use super::work::{AfterStop, Event};
use super::{LayoutWaiter, Supervisor, Ui};
use crate::supervisor::protocol::RestartReason;
use crate::ui::api::{Probe, ProbeError};
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::gpu::{Preflight, preflight};
use crate::ui::launch::{self, Prepared};
use crate::ui::process::{UiProcess, describe_exit};
use crate::ui::settings_sync;

/// Readiness probe period while the UI starts.
const STARTING_PROBE: Duration = Duration::from_millis(250);
/// First readiness probe after the launch.
const FIRST_PROBE: Duration = Duration::from_millis(100);

/// Resolves when the running UI's main process exits; never while none runs.
pub async fn child_exit(ui: &mut Ui) -> io::Result<ExitStatus> {
    match ui {
        Ui::Starting { proc, .. } | Ui::Ready { proc, .. } => proc.wait().await,
        _ => std::future::pending().await,
    }
}

impl Supervisor {
    /// Begins a start: preflight and launch preparation in a task, then the
    /// layout, then the launch (see [`Supervisor::on_event`]). A start already
    /// under way is superseded (its results are ignored).
    pub(super) fn start_ui(&mut self) {
        self.start_seq = self.start_seq.wrapping_add(1);
        let start = self.start_seq;
        let waiting = match std::mem::replace(&mut self.ui, Ui::Down) {
            Ui::Waiting { why, .. } => Some(why),
            Ui::Preparing { waiting, .. } => waiting,
            _ => None,
        };
        self.ui = Ui::Preparing {
            start,
            prepared: None,
            waiting,
        };
        let (gpu, config) = (self.gpu.clone(), self.config.clone());
        self.tasks.spawn(async move {
            let preflight = preflight(&gpu, config.ui.gpus.as_deref()).await;
            let launch = match preflight {
                Preflight::Ok => launch::prepare(&config),
                Preflight::Waiting(_) => Err(String::new()),
            };
            Event::Prepared {
                start,
                preflight,
                launch,
            }
        });
    }

    fn on_prepared(&mut self, start: u64, preflight: Preflight, launch: Result<Prepared, String>) {
        if !matches!(self.ui, Ui::Preparing { start: s, .. } if s == start) {
            return;
        }
        if let Preflight::Waiting(why) = preflight {
            tracing::warn!(reason = %why, recheck = ?self.gpu.recheck, "not starting the UI");
            self.ui = Ui::Waiting {
                recheck: after(Instant::now(), self.gpu.recheck),
                why,
            };
            self.ready_once();
            return;
        }
        self.ui = Ui::Preparing {
            start,
            prepared: Some(launch),
            waiting: None,
        };
        self.request_layout(Some(LayoutWaiter::Start(start)));
    }

    /// Lays out the config in force (one layout at a time; see [`super::work::LayoutLane`]).
    pub(super) fn request_layout(&mut self, waiter: Option<LayoutWaiter>) {
        if self.layouts.request(waiter) {
            self.spawn_layout();
        }
    }

    fn spawn_layout(&mut self) {
        let config = self.config.clone();
        self.tasks.spawn(async move {
            let began = Instant::now();
            let report = tokio::task::spawn_blocking(move || crate::layout::apply(&config))
                .await
                .map_err(|e| format!("layout task failed: {e}"))
                .and_then(|r| r.map_err(|e| format!("layout failed: {e}")));
            if let Ok(r) = &report {
                tracing::debug!(took = ?began.elapsed(), actions = r.actions_applied, "layout done");
            }
            Event::LaidOut(report)
        });
    }

    fn on_laid_out(&mut self, report: Result<crate::layout::LayoutReport, String>) {
        let error = match report {
            Ok(report) => {
                self.conflicts = report.conflicts.iter().map(ToString::to_string).collect();
                for c in &self.conflicts {
                    tracing::warn!(conflict = %c, "layout conflict: kept the user's file");
                }
                None
            }
            Err(e) => Some(e),
        };
        let Some(waiters) = self.layouts.finished() else {
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
    fn launch(&mut self, start: u64, layout_error: Option<String>) {
        let prepared = match &mut self.ui {
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
            (Some(why), _) => {
                tracing::error!(reason = %why, "cannot prepare the data directory");
                self.ui = Ui::Failed { why };
                self.ready_once();
                return;
            }
            (None, Some(Ok(p))) => p,
            (None, Some(Err(why))) => {
                self.ui = failed(why);
                self.ready_once();
                return;
            }
            (None, None) => return,
        };
        let config = &self.config;
        match UiProcess::spawn(&prepared.launch) {
            Ok(proc) => {
                tracing::info!(ui_pid = proc.pid(), flavor = %config.ui.flavor, port = config.ui.port, "UI launched");
                if let Some(reason) = self.start_reason.take() {
                    *self.counters.restarts.entry(reason).or_default() += 1;
                }
                let probe = Probe::new(config.ui.flavor, config.ui.port, prepared.auth);
                self.probing = super::Probing::default();
                let now = Instant::now();
                self.timers.probe_at(after(now, FIRST_PROBE));
                self.ui = Ui::Starting {
                    proc,
                    probe,
                    since: now,
                };
            }
            Err(e) => {
                let program = prepared.launch.argv.first().cloned().unwrap_or_default();
                let counter = self.start_reason.take().unwrap_or(RestartReason::Crash);
                self.record_crash(format!("cannot run {program}: {e}"), counter);
            }
        }
    }

    /// The UI's main process exited while we did not ask it to.
    pub(super) fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let (proc, was_ready) = match std::mem::replace(&mut self.ui, Ui::Down) {
            Ui::Starting { proc, .. } => (proc, false),
            Ui::Ready { proc, since, .. } => {
                // A UI that ran well for a while starts its backoff afresh.
                self.crashes.ran(since.elapsed());
                (proc, true)
            }
            other => {
                self.ui = other;
                return;
            }
        };
        let exit = match &status {
            Ok(s) => describe_exit(s),
            Err(e) => format!("wait failed: {e}"),
        };
        tracing::warn!(ui_pid = proc.pid(), exit = %exit, was_ready, "UI exited unexpectedly");
        self.ui = Ui::Stopping {
            pid: proc.pid(),
            why: format!("UI exited ({exit}); cleaning up its processes"),
        };
        self.tasks.spawn(async move {
            proc.reap_group().await;
            Event::Gone {
                status,
                then: AfterStop::Crash {
                    why: format!("UI exited ({exit})"),
                    counter: RestartReason::Crash,
                },
            }
        });
    }

    /// Stops the running UI in a task; `then` decides what follows.
    pub(super) fn begin_stop(&mut self, why: String, then: AfterStop) {
        let proc = match std::mem::replace(&mut self.ui, Ui::Down) {
            Ui::Starting { proc, .. } | Ui::Ready { proc, .. } => proc,
            other => {
                self.ui = other;
                return;
            }
        };
        tracing::info!(ui_pid = proc.pid(), reason = %why, "stopping the UI");
        self.ui = Ui::Stopping {
            pid: proc.pid(),
            why,
        };
        self.probing.queue = None;
        let grace = self.config.ui.stop_timeout;
        self.tasks.spawn(async move {
            let status = proc.stop(grace).await;
            Event::Gone { status, then }
        });
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prepared {
                start,
                preflight,
                launch,
            } => self.on_prepared(start, preflight, launch),
            Event::LaidOut(report) => self.on_laid_out(report),
            Event::ConfigRead { text, reply } => self.reload_bytes(text, reply),
            Event::Ready(ok) => {
                self.probing.in_flight = false;
                if let (true, Ui::Starting { .. }) = (ok, &self.ui) {
                    self.became_ready();
                }
            }
            Event::Queue(result, sent) => {
                self.probing.in_flight = false;
                self.probing.sent = Some(sent);
                if !matches!(self.ui, Ui::Ready { .. }) {
                    return;
                }
                match result {
                    Ok(q) => self.probing.queue = Some(q),
                    Err(e) => {
                        tracing::debug!(error = %e, "queue probe failed");
                        self.probing.queue = None;
                    }
                }
                self.check_pending(Instant::now());
            }
            Event::QueueChanged(remaining) => {
                if self.pending.is_some() && matches!(self.ui, Ui::Ready { .. }) {
                    tracing::debug!(remaining, "queue broadcast: probing now");
                    self.timers.probe_at(Some(Instant::now()));
                }
            }
            Event::Download(ev) => self.on_download(ev),
            Event::SettingsSynced(done) => self.on_settings_synced(done),
            Event::Done => {}
            Event::Gone { status, then } => {
                if let Ok(s) = &status {
                    tracing::info!(exit = %describe_exit(s), "UI stopped; its process group is gone");
                }
                self.ui = Ui::Down;
                match then {
                    AfterStop::Start => self.start_ui(),
                    AfterStop::Crash { why, counter } => self.record_crash(why, counter),
                    AfterStop::Exit => {}
                }
            }
        }
    }

    fn became_ready(&mut self) {
        let Ui::Starting { proc, probe, since } = std::mem::replace(&mut self.ui, Ui::Down) else {
            return;
        };
        let took = since.elapsed();
        tracing::info!(ui_pid = proc.pid(), took = ?took, "UI is ready");
        self.last_time_to_ready_ms = Some(u64::try_from(took.as_millis()).unwrap_or(u64::MAX));
        self.ready_since_unix = Some(unix_now());
        let signal = (self.config.ui.flavor == Flavor::Comfyui).then(|| {
            let events = self.signals.clone();
            QueueSignal::start(self.config.ui.port, move |n| {
                let _ = events.send(Event::QueueChanged(n));
            })
        });
        self.ui = Ui::Ready {
            proc,
            probe,
            since: Instant::now(),
            _signal: signal,
        };
        self.timers.probe_at(Some(Instant::now()));
        self.ready_once();
        self.enforce_settings();
    }

    /// Managed settings are enforced on every start: the UI may have read its
    /// settings file before a reload rewrote it (while it was starting), so the
    /// managed keys that differ from what it reports are sent now.
    fn enforce_settings(&mut self) {
        let wanted = self.config.settings.clone();
        self.sync_settings(wanted);
    }

    /// Brings `wanted` settings in line with the running UI, in a task.
    pub(super) fn sync_settings(&mut self, wanted: serde_json::Map<String, serde_json::Value>) {
        let Ui::Ready { probe, .. } = &self.ui else {
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

    fn on_settings_synced(&mut self, done: settings_sync::Synced) {
        if !done.sent.is_empty() {
            tracing::info!(keys = ?done.sent, "managed settings sent to the UI");
        }
        for key in &done.unknown {
            tracing::warn!(key = %key, "setting not known to the UI; not sent (it stays in the settings file)");
        }
        if let Some(e) = &done.error {
            tracing::warn!(error = %e, "settings not applied live; they apply at the next start");
        }
        if let Some(r) = self.last_reload.as_mut()
            && r.result == crate::supervisor::protocol::ReloadResult::Applied
        {
            for key in done.unknown {
                if !r.unknown_settings.contains(&key) {
                    r.unknown_settings.push(key);
                }
            }
        }
    }

    /// Counts a crash: back off, or `failed` after [`MAX_CRASHES`] within
    /// [`CRASH_WINDOW`]. The next start counts under `counter`.
    pub(super) fn record_crash(&mut self, why: String, counter: RestartReason) {
        let now = Instant::now();
        self.counters.crashes += 1;
        match self.crashes.record(now) {
            Verdict::GiveUp { recent } => {
                let why = format!(
                    "UI crashed {recent} times in {}s ({})",
                    CRASH_WINDOW.as_secs(),
                    why.trim_start_matches("UI exited ")
                        .trim_matches(['(', ')'])
                );
                tracing::error!(reason = %why, "giving up until `sd-webui-supervisor restart` or a reload");
                self.ui = Ui::Failed { why };
                self.ready_once();
            }
            Verdict::Backoff { delay, recent } => {
                tracing::warn!(reason = %why, delay = ?delay, "restarting the UI after a delay");
                self.start_reason = Some(counter);
                self.ui = Ui::Backoff {
                    until: after(now, delay),
                    why: format!(
                        "{why}, restarting in {}s (crash {recent} of {MAX_CRASHES} in {}s)",
                        delay.as_secs(),
                        CRASH_WINDOW.as_secs()
                    ),
                };
            }
        }
    }

    /// Timers: readiness and queue probes, startup timeout, backoff, GPU re-checks,
    /// pending-restart deadline and idle grace.
    pub(super) fn on_timers(&mut self, now: Instant) {
        let probe_due = !self.probing.in_flight && self.timers.probe_due(now);
        match &self.ui {
            Ui::Starting { since, probe, .. } => {
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
                    );
                } else if probe_due {
                    let probe = probe.clone();
                    self.spawn_probe(probe, true);
                    self.timers.probe_at(after(now, STARTING_PROBE));
                }
            }
            Ui::Ready { probe, .. } if probe_due => {
                let probe = probe.clone();
                self.spawn_probe(probe, false);
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

    fn spawn_probe(&mut self, probe: Probe, readiness: bool) {
        self.probing.in_flight = true;
        let sent = Instant::now();
        self.tasks.spawn(async move {
            if readiness {
                Event::Ready(probe.ready().await)
            } else {
                Event::Queue(
                    probe.queue().await.map_err(|e: ProbeError| e.to_string()),
                    sent,
                )
            }
        });
    }

    /// Asks [`super::pending::Pending::decide`] whether the pending restart is due.
    pub(super) fn check_pending(&mut self, now: Instant) {
        if !matches!(self.ui, Ui::Ready { .. }) {
            return;
        }
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        let reading = Reading {
            queue: self.probing.queue,
            sent: self.probing.sent,
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
                self.restart_now(reason);
            }
        }
    }

    /// Graceful shutdown: `STOPPING=1`, stop the UI (waiting for a stop already in
    /// progress), cancel the rest, done.
    pub(super) async fn shutdown(&mut self) {
        self.notifier.stopping();
        tracing::info!("shutting down");
        if matches!(self.ui, Ui::Starting { .. } | Ui::Ready { .. }) {
            self.begin_stop("supervisor is shutting down".into(), AfterStop::Exit);
        }
        if matches!(self.ui, Ui::Stopping { .. }) {
            self.publish();
            loop {
                if let Event::Gone { status, .. } = self.tasks.next().await {
                    if let Ok(s) = status {
                        tracing::info!(exit = %describe_exit(&s), "UI stopped");
                    }
                    break;
                }
            }
        }
        self.tasks.abort_all();
        self.ui = Ui::Down;
        self.publish();
    }
}
