//! The UI's life: preflight, layout, launch, readiness, queue probes, crash
//! accounting with backoff, graceful stop and restart.

use std::io;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use super::{CRASH_WINDOW, MAX_CRASHES, STARTING_PROBE, Supervisor, Ui, unix_now};
use crate::supervisor::protocol::{Queue, RestartReason};
use crate::ui::api::{ApiAuth, Probe, ProbeError};
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::gpu::{Preflight, preflight};
use crate::ui::process::{Launch, UiProcess, describe_exit};

/// Results of work the core spawned.
#[derive(Debug)]
pub enum Event {
    /// A readiness probe finished.
    Ready(bool),
    /// A queue probe finished; `sent` is when it was sent (a restart may act only
    /// on a reading taken after the idle grace ended).
    Queue(Result<Queue, String>, Instant),
    /// ComfyUI broadcast its queue length (`/ws`): probe now if a restart waits.
    QueueChanged(u32),
    /// A download finished or gave up.
    Download(crate::download::Event),
    /// The UI group is gone after a stop or an exit; `then` says what comes next.
    Gone {
        /// Exit of the main process.
        status: io::Result<ExitStatus>,
        /// What to do now.
        then: AfterStop,
    },
}

/// What follows once the UI's group is gone.
#[derive(Debug)]
pub enum AfterStop {
    /// Start the UI again (a restart).
    Start,
    /// Count a crash with this reason, then back off or fail.
    Crash(String),
}

/// Resolves when the running UI's main process exits; never while none runs.
pub async fn child_exit(ui: &mut Ui) -> io::Result<ExitStatus> {
    match ui {
        Ui::Starting { proc, .. } | Ui::Ready { proc, .. } => proc.wait().await,
        _ => std::future::pending().await,
    }
}

impl Supervisor {
    /// Preflight, layout, launch. Failures land in `waiting`, `failed` or the crash path.
    pub(super) async fn start_ui(&mut self) {
        let config = self.config.clone();
        if let Preflight::Waiting(why) = preflight(&self.gpu, config.ui.gpus.as_deref()).await {
            tracing::warn!(reason = %why, recheck = ?self.gpu.recheck, "not starting the UI");
            self.ui = Ui::Waiting {
                recheck: Instant::now() + self.gpu.recheck,
                why,
            };
            self.ready_once();
            return;
        }
        if let Err(why) = self.lay_out().await {
            tracing::error!(reason = %why, "cannot prepare the data directory");
            self.ui = Ui::Failed { why };
            self.ready_once();
            return;
        }
        let auth = match &config.ui.api_auth_file {
            None => None,
            Some(path) => match std::fs::read_to_string(path)
                .map_err(|e| e.to_string())
                .and_then(|t| ApiAuth::parse(&t))
            {
                Ok(a) => Some(a),
                Err(e) => {
                    let why = format!("ui.api_auth_file {}: {e}", path.display());
                    tracing::error!(reason = %why, "cannot start the UI");
                    self.ui = Ui::Failed { why };
                    self.ready_once();
                    return;
                }
            },
        };
        let mut argv = config.ui_argv();
        if let Some(a) = &auth {
            // Before extra_args, so the user's own flags still win.
            let at = argv.len() - config.ui.extra_args.len();
            argv.splice(
                at..at,
                [
                    "--api-auth".to_string(),
                    format!("{}:{}", a.user, a.password),
                ],
            );
        }
        let mut env = config.ui.environment.clone();
        env.entry("PYTHONUNBUFFERED".into())
            .or_insert_with(|| "1".into());
        if let Some(gpus) = &config.ui.gpus {
            let ids: Vec<String> = gpus.iter().map(u32::to_string).collect();
            env.insert("CUDA_VISIBLE_DEVICES".into(), ids.join(","));
        }
        let launch = Launch { argv, env };
        match UiProcess::spawn(&launch) {
            Ok(proc) => {
                tracing::info!(pid = proc.pid(), flavor = %config.ui.flavor, port = config.ui.port, "UI launched");
                if let Some(reason) = self.start_reason.take() {
                    *self.counters.restarts.entry(reason).or_default() += 1;
                }
                let probe = Probe::new(config.ui.flavor, config.ui.port, auth);
                self.queue = None;
                self.queue_sent = None;
                self.probe_in_flight = false;
                self.next_probe = Instant::now() + Duration::from_millis(100);
                self.ui = Ui::Starting {
                    proc,
                    probe,
                    since: Instant::now(),
                };
            }
            Err(e) => {
                let program = launch.argv.first().cloned().unwrap_or_default();
                self.record_crash(format!("cannot run {program}: {e}"));
            }
        }
    }

    /// Runs the layout off the async thread; keeps the conflicts for the status.
    pub(super) async fn lay_out(&mut self) -> Result<crate::layout::LayoutReport, String> {
        let config = self.config.clone();
        let began = std::time::Instant::now();
        let report = tokio::task::spawn_blocking(move || crate::layout::apply(&config))
            .await
            .map_err(|e| format!("layout task failed: {e}"))?
            .map_err(|e| format!("layout failed: {e}"))?;
        tracing::debug!(took = ?began.elapsed(), actions = report.actions_applied, "layout done");
        self.conflicts = report.conflicts.iter().map(ToString::to_string).collect();
        for c in &self.conflicts {
            tracing::warn!(conflict = %c, "layout conflict: kept the user's file");
        }
        Ok(report)
    }

    /// The UI's main process exited while we did not ask it to.
    pub(super) fn on_exit(&mut self, status: io::Result<ExitStatus>) {
        let (proc, was_ready) = match std::mem::replace(&mut self.ui, Ui::Down) {
            Ui::Starting { proc, .. } => (proc, false),
            Ui::Ready { proc, since, .. } => {
                // A UI that ran well for a while starts its backoff afresh.
                if since.elapsed() > CRASH_WINDOW {
                    self.consecutive_crashes = 0;
                }
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
        tracing::warn!(pid = proc.pid(), exit = %exit, was_ready, "UI exited unexpectedly");
        let pid = proc.pid();
        self.ui = Ui::Stopping {
            pid,
            why: format!("UI exited ({exit}); cleaning up its processes"),
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            proc.reap_group().await;
            let _ = events.send(Event::Gone {
                status,
                then: AfterStop::Crash(format!("UI exited ({exit})")),
            });
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
        tracing::info!(pid = proc.pid(), reason = %why, "stopping the UI");
        self.ui = Ui::Stopping {
            pid: proc.pid(),
            why,
        };
        self.queue = None;
        let grace = self.config.ui.stop_timeout;
        let events = self.events.clone();
        tokio::spawn(async move {
            let status = proc.stop(grace).await;
            let _ = events.send(Event::Gone { status, then });
        });
    }

    pub(super) async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Ready(ok) => {
                self.probe_in_flight = false;
                if let (true, Ui::Starting { .. }) = (ok, &self.ui) {
                    self.became_ready();
                }
            }
            Event::Queue(result, sent) => {
                self.probe_in_flight = false;
                self.queue_sent = Some(sent);
                if !matches!(self.ui, Ui::Ready { .. }) {
                    return;
                }
                match result {
                    Ok(q) => self.queue = Some(q),
                    Err(e) => {
                        tracing::debug!(error = %e, "queue probe failed");
                        self.queue = None;
                    }
                }
                self.check_pending(Instant::now());
            }
            Event::QueueChanged(remaining) => {
                if self.pending.is_some() && matches!(self.ui, Ui::Ready { .. }) {
                    tracing::debug!(remaining, "queue broadcast: probing now");
                    self.next_probe = Instant::now();
                }
            }
            Event::Download(ev) => self.on_download(ev).await,
            Event::Gone { status, then } => {
                if let Ok(s) = &status {
                    tracing::info!(exit = %describe_exit(s), "UI stopped; its process group is gone");
                }
                match then {
                    AfterStop::Start => {
                        self.ui = Ui::Down;
                        self.start_ui().await;
                    }
                    AfterStop::Crash(why) => {
                        self.ui = Ui::Down;
                        self.record_crash(why);
                    }
                }
            }
        }
    }

    fn became_ready(&mut self) {
        let Ui::Starting { proc, probe, since } = std::mem::replace(&mut self.ui, Ui::Down) else {
            return;
        };
        let took = since.elapsed();
        tracing::info!(pid = proc.pid(), took = ?took, "UI is ready");
        self.last_time_to_ready_ms = Some(took.as_millis() as u64);
        self.ready_since_unix = Some(unix_now());
        let signal = (self.config.ui.flavor == Flavor::Comfyui).then(|| {
            let events = self.events.clone();
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
        self.next_probe = Instant::now();
        self.ready_once();
        self.enforce_settings();
    }

    /// Managed settings are enforced on every start: the UI may have read its
    /// settings file before a reload rewrote it (while it was starting), so the
    /// managed keys that differ from what it reports are sent now.
    fn enforce_settings(&self) {
        let Ui::Ready { probe, .. } = &self.ui else {
            return;
        };
        if !self.config.ui.flavor.has_options_api() || self.config.settings.is_empty() {
            return;
        }
        let (probe, wanted) = (probe.clone(), self.config.settings.clone());
        tokio::spawn(async move {
            let Ok(current) = probe.options().await else {
                return;
            };
            // JSON 2 and 2.0 are the same setting.
            let same = |a: &serde_json::Value, b: &serde_json::Value| {
                a == b || matches!((a.as_f64(), b.as_f64()), (Some(x), Some(y)) if x == y)
            };
            let send: serde_json::Map<_, _> = wanted
                .into_iter()
                .filter(|(k, v)| current.get(k).is_some_and(|c| !same(c, v)))
                .collect();
            if !send.is_empty() {
                match probe.set_options(&send).await {
                    Ok(()) => {
                        tracing::info!(keys = ?send.keys().collect::<Vec<_>>(), "managed settings enforced at start")
                    }
                    Err(e) => tracing::warn!(error = %e, "enforcing settings at start failed"),
                }
            }
        });
    }

    /// Counts a crash: back off (1 s doubling to 60 s), or `failed` after
    /// [`MAX_CRASHES`] within [`CRASH_WINDOW`].
    pub(super) fn record_crash(&mut self, why: String) {
        let now = Instant::now();
        self.counters.crashes += 1;
        self.crash_times.push_back(now);
        while self
            .crash_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
        {
            self.crash_times.pop_front();
        }
        self.consecutive_crashes += 1;
        if self.crash_times.len() >= MAX_CRASHES {
            let why = format!(
                "UI crashed {} times in {}s ({})",
                self.crash_times.len(),
                CRASH_WINDOW.as_secs(),
                why.trim_start_matches("UI exited ")
                    .trim_matches(['(', ')'])
            );
            tracing::error!(reason = %why, "giving up until `sd-webui-supervisor restart` or a reload");
            self.ui = Ui::Failed { why };
            self.ready_once();
            return;
        }
        let delay = Duration::from_secs(1u64 << (self.consecutive_crashes - 1).min(6))
            .min(Duration::from_secs(60));
        tracing::warn!(reason = %why, delay = ?delay, "restarting the UI after a delay");
        self.start_reason = Some(RestartReason::Crash);
        self.ui = Ui::Backoff {
            until: now + delay,
            why: format!(
                "{why}, restarting in {}s (crash {} of {} in {}s)",
                delay.as_secs(),
                self.crash_times.len(),
                MAX_CRASHES,
                CRASH_WINDOW.as_secs()
            ),
        };
    }

    /// Timers: readiness and queue probes, startup timeout, backoff, GPU re-checks,
    /// pending-restart deadline and idle grace.
    /// A due launch is awaited here, inside one loop step, so no state between the
    /// old phase and the launch outcome is ever published.
    pub(super) async fn on_timers(&mut self, now: Instant) {
        match &self.ui {
            Ui::Starting { since, probe, .. } => {
                if now.duration_since(*since) >= self.config.ui.startup_timeout {
                    let why = format!(
                        "UI did not answer within {}",
                        humantime::format_duration(self.config.ui.startup_timeout)
                    );
                    self.start_reason = Some(RestartReason::StartupTimeout);
                    self.begin_stop(why.clone(), AfterStop::Crash(why));
                } else if !self.probe_in_flight && now >= self.next_probe {
                    self.spawn_probe(probe.clone(), true);
                    self.next_probe = now + STARTING_PROBE;
                }
            }
            Ui::Ready { probe, .. } if !self.probe_in_flight && now >= self.next_probe => {
                self.spawn_probe(probe.clone(), false);
                self.next_probe = now + self.config.restart.poll_interval;
            }
            Ui::Backoff { until, .. } if now >= *until => self.start_ui().await,
            Ui::Waiting { recheck, .. } if now >= *recheck => self.start_ui().await,
            _ => {}
        }
        self.check_pending(now);
    }

    fn spawn_probe(&mut self, probe: Probe, readiness: bool) {
        self.probe_in_flight = true;
        let events = self.events.clone();
        let sent = Instant::now();
        tokio::spawn(async move {
            let ev = if readiness {
                Event::Ready(probe.ready().await)
            } else {
                Event::Queue(
                    probe.queue().await.map_err(|e: ProbeError| e.to_string()),
                    sent,
                )
            };
            let _ = events.send(ev);
        });
    }

    /// Graceful shutdown: `STOPPING=1`, stop the UI (waiting for a stop already in
    /// progress), done.
    pub(super) async fn shutdown(
        &mut self,
        events: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    ) {
        self.notifier.stopping();
        tracing::info!("shutting down");
        if matches!(self.ui, Ui::Starting { .. } | Ui::Ready { .. }) {
            self.begin_stop(
                "supervisor is shutting down".into(),
                AfterStop::Crash(String::new()),
            );
        }
        if matches!(self.ui, Ui::Stopping { .. }) {
            self.publish();
            while let Some(ev) = events.recv().await {
                if let Event::Gone { status, .. } = ev {
                    if let Ok(s) = status {
                        tracing::info!(exit = %describe_exit(&s), "UI stopped");
                    }
                    break;
                }
            }
        }
        self.ui = Ui::Down;
        self.publish();
    }
}
