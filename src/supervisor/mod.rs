//! The supervisor core: one task that owns the UI process, the config in force, the
//! pending restart and the counters, and publishes a [`Snapshot`] after every step.
//!
//! Everything else drives it by [`CoreCommand`]s (control API, D-Bus, SIGHUP, the
//! config watcher) and reads it through snapshots. Slow work — preflight, layout,
//! probes, settings, stopping the UI — runs as tracked tasks ([`work`]) that report
//! back as events, so the loop answers a reload or a status within milliseconds
//! even while the UI hangs. `docs/architecture.md` maps the files.
//!
//! This file is the loop and the snapshot; [`start`] starts the UI, [`probe`]
//! watches it, [`stop`] sees it end and stops it, [`events`] routes the tasks'
//! reports, [`reconfigure`] reloads and restarts, [`pending`] decides when a
//! deferred restart is due, [`crash`] keeps the crash record and backoff,
//! [`timers`] the clock, [`status_line`] the one-line truth.

mod crash;
mod downloads;
mod events;
mod handoff;
mod images;
mod pending;
mod probe;
pub mod protocol;
mod queue_age;
mod queue_keep;
mod reconfigure;
mod refresh;
mod stall;
mod start;
pub mod status_line;
mod stop;
mod timers;
mod transient;
mod unload;
mod watchdog;
mod work;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Instant;

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
use crate::ui::launch::Prepared;
use crate::ui::process::UiProcess;

use crash::CrashRecord;
use pending::Pending;
use timers::Timers;
use work::{Event, LayoutLane, Tasks};

pub use handoff::{Ended, Handover};

/// Where the UI is in its life.
#[derive(Debug)]
enum Ui {
    /// Start number `start`: GPU preflight and launch preparation, then the
    /// layout; `prepared` once the first part is done.
    Preparing {
        start: u64,
        prepared: Option<Result<Prepared, crate::ui::launch::PrepareError>>,
        /// A re-check of a waiting supervisor keeps showing why it waits
        /// until the check says otherwise.
        waiting: Option<String>,
    },
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
    /// Crashed; next start at `until` (`None`: never by itself).
    Backoff { until: Option<Instant>, why: String },
    /// Preflight failed; re-check at `recheck`.
    Waiting {
        recheck: Option<Instant>,
        why: String,
    },
    /// Gave up until a restart or reload.
    Failed { why: String },
    /// The supervisor is exiting.
    Down,
}

/// Who waits for a layout of the config in force.
#[derive(Debug)]
enum LayoutWaiter {
    /// Start number `n` launches once the data dir is laid out.
    Start(u64),
    /// A reload answers once its config is laid out, then applies the live part.
    Reload(reconfigure::Applying),
    /// Finished downloads get linked; the UI then rescans their kinds.
    Downloads,
}

/// The last queue reading and whether a probe is out.
#[derive(Debug, Default)]
struct Probing {
    queue: Option<Queue>,
    /// When the probe behind `queue` was sent.
    sent: Option<Instant>,
    in_flight: bool,
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
    /// Events from callbacks outside the task set (ComfyUI's websocket).
    signals: mpsc::UnboundedSender<Event>,
    tasks: Tasks,
    layouts: LayoutLane<LayoutWaiter>,
    ui: Ui,
    /// Number of the latest start; events of older ones are ignored.
    start_seq: u64,
    probing: Probing,
    pending: Option<Pending>,
    crashes: CrashRecord,
    counters: Counters,
    timers: Timers,
    last_reload: Option<ReloadOutcome>,
    reload_rejected: Option<String>,
    conflicts: Vec<String>,
    sent_ready: bool,
    started: Instant,
    ready_since_unix: Option<u64>,
    last_time_to_ready_ms: Option<u64>,
    /// Restart reason to count when the next start happens.
    start_reason: Option<RestartReason>,
    /// The text of `config`, handed to a new binary on a self-upgrade.
    config_text: Vec<u8>,
    /// A reload decided to hand over to a new binary.
    handoff: Option<handoff::Planned>,
    /// Reloads reading their file or checking a new binary: a handoff waits
    /// for their answers, so no requester is left without one.
    reloads_in_flight: u32,
    /// The UI is stopped for a service restart: the loop ends.
    exit_service: bool,
    /// State handed over by the previous binary, taken over when `run` starts.
    adopting: Option<handoff::Adopting>,
    /// Consecutive transient failures before a launch (full disk, no fds, …).
    transient: transient::Retry,
    /// Refresh routes of the running UI and failed refreshes.
    refresh: refresh::RefreshState,
    /// Declared model targets that do not exist (one line each).
    missing_targets: Vec<String>,
    /// Whether the last layout failure may pass by itself (then retried).
    layout_transient: bool,
    /// Draining for a stop: set once, never cleared.
    draining: bool,
    /// Models fetched at run time; created when the config first declares one.
    downloads: Option<crate::download::Manager>,
    /// Model kinds whose downloads finished since the last relayout for them:
    /// refreshed together once it is done.
    downloaded: std::collections::BTreeSet<crate::ui::flavor::ModelKind>,
    /// Declared images: their state and the render in progress.
    images: images::Images,
    /// Requests in flight at the front door, when one runs: a self-upgrade
    /// waits for none (see `handoff.rs`).
    front: Option<watch::Receiver<usize>>,
    /// The last count read from `front`.
    front_in_flight: usize,
    /// The answers the UI is sending through the front door: a planned stop
    /// lets them finish first (see `stop.rs`).
    front_answers: Option<crate::front::Answers>,
    /// `[health]`: stalls and CUDA faults of the running UI.
    watchdog: watchdog::Watchdog,
    /// `gpu.unload_after`: the models unloaded from an idle UI.
    idle_unload: unload::IdleUnload,
    /// How long the oldest waiting job has waited.
    queue_age: queue_age::QueueAge,
    /// The journal of ComfyUI prompts (`queue_keep.rs`).
    keep: queue_keep::QueueKeep,
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
        CoreEvents,
    ) {
        let (signals, events_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let now = Instant::now();
        let timers = Timers::new(now, notifier.watchdog_interval());
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
            missing_targets: Vec::new(),
            refresh_failed: None,
            refresh_failures: 0,
            draining: false,
            images: crate::images::ImagesStatus::default(),
            health: Default::default(),
            vram: Default::default(),
            queue_oldest_wait_seconds: None,
            front: None,
            inhibit_sleep: config.gpu.inhibit_sleep,
            sleep_inhibited: None,
            queue_keep: Default::default(),
        };
        let (snapshots, snap_rx) = watch::channel(placeholder);
        let images = images::Images::new(&config);
        let keep = queue_keep::QueueKeep::new(&config);
        let sup = Supervisor {
            path,
            config_hash: config_hash(config_text),
            config,
            gpu,
            notifier,
            snapshots,
            signals,
            tasks: Tasks::default(),
            layouts: LayoutLane::default(),
            ui: Ui::Down,
            start_seq: 0,
            probing: Probing::default(),
            pending: None,
            crashes: CrashRecord::default(),
            counters: Counters::default(),
            timers,
            last_reload: None,
            reload_rejected: None,
            conflicts: Vec::new(),
            sent_ready: false,
            started: now,
            ready_since_unix: None,
            last_time_to_ready_ms: None,
            start_reason: None,
            config_text: config_text.to_vec(),
            handoff: None,
            reloads_in_flight: 0,
            exit_service: false,
            adopting: None,
            downloads: None,
            downloaded: Default::default(),
            transient: transient::Retry::default(),
            refresh: refresh::RefreshState::default(),
            missing_targets: Vec::new(),
            layout_transient: false,
            draining: false,
            images,
            front: None,
            front_in_flight: 0,
            front_answers: None,
            watchdog: watchdog::Watchdog::default(),
            idle_unload: unload::IdleUnload::default(),
            queue_age: queue_age::QueueAge::default(),
            keep,
        };
        (
            sup,
            CoreHandle::new(cmd_tx, snap_rx),
            cmd_rx,
            CoreEvents(events_rx),
        )
    }

    /// Runs until `shutdown` resolves (then stops the UI gracefully), a reload
    /// hands over to a new binary (the UI keeps running), or a changed unit needs
    /// a service restart (the UI stopped when idle).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<CoreCommand>,
        mut events: CoreEvents,
        shutdown: impl Future<Output = ()>,
    ) -> Ended {
        tokio::pin!(shutdown);
        // Downloads run beside the UI, which starts with what is present.
        self.apply_downloads();
        self.keep_load();
        match self.adopting.take() {
            Some(adopting) => self.finish_adoption(adopting),
            None => self.start_ui(),
        }
        let mut front = self.front.take();
        loop {
            // The door's count is read here, not on each of its changes: only a
            // planned handoff waits for it, and a wake per request would cost
            // every proxied request a turn of this loop.
            if let Some(rx) = front.as_mut() {
                self.front_in_flight = *rx.borrow_and_update();
            }
            if self.should_end() {
                break;
            }
            self.publish();
            let wake = tokio::time::Instant::from_std(self.next_wakeup());
            let handoff_waits = self.handoff.is_some() && self.front_in_flight > 0;
            let front_changed = async {
                let gone = match front.as_mut() {
                    Some(rx) => rx.changed().await.is_err(),
                    None => true,
                };
                // No door, or it is gone (the daemon is ending).
                if gone {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = front_changed, if handoff_waits => {}
                () = &mut shutdown => break,
                Some(cmd) = commands.recv() => self.on_command(cmd),
                ev = self.tasks.next() => self.on_event(ev),
                Some(ev) = events.0.recv() => self.on_event(ev),
                status = stop::child_exit(&mut self.ui) => self.on_exit(status),
                () = tokio::time::sleep_until(wake) => self.on_tick(),
            }
        }
        if let Some(handover) = self.take_handoff() {
            return Ended::Handoff(Box::new(handover));
        }
        self.shutdown().await;
        if self.exit_service {
            Ended::ServiceRestart
        } else {
            Ended::Shutdown
        }
    }

    /// The earliest moment something is due.
    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let grace = self.config.restart.idle_grace;
        let ui = match &self.ui {
            Ui::Starting { since, .. } => timers::after(*since, self.config.ui.startup_timeout),
            Ui::Backoff { until, .. } => *until,
            Ui::Waiting { recheck, .. } => *recheck,
            _ => None,
        };
        let probing =
            !self.probing.in_flight && matches!(self.ui, Ui::Starting { .. } | Ui::Ready { .. });
        let pending = self.pending.as_ref();
        self.timers.next_wake(
            now,
            probing,
            [
                ui,
                pending.and_then(Pending::deadline),
                pending.and_then(|p| p.grace_end(grace)),
                self.next_progress(now),
                self.handoff_front_bound(),
            ],
        )
    }

    /// Periodic duties: watchdog, start-timeout extension, probes, timers.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let due = self.timers.take_due(now);
        if due.watchdog {
            self.notifier.watchdog();
        }
        if due.extend && !self.sent_ready {
            self.notifier.extend_timeout(timers::EXTEND_EVERY * 6);
        }
        self.on_timers(now);
        if self.timers.take_relink(now) {
            self.request_layout(Some(LayoutWaiter::Downloads));
        }
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
            self.probing.queue
        } else {
            None
        };
        let downloads = self.download_progress();
        let download_part = crate::download::summary::status_part(&downloads);
        let now = Instant::now();
        let health = self
            .watchdog
            .status(now, std::time::SystemTime::now(), &self.config.health);
        let stalled = watchdog::stall_words(&health);
        let vram = self.idle_unload.status();
        let status_line = render(&StatusInput {
            phase: Some(phase),
            reason: reason.as_deref(),
            flavor: self.config.ui.flavor.name(),
            gpus: self.config.ui.gpus.as_deref(),
            models,
            queue,
            queue_probed: self.probing.sent.is_some(),
            pending: pending.as_ref(),
            deadline_local: pending
                .as_ref()
                .and_then(|p| p.deadline_unix)
                .map(local_hhmm),
            reload_rejected: self.reload_rejected.as_deref(),
            reload_errors: self
                .last_reload
                .as_ref()
                .filter(|r| r.result == crate::supervisor::protocol::ReloadResult::Applied)
                .map_or(0, |r| r.errors.len()),
            conflicts: self.conflicts.len(),
            downloads: download_part.as_deref(),
            missing_targets: self.missing_targets.len(),
            stalled: stalled.as_deref(),
            unloaded: vram.unloaded,
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
            missing_targets: self.missing_targets.clone(),
            refresh_failed: self.refresh.failed(),
            refresh_failures: self.refresh.failures,
            draining: self.draining,
            images: self.images.book.status(),
            health,
            vram,
            queue_oldest_wait_seconds: queue.map(|_| self.queue_age.oldest(now).as_secs_f64()),
            front: None,
            inhibit_sleep: self.config.gpu.inhibit_sleep,
            sleep_inhibited: None,
            queue_keep: self.keep.status(),
        }
    }

    fn on_command(&mut self, cmd: CoreCommand) {
        match cmd {
            CoreCommand::Reload {
                text,
                parsed,
                reply,
            } => self.reload(text, parsed, reply),
            CoreCommand::Restart { when, reply } => {
                self.request_restart(when);
                self.publish();
                let _ = reply.send(self.snapshots.borrow().status_line.clone());
            }
            CoreCommand::RetryDownloads { reply } => {
                let _ = reply.send(self.retry_downloads());
            }
            CoreCommand::Drain { reply } => {
                if !self.draining {
                    tracing::info!("draining: /readyz answers 503 until the supervisor stops");
                }
                self.draining = true;
                self.publish();
                let _ = reply.send(());
            }
            CoreCommand::Ping { reply } => {
                let _ = reply.send(());
            }
            CoreCommand::Generate {
                names,
                force,
                reply,
            } => self.images_generate(names, force, reply),
            CoreCommand::QueueAccepted(kept) => self.on_queue_accepted(*kept),
            CoreCommand::Queue { op, reply } => self.on_queue_command(op, reply),
        }
    }

    /// `READY=1` once: when the UI first answers, or when the supervisor settles in
    /// a state that needs the admin (failed, waiting) — so `systemctl start` and
    /// `nixos-rebuild switch` never hang on a UI that cannot start.
    fn ready_once(&mut self) {
        if !self.sent_ready {
            self.sent_ready = true;
            self.timers.ready_sent();
            self.publish();
            self.notifier.ready();
        }
    }
}

/// The receiving end of events sent from outside the core's task set.
pub struct CoreEvents(mpsc::UnboundedReceiver<Event>);
