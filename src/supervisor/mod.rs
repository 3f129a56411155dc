//! The supervisor core: one task that owns the UI process, the config in force, the
//! pending restart and the counters, and publishes a [`Snapshot`] after every step.
//!
//! Everything else drives it by [`CoreCommand`]s (control API, D-Bus, SIGHUP, the config
//! watcher) and reads it through snapshots. Slow work — probes, stopping the UI,
//! refresh calls — runs in spawned tasks that report back as [`Event`]s, so the loop
//! always answers a reload within milliseconds, even while the UI hangs.
//!
//! Submodules: [`lifecycle`] (start, readiness, crash/backoff, stop) and
//! [`reconfigure`] (reload, live apply, restart scheduling).

mod downloads;
mod lifecycle;
pub mod protocol;
mod reconfigure;
pub mod status_line;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::notify::Notifier;
use crate::supervisor::protocol::{
    CoreCommand, CoreHandle, Phase, Queue, ReloadOutcome, ReloadResult, RestartReason, Snapshot,
};
use crate::supervisor::status_line::{StatusInput, render};
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::gpu::GpuEnv;
use crate::ui::process::UiProcess;

pub use lifecycle::Event;

/// Crashes within this window count towards `failed`.
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// This many crashes within [`CRASH_WINDOW`] → `failed`.
const MAX_CRASHES: usize = 5;
/// Readiness probe period while the UI starts.
const STARTING_PROBE: Duration = Duration::from_millis(250);
/// Period of `EXTEND_TIMEOUT_USEC` messages before the first `READY=1`.
const EXTEND_EVERY: Duration = Duration::from_secs(5);

/// Where the UI is in its life.
#[derive(Debug)]
enum Ui {
    /// Launched, not answering yet.
    Starting {
        proc: UiProcess,
        probe: Probe,
        since: Instant,
    },
    /// Answering.
    Ready {
        proc: UiProcess,
        probe: Probe,
        since: Instant,
        /// ComfyUI's queue broadcasts, while it runs (dropped with the state).
        _signal: Option<QueueSignal>,
    },
    /// A task is stopping or reaping it; `pid` for the status.
    Stopping { pid: u32, why: String },
    /// Crashed; next start at `until`.
    Backoff { until: Instant, why: String },
    /// Preflight failed; re-check at `recheck`.
    Waiting { recheck: Instant, why: String },
    /// Gave up until a restart or reload.
    Failed { why: String },
    /// The supervisor is exiting.
    Down,
}

/// A restart owed to the UI.
#[derive(Debug, Clone)]
struct Pending {
    reasons: Vec<String>,
    /// Effective policy (an explicit `restart --when-idle` waits even under `manual`).
    policy: crate::config::RestartPolicy,
    since_unix: u64,
    deadline: Option<Instant>,
    deadline_unix: Option<u64>,
    /// When the queue was first seen empty (reset when it fills again).
    idle_since: Option<Instant>,
    /// When this restart became pending: only queue readings taken later count.
    created: Instant,
}

impl Pending {
    /// A restart pending from now, due at the latest `deadline_after` from now.
    fn new(
        reasons: Vec<String>,
        policy: crate::config::RestartPolicy,
        deadline_after: Option<Duration>,
    ) -> Pending {
        let now = Instant::now();
        Pending {
            reasons,
            policy,
            since_unix: unix_now(),
            deadline: deadline_after.map(|d| now + d),
            deadline_unix: deadline_after.map(|d| unix_now() + d.as_secs()),
            idle_since: None,
            created: now,
        }
    }
}

/// Counters published in snapshots and metrics.
#[derive(Debug, Default)]
struct Counters {
    restarts: BTreeMap<RestartReason, u64>,
    crashes: u64,
    reloads: BTreeMap<ReloadResult, u64>,
}

/// The core's state. Built by [`Supervisor::new`], consumed by [`Supervisor::run`].
pub struct Supervisor {
    path: PathBuf,
    config: Config,
    config_hash: String,
    gpu: GpuEnv,
    notifier: Notifier,
    snapshots: watch::Sender<Snapshot>,
    events: mpsc::UnboundedSender<Event>,
    ui: Ui,
    queue: Option<Queue>,
    /// When the probe behind `queue` was sent.
    queue_sent: Option<Instant>,
    probe_in_flight: bool,
    next_probe: Instant,
    pending: Option<Pending>,
    crash_times: VecDeque<Instant>,
    consecutive_crashes: u32,
    counters: Counters,
    last_reload: Option<ReloadOutcome>,
    reload_rejected: Option<String>,
    conflicts: Vec<String>,
    sent_ready: bool,
    started: Instant,
    next_watchdog: Option<Instant>,
    next_extend: Instant,
    ready_since_unix: Option<u64>,
    last_time_to_ready_ms: Option<u64>,
    /// Restart reason to count when the next start happens.
    start_reason: Option<RestartReason>,
    /// Models fetched at run time; created when the config first declares one.
    downloads: Option<crate::download::Manager>,
}

/// Unix seconds now.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Local `HH:MM` of a unix time, for status lines.
fn local_hhmm(unix: u64) -> String {
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

/// Hex digest of config text, to tell generations apart and skip no-op reloads.
pub fn config_hash(text: &[u8]) -> String {
    // FNV-1a: tiny, stable, good enough to label generations (not security).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Supervisor {
    /// Builds the core for an already validated config read from `path`.
    /// Returns the core and the handle adapters use to reach it.
    pub fn new(
        path: PathBuf,
        config: Config,
        config_text: &[u8],
        gpu: GpuEnv,
        notifier: Notifier,
    ) -> (
        Supervisor,
        CoreHandle,
        mpsc::Receiver<CoreCommand>,
        mpsc::UnboundedReceiver<Event>,
    ) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let now = Instant::now();
        let next_watchdog = notifier.watchdog_interval().map(|d| now + d);
        let placeholder = Snapshot {
            state: Phase::Starting,
            status_line: "starting".into(),
            reason: None,
            flavor: config.ui.flavor.name().into(),
            gpus: config.ui.gpus.clone(),
            ui_pid: None,
            queue: None,
            restart_pending: None,
            last_reload: None,
            config_generation: config_hash(config_text),
            models: 0,
            layout_conflicts: Vec::new(),
            uptime_seconds: 0,
            ready_since_unix: None,
            restarts: BTreeMap::new(),
            crashes: 0,
            reloads: BTreeMap::new(),
            last_time_to_ready_ms: None,
            downloads: Vec::new(),
        };
        let (snapshots, snap_rx) = watch::channel(placeholder);
        let sup = Supervisor {
            path,
            config_hash: config_hash(config_text),
            config,
            gpu,
            notifier,
            snapshots,
            events,
            ui: Ui::Down,
            queue: None,
            queue_sent: None,
            probe_in_flight: false,
            next_probe: now,
            pending: None,
            crash_times: VecDeque::new(),
            consecutive_crashes: 0,
            counters: Counters::default(),
            last_reload: None,
            reload_rejected: None,
            conflicts: Vec::new(),
            sent_ready: false,
            started: now,
            next_watchdog,
            next_extend: now,
            ready_since_unix: None,
            last_time_to_ready_ms: None,
            start_reason: None,
            downloads: None,
        };
        (sup, CoreHandle::new(cmd_tx, snap_rx), cmd_rx, events_rx)
    }

    /// Runs until `shutdown` resolves, then stops the UI gracefully.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<CoreCommand>,
        mut events: mpsc::UnboundedReceiver<Event>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        // Downloads run beside the UI, which starts with what is present.
        self.apply_downloads();
        self.start_ui().await;
        loop {
            self.publish();
            let wake = tokio::time::Instant::from_std(self.next_wakeup());
            tokio::select! {
                () = &mut shutdown => break,
                Some(cmd) = commands.recv() => self.on_command(cmd).await,
                Some(ev) = events.recv() => self.on_event(ev).await,
                status = lifecycle::child_exit(&mut self.ui) => self.on_exit(status),
                () = tokio::time::sleep_until(wake) => self.on_tick().await,
            }
        }
        self.shutdown(&mut events).await;
    }

    /// The earliest moment something is due.
    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let mut due = now + Duration::from_secs(3600);
        let mut at = |t: Instant| due = due.min(t);
        if let Some(w) = self.next_watchdog {
            at(w);
        }
        if !self.sent_ready {
            at(self.next_extend);
        }
        if let Some(t) = self.next_progress(now) {
            at(t);
        }
        match &self.ui {
            Ui::Starting { since, .. } => {
                at(*since + self.config.ui.startup_timeout);
                if !self.probe_in_flight {
                    at(self.next_probe);
                }
            }
            Ui::Ready { .. } if !self.probe_in_flight => at(self.next_probe),
            Ui::Backoff { until, .. } => at(*until),
            Ui::Waiting { recheck, .. } => at(*recheck),
            _ => {}
        }
        if let Some(p) = &self.pending {
            if let Some(d) = p.deadline {
                at(d);
            }
            if let Some(idle) = p.idle_since {
                at(idle + self.config.restart.idle_grace);
            }
        }
        due.max(now)
    }

    /// Periodic duties: watchdog, start-timeout extension, probes, timers.
    async fn on_tick(&mut self) {
        let now = Instant::now();
        if let (Some(next), Some(every)) = (self.next_watchdog, self.notifier.watchdog_interval())
            && now >= next
        {
            self.notifier.watchdog();
            self.next_watchdog = Some(now + every);
        }
        if !self.sent_ready && now >= self.next_extend {
            self.notifier.extend_timeout(EXTEND_EVERY * 6);
            self.next_extend = now + EXTEND_EVERY;
        }
        self.on_timers(now).await;
    }

    /// Builds and publishes the snapshot; sends `STATUS=` when it changed.
    fn publish(&mut self) {
        let snap = self.snapshot();
        self.notifier.status(&snap.status_line);
        self.snapshots.send_if_modified(|old| {
            if *old == snap {
                false
            } else {
                *old = snap;
                true
            }
        });
    }

    fn snapshot(&self) -> Snapshot {
        let (phase, reason, pid) = match &self.ui {
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
        let pending = self
            .pending
            .as_ref()
            .map(|p| crate::supervisor::protocol::PendingRestart {
                reasons: p.reasons.clone(),
                policy: p.policy,
                since_unix: p.since_unix,
                deadline_unix: p.deadline_unix,
            });
        let models = self.config.models.values().map(|m| m.len()).sum();
        let queue = if phase == Phase::Ready {
            self.queue
        } else {
            None
        };
        let downloads = self.download_progress();
        let download_part = crate::download::summary::status_part(&downloads);
        let status_line = render(&StatusInput {
            phase: Some(phase),
            reason: reason.as_deref(),
            flavor: self.config.ui.flavor.name(),
            gpus: self.config.ui.gpus.as_deref(),
            models,
            queue,
            queue_probed: self.queue_sent.is_some(),
            pending: pending.as_ref(),
            deadline_local: pending
                .as_ref()
                .and_then(|p| p.deadline_unix)
                .map(local_hhmm),
            reload_rejected: self.reload_rejected.as_deref(),
            conflicts: self.conflicts.len(),
            downloads: download_part.as_deref(),
        });
        Snapshot {
            state: phase,
            status_line,
            reason,
            flavor: self.config.ui.flavor.name().into(),
            gpus: self.config.ui.gpus.clone(),
            ui_pid: pid,
            queue,
            restart_pending: pending,
            last_reload: self.last_reload.clone(),
            config_generation: self.config_hash.clone(),
            models,
            layout_conflicts: self.conflicts.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            ready_since_unix: if phase == Phase::Ready {
                self.ready_since_unix
            } else {
                None
            },
            restarts: self.counters.restarts.clone(),
            crashes: self.counters.crashes,
            reloads: self.counters.reloads.clone(),
            last_time_to_ready_ms: self.last_time_to_ready_ms,
            downloads,
        }
    }

    async fn on_command(&mut self, cmd: CoreCommand) {
        match cmd {
            CoreCommand::Reload { reply } => {
                let outcome = self.reload().await;
                let _ = reply.send(outcome);
            }
            CoreCommand::Restart { when, reply } => {
                self.request_restart(when).await;
                self.publish();
                let _ = reply.send(self.snapshots.borrow().status_line.clone());
            }
            CoreCommand::RetryDownloads { reply } => {
                let _ = reply.send(self.retry_downloads());
            }
        }
    }

    /// `READY=1` once: when the UI first answers, or when the supervisor settles in
    /// a state that needs the admin (failed, waiting) — so `systemctl start` and
    /// `nixos-rebuild switch` never hang on a UI that cannot start.
    fn ready_once(&mut self) {
        if !self.sent_ready {
            self.sent_ready = true;
            self.publish();
            self.notifier.ready();
        }
    }
}
