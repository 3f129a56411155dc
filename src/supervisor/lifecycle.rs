//! The UI's life: preflight and launch preparation, layout, launch, readiness,
//! queue probes, unexpected exits (counted in [`super::crash`]), graceful stop
//! and restart. Every slow step runs as a task of [`super::work`].

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::crash::{CRASH_WINDOW, MAX_CRASHES, Verdict};
use super::pending::{Decision, Reading};
use super::timers::{after, unix_now};
use super::transient::{io_transient, is_transient};
use super::work::{AfterStop, Event};
use super::{LayoutWaiter, Supervisor, Ui};
use crate::supervisor::protocol::RestartReason;
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::gpu::{Preflight, preflight};
use crate::ui::launch::{self, Prepared};
use crate::ui::port;
use crate::ui::process::{StopPlan, UiProcess, describe_exit};
use crate::ui::settings_sync;

/// How often a port held by another process is checked again.
const PORT_RECHECK: Duration = Duration::from_secs(2);
/// Grace after SIGINT for a UI that is not ready yet (it cannot be running a job).
const NOT_READY_GRACE: Duration = Duration::from_secs(3);
/// How often SIGINT is sent again during a stop's grace.
const SIGINT_RESEND: Duration = Duration::from_secs(2);
/// How long a crash reason waits for the UI's last output to be relayed.
const LAST_WORDS_WAIT: Duration = Duration::from_secs(1);

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

    fn on_prepared(
        &mut self,
        start: u64,
        preflight: Preflight,
        launch: Option<Result<Prepared, launch::PrepareError>>,
        port_held: Option<String>,
    ) {
        if !matches!(self.ui, Ui::Preparing { start: s, .. } if s == start) {
            return;
        }
        if let (Preflight::Ok, Some(why)) = (&preflight, port_held) {
            tracing::warn!(reason = %why, recheck = ?PORT_RECHECK, "not starting the UI");
            self.ui = Ui::Waiting {
                recheck: after(Instant::now(), PORT_RECHECK),
                why,
            };
            self.ready_once();
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
            prepared: launch,
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
            let mut transient = false;
            let report = tokio::task::spawn_blocking(move || crate::layout::apply(&config))
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

    fn on_laid_out(
        &mut self,
        report: Result<crate::layout::LayoutReport, String>,
        transient: bool,
    ) {
        let error = match report {
            Ok(report) => {
                self.conflicts = report.conflicts.iter().map(ToString::to_string).collect();
                for c in &self.conflicts {
                    tracing::warn!(conflict = %c, "layout conflict: kept the user's file");
                }
                self.note_missing_targets(&report);
                None
            }
            Err(e) => Some(e),
        };
        self.layout_transient = transient;
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
            (Some(why), _) if self.layout_transient => {
                self.retry_later(format!("cannot prepare the data directory: {why}"));
                return;
            }
            (Some(why), _) => {
                tracing::error!(reason = %why, "cannot prepare the data directory");
                self.ui = Ui::Failed { why };
                self.ready_once();
                return;
            }
            (None, Some(Ok(p))) => p,
            (None, Some(Err(why))) => {
                self.ui = failed(why.to_string());
                self.ready_once();
                return;
            }
            (None, None) => return,
        };
        let config = &self.config;
        match UiProcess::spawn(&prepared.launch, &prepared.redactor) {
            Ok(proc) => {
                self.transient.succeeded();
                self.refresh.forget_routes();
                tracing::info!(ui_pid = proc.pid(), flavor = %config.ui.flavor, port = config.ui_own_port(), "UI launched");
                if let Some(reason) = self.start_reason.take() {
                    *self.counters.restarts.entry(reason).or_default() += 1;
                }
                let probe = Probe::new(
                    config.ui.flavor,
                    config.ui_own_port(),
                    prepared.auth.clone(),
                );
                self.images_ui_launched(prepared.auth);
                self.refresh.ui_launched();
                self.probing = super::Probing::default();
                let now = Instant::now();
                self.timers.probe_at(after(now, FIRST_PROBE));
                self.ui = Ui::Starting {
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
                let counter = self.start_reason.take().unwrap_or(RestartReason::Crash);
                self.record_crash(format!("cannot run {program}: {e}"), counter);
            }
        }
    }

    /// A transient failure before launch: `waiting`, and try again after a backoff
    /// (not a crash: nothing ran, and nothing here needs the admin).
    fn retry_later(&mut self, why: String) {
        let delay = self.transient.failed();
        tracing::warn!(reason = %why, retry_in = ?delay, "cannot start the UI now; retrying");
        self.ui = Ui::Waiting {
            recheck: after(Instant::now(), delay),
            why: format!("{why}; retrying in {}s", delay.as_secs()),
        };
        self.ready_once();
    }

    /// Keeps the declared model targets that do not exist for the status, and logs
    /// each one once when it goes missing (not on every relayout).
    fn note_missing_targets(&mut self, report: &crate::layout::LayoutReport) {
        let now: Vec<String> = report.dangling.iter().map(ToString::to_string).collect();
        for d in now.iter().filter(|d| !self.missing_targets.contains(d)) {
            tracing::warn!(missing = %d, "model target missing: not linked");
        }
        for d in self.missing_targets.iter().filter(|d| !now.contains(d)) {
            tracing::info!(was = %d, "model target present again");
        }
        self.missing_targets = now;
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
        self.images_ui_gone();
        self.ui = Ui::Stopping {
            pid: proc.pid(),
            why: format!("UI exited ({exit}); cleaning up its processes"),
        };
        let output = proc.output().clone();
        self.tasks.spawn(async move {
            proc.reap_group().await;
            // A UI that dies at start mostly says why (no git, a bad flag, no GPU):
            // its last words go into the reason.
            let why = if was_ready {
                format!("UI exited ({exit})")
            } else {
                let _ = tokio::time::timeout(LAST_WORDS_WAIT, output.drained()).await;
                match output.summary() {
                    Some(last) => format!("UI exited ({exit}; last output: {last:?})"),
                    None => format!("UI exited ({exit})"),
                }
            };
            Event::Gone {
                status,
                then: AfterStop::Crash {
                    why,
                    counter: RestartReason::Crash,
                },
            }
        });
    }

    /// Stops the running UI in a task; `then` decides what follows.
    pub(super) fn begin_stop(&mut self, why: String, then: AfterStop) {
        let stop_timeout = self.config.ui.stop_timeout;
        let (proc, plan) = match std::mem::replace(&mut self.ui, Ui::Down) {
            // Not ready: it cannot be running a job, and a Forge importing torch
            // would lose the SIGINT anyway.
            Ui::Starting { proc, .. } => (
                proc,
                StopPlan {
                    grace: stop_timeout.min(NOT_READY_GRACE),
                    resend: Some(SIGINT_RESEND.min(NOT_READY_GRACE / 2)),
                },
            ),
            Ui::Ready { proc, .. } => (
                proc,
                StopPlan {
                    grace: stop_timeout,
                    resend: self
                        .config
                        .ui
                        .flavor
                        .may_lose_sigint()
                        .then_some(SIGINT_RESEND),
                },
            ),
            other => {
                self.ui = other;
                return;
            }
        };
        tracing::info!(ui_pid = proc.pid(), reason = %why, grace = ?plan.grace, "stopping the UI");
        self.images_ui_gone();
        self.ui = Ui::Stopping {
            pid: proc.pid(),
            why,
        };
        self.probing.queue = None;
        self.tasks.spawn(async move {
            let status = proc.stop(plan).await;
            Event::Gone { status, then }
        });
    }

    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prepared {
                start,
                preflight,
                launch,
                port_held,
            } => self.on_prepared(start, preflight, launch, port_held),
            Event::LaidOut { report, transient } => self.on_laid_out(report, transient),
            Event::Routes(routes) => self.on_routes(routes),
            Event::Refreshed(results) => self.on_refreshed(results),
            Event::ConfigRead { text, reply } => {
                self.reloads_in_flight = self.reloads_in_flight.saturating_sub(1);
                self.reload_bytes(text, reply)
            }
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
                self.maybe_render();
            }
            Event::ImageDone {
                name,
                fingerprint,
                result,
            } => self.on_image_done(&name, &fingerprint, result),
            Event::QueueChanged(remaining) => {
                if self.pending.is_some() && matches!(self.ui, Ui::Ready { .. }) {
                    tracing::debug!(remaining, "queue broadcast: probing now");
                    self.timers.probe_at(Some(Instant::now()));
                }
            }
            Event::Download(ev) => self.on_download(ev),
            Event::SettingsSynced(done) => self.on_settings_synced(done),
            Event::HandoffChecked(checked) => self.on_handoff_checked(checked),
            Event::Gone { status, then } => {
                if let Ok(s) = &status {
                    tracing::info!(exit = %describe_exit(s), "UI stopped; its process group is gone");
                }
                self.ui = Ui::Down;
                match then {
                    AfterStop::Start => self.start_ui(),
                    AfterStop::Crash { why, counter } => self.record_crash(why, counter),
                    AfterStop::Exit => {}
                    AfterStop::ExitService => self.exit_for_service_restart(),
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
            QueueSignal::start(self.config.ui_own_port(), move |n| {
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
        if let Ui::Ready { probe, .. } = &self.ui {
            let probe = probe.clone();
            self.learn_routes(probe);
        }
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
    fn spawn_probe(&mut self, probe: Probe, readiness_of: Option<i32>) {
        self.probing.in_flight = true;
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

    /// Asks [`super::pending::Pending::decide`] whether the pending restart is due.
    pub(super) fn check_pending(&mut self, now: Instant) {
        if !matches!(self.ui, Ui::Ready { .. }) {
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
            self.probing.queue
        };
        let reading = Reading {
            queue,
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
