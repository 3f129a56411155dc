//! The supervisor's published state and the commands it accepts.
//!
//! The core owns all state; every other part (systemd notify, HTTP API, D-Bus,
//! metrics, the CLI) sees it only through [`Snapshot`]s on a watch channel and
//! talks to the core only by sending a [`CoreCommand`] through a [`CoreHandle`].
//! These types are the protocol between the core and its adapters.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

pub use crate::config::RestartPolicy;
pub use crate::ui::api::Queue;

/// Coarse state of the supervised UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The UI process runs but has not answered its readiness probe yet.
    #[default]
    Starting,
    /// The UI answers; jobs can run.
    Ready,
    /// The UI crashed; waiting before the next start.
    Backoff,
    /// Preconditions not met (GPU missing, driver mismatch); re-checked periodically.
    Waiting,
    /// Too many crashes; no further starts until restart or reload.
    Failed,
    /// The UI is being stopped (for a restart or shutdown).
    Stopping,
}

impl Phase {
    /// The lowercase name used in status lines, JSON and D-Bus.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Ready => "ready",
            Phase::Backoff => "backoff",
            Phase::Waiting => "waiting",
            Phase::Failed => "failed",
            Phase::Stopping => "stopping",
        }
    }
}

/// Why a restart is owed: a config key that changed, or one of the causes that
/// are not keys. In JSON (status, the handoff's state) each is one string: the
/// key, or `requested`, `service unit`, `supervisor upgrade (running config
/// unknown)`, the names earlier binaries used, so a handoff carries them across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub enum RestartCause {
    /// A changed config key (`ui.extra_args`, `extensions`, `models.loras`, …).
    Key(String),
    /// `restart` (`--when-idle`, or `--now` merged into one pending).
    Requested,
    /// The service unit changed (the service restarts, not only the UI).
    UnitChanged,
    /// A self-upgrade from a binary that could not say which config runs.
    ConfigUnknown,
    /// A job made no progress through its interrupt (`[health]`).
    Stalled,
    /// A CUDA fault in the UI's output (`health.gpu_errors`).
    GpuError,
    /// A new supervisor binary while several instances run: the service
    /// restarts once every instance is idle (the handoff carries one UI).
    Upgrade,
}

impl RestartCause {
    /// The JSON name.
    pub fn name(&self) -> &str {
        match self {
            RestartCause::Key(k) => k,
            RestartCause::Requested => "requested",
            RestartCause::UnitChanged => "service unit",
            RestartCause::ConfigUnknown => "supervisor upgrade (running config unknown)",
            RestartCause::Stalled => "job stalled",
            RestartCause::GpuError => "GPU error",
            RestartCause::Upgrade => "supervisor upgrade (instances)",
        }
    }

    /// How the status line says it (keys are listed as "… changed").
    pub fn describe(&self) -> &str {
        match self {
            RestartCause::Key(k) => k,
            RestartCause::Requested => "restart requested",
            RestartCause::UnitChanged => "service unit changed",
            RestartCause::ConfigUnknown => "supervisor upgraded, running config unknown",
            RestartCause::Stalled => "a job stalled",
            RestartCause::GpuError => "CUDA error in the UI's output",
            RestartCause::Upgrade => {
                "supervisor upgraded: the service restarts once every instance is idle"
            }
        }
    }

    /// Every cause in `causes`, keys together: `a, b changed; restart requested`.
    pub fn describe_all(causes: &[RestartCause]) -> String {
        let keys: Vec<&str> = causes
            .iter()
            .filter_map(|c| match c {
                RestartCause::Key(k) => Some(k.as_str()),
                _ => None,
            })
            .collect();
        let mut parts = Vec::new();
        if !keys.is_empty() {
            parts.push(format!("{} changed", keys.join(", ")));
        }
        parts.extend(
            causes
                .iter()
                .filter(|c| !matches!(c, RestartCause::Key(_)))
                .map(|c| c.describe().to_owned()),
        );
        parts.join("; ")
    }
}

impl From<String> for RestartCause {
    fn from(s: String) -> Self {
        match s.as_str() {
            "requested" => RestartCause::Requested,
            "service unit" => RestartCause::UnitChanged,
            "supervisor upgrade (running config unknown)" => RestartCause::ConfigUnknown,
            "job stalled" => RestartCause::Stalled,
            "GPU error" => RestartCause::GpuError,
            "supervisor upgrade (instances)" => RestartCause::Upgrade,
            _ => RestartCause::Key(s),
        }
    }
}

impl From<&str> for RestartCause {
    fn from(s: &str) -> Self {
        RestartCause::from(s.to_owned())
    }
}

impl From<RestartCause> for String {
    fn from(c: RestartCause) -> Self {
        match c {
            RestartCause::Key(k) => k,
            other => other.name().to_owned(),
        }
    }
}

impl std::fmt::Display for RestartCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A restart the supervisor owes the UI because of config changes or a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRestart {
    /// Why, one entry per cause.
    pub reasons: Vec<RestartCause>,
    /// The policy it waits under (an explicit `restart --when-idle` waits even
    /// under `manual`).
    pub policy: RestartPolicy,
    /// Unix seconds when the first of these changes arrived.
    pub since_unix: u64,
    /// Unix seconds after which the restart happens even if busy; `None` = never.
    pub deadline_unix: Option<u64>,
}

/// What a reload did with the file, as counted in `reloads_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReloadResult {
    /// The new config is in force (live changes made, restarts scheduled).
    Applied,
    /// Nothing changed (same content, or only formatting).
    Unchanged,
    /// The file is invalid; the running config stays.
    Rejected,
}

impl ReloadResult {
    /// Every result, in the order metrics list them.
    pub const ALL: [ReloadResult; 3] = [
        ReloadResult::Applied,
        ReloadResult::Unchanged,
        ReloadResult::Rejected,
    ];

    /// The name used in JSON, metrics and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ReloadResult::Applied => "applied",
            ReloadResult::Unchanged => "unchanged",
            ReloadResult::Rejected => "rejected",
        }
    }
}

impl std::fmt::Display for ReloadResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the UI was (re)started, as counted in `restarts_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartReason {
    /// A config change that needs a restart.
    Config,
    /// `sd-webui-supervisor restart` (or the D-Bus/HTTP equivalent).
    Requested,
    /// The UI exited on its own.
    Crash,
    /// The UI did not answer within `ui.startup_timeout`.
    StartupTimeout,
    /// A job stalled through its interrupt (`[health]`).
    Stall,
    /// A CUDA fault in the UI's output (`health.gpu_errors`).
    GpuError,
}

impl RestartReason {
    /// Every reason, in the order metrics list them.
    pub const ALL: [RestartReason; 6] = [
        RestartReason::Config,
        RestartReason::Requested,
        RestartReason::Crash,
        RestartReason::StartupTimeout,
        RestartReason::Stall,
        RestartReason::GpuError,
    ];

    /// The name used in JSON, metrics and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            RestartReason::Config => "config",
            RestartReason::Requested => "requested",
            RestartReason::Crash => "crash",
            RestartReason::StartupTimeout => "startup-timeout",
            RestartReason::Stall => "stall",
            RestartReason::GpuError => "gpu-error",
        }
    }
}

impl std::fmt::Display for RestartReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    /// Applied, unchanged or rejected.
    pub result: ReloadResult,
    /// Unix seconds.
    pub at_unix: u64,
    /// Validation errors (`FILE:LINE:COL: key: message`) when rejected.
    pub errors: Vec<String>,
    /// Changes applied live (`settings`, `models.loras`, …).
    pub applied_live: Vec<String>,
    /// Changes that need (and scheduled) a UI restart.
    pub needs_restart: Vec<String>,
    /// Live settings the UI did not know, so they were not sent.
    pub unknown_settings: Vec<String>,
    /// Changes that take effect when the daemon next starts (`control.*`).
    #[serde(default)]
    pub next_start: Vec<String>,
}

/// The health watch's findings (`[health]`, docs/design.md "Health").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// Unix seconds of the running job's last progress, once it has gone
    /// `health.stall_timeout` without; `None` while no job stalls.
    pub stalled_since_unix: Option<u64>,
    /// Whether the stalled job was interrupted (the UI is restarted if it
    /// still does not move `health.stall_grace` later).
    pub stall_interrupted: bool,
    /// Jobs interrupted for a stall since the supervisor started.
    pub stalled_jobs: u64,
    /// The CUDA fault that made the UI unhealthy (its line, redacted), until
    /// the restart it scheduled.
    pub gpu_error: Option<String>,
    /// CUDA faults seen in the UI's output since the supervisor started.
    pub gpu_faults: u64,
}

/// Idle GPU memory (`gpu.unload_after`): whether the models were unloaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VramStatus {
    /// The models were unloaded after `gpu.unload_after` of idleness and no
    /// job has run since (the next one loads them again).
    pub unloaded: bool,
    /// Unloads since the supervisor started.
    pub unloads: u64,
}

/// Everything the supervisor tells the world about itself. Built in one
/// place, `supervisor/snapshot.rs` (the default is only the channel's seed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Coarse state.
    pub state: Phase,
    /// The one-line status also sent to systemd as `STATUS=`.
    pub status_line: String,
    /// Why the state is what it is (crash reason, waiting reason), if anything.
    pub reason: Option<String>,
    /// `forge`, `a1111` or `comfyui`.
    pub flavor: String,
    /// Configured GPUs (`None` = inherited).
    pub gpus: Option<Vec<u32>>,
    /// PID of the UI process, while one runs.
    pub ui_pid: Option<u32>,
    /// Last probed queue; `None` while the UI is not ready.
    pub queue: Option<Queue>,
    /// A restart owed to the UI, if any.
    pub restart_pending: Option<PendingRestart>,
    /// The last reload's outcome.
    pub last_reload: Option<ReloadOutcome>,
    /// Hash of the config file text in force (changes on every applied reload).
    pub config_generation: String,
    /// Number of declared model files.
    pub models: usize,
    /// Layout conflicts (user files where managed links should go), one line each.
    pub layout_conflicts: Vec<String>,
    /// Seconds the supervisor has been running.
    pub uptime_seconds: u64,
    /// Unix seconds when the current UI became ready.
    pub ready_since_unix: Option<u64>,
    /// UI restarts by reason (`config`, `requested`, `crash`, `startup-timeout`).
    pub restarts: BTreeMap<RestartReason, u64>,
    /// UI crashes (unexpected exits and startup timeouts).
    pub crashes: u64,
    /// Reloads by result (`applied`, `unchanged`, `rejected`).
    pub reloads: BTreeMap<ReloadResult, u64>,
    /// Milliseconds from exec to ready for the last UI start.
    pub last_time_to_ready_ms: Option<u64>,
    /// Models downloaded at run time, each with its progress and state.
    #[serde(default)]
    pub downloads: Vec<crate::download::ModelProgress>,
    /// Declared model files whose target does not exist (not linked), one line each.
    #[serde(default)]
    pub missing_targets: Vec<String>,
    /// Refresh routes whose last call failed, with why (a soft condition: the UI
    /// rescans its folders at its next start).
    #[serde(default)]
    pub refresh_failed: Option<String>,
    /// Failed model-list refresh calls since the supervisor started.
    #[serde(default)]
    pub refresh_failures: u64,
    /// Draining for a stop (`wait-idle --drain`): no new work should come, so
    /// `/readyz` answers 503 until the supervisor exits.
    #[serde(default)]
    pub draining: bool,
    /// Declared images: declared, rendered, pending, failed (with the UI's error).
    pub images: crate::images::ImagesStatus,
    /// What `[health]` sees: stalls, CUDA faults.
    #[serde(default)]
    pub health: HealthStatus,
    /// Idle GPU memory: unloaded models (`gpu.unload_after`).
    #[serde(default)]
    pub vram: VramStatus,
    /// Seconds the oldest waiting job has waited (0 when none waits), timed
    /// from the first probe that listed it; `None` while the UI is not ready.
    #[serde(default)]
    pub queue_oldest_wait_seconds: Option<f64>,
    /// The front door's counters, when one runs (filled in by
    /// [`CoreHandle::snapshot`]: the door counts, the core does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<crate::front::FrontStatus>,
    /// `gpu.inhibit_sleep` of the config in force. The sleep inhibitor
    /// ([`crate::inhibit`]) reads it here, so a reload switches it at once
    /// without a channel of its own. Not in the status document, where
    /// `sleep_inhibited` says what the inhibitor does (a snapshot read back
    /// from JSON has the key's default).
    #[serde(skip, default = "inhibit_sleep_default")]
    pub inhibit_sleep: bool,
    /// Whether a logind sleep inhibitor lock is held now: `Some(true)` while
    /// jobs run, `Some(false)` while none does, `None` when the supervisor takes
    /// none (`gpu.inhibit_sleep = false`, no logind or no system bus). Filled in
    /// by [`CoreHandle::snapshot`]: the inhibitor knows, the core does not.
    #[serde(default)]
    pub sleep_inhibited: Option<bool>,
    /// The Pod's deletion cost (`kubernetes.pod_deletion_cost`): the value the
    /// API server last accepted and the last error; `None` when it is not kept
    /// (switched off, or not in a cluster). Filled in by
    /// [`CoreHandle::snapshot`]: the task that patches knows, the core does not.
    #[serde(default)]
    pub pod_deletion_cost: Option<crate::kube::DeletionCostStatus>,
    /// The journal of ComfyUI prompts: paused, replaying, kept, quarantined.
    #[serde(default)]
    pub queue_keep: crate::journal::KeepStatus,
    /// With `[instances]`: each instance's UI, in the config's order (empty
    /// without). The front door routes by these; the top-level fields then
    /// sum them up (docs/instances.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceSnapshot>,
}

/// One instance's UI, as its core last published it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSnapshot {
    /// `[instances.<name>]`.
    pub name: String,
    /// Its private loopback port.
    pub port: u16,
    /// Its GPUs (`None` = inherited).
    pub gpus: Option<Vec<u32>>,
    /// Coarse state.
    pub state: Phase,
    /// Its one-line status.
    pub status_line: String,
    /// Why the state is what it is, if anything.
    pub reason: Option<String>,
    /// PID of its UI process, while one runs.
    pub ui_pid: Option<u32>,
    /// Last probed queue; `None` while it is not ready.
    pub queue: Option<Queue>,
    /// A restart owed to it, if any.
    pub restart_pending: Option<PendingRestart>,
    /// Its turn of a rolling restart: the front door sends it no new work.
    pub draining: bool,
    /// Its UI's restarts, all reasons.
    pub restarts: u64,
    /// Its UI's crashes.
    pub crashes: u64,
    /// Milliseconds from exec to ready for its last start.
    pub last_time_to_ready_ms: Option<u64>,
}

/// `gpu.inhibit_sleep` when the config does not say.
fn inhibit_sleep_default() -> bool {
    crate::config::GpuConfig::default().inhibit_sleep
}

impl Snapshot {
    /// Whether a scheduler may route work here (`/readyz`): the UI answers and
    /// the supervisor is not draining.
    pub fn takes_work(&self) -> bool {
        self.state == Phase::Ready && !self.draining
    }

    /// Whether a drain is done: draining, and no job runs or waits (a UI that is
    /// not ready has none; a ready one must have been probed idle).
    pub fn drained(&self) -> bool {
        self.draining && (self.state != Phase::Ready || self.queue.is_some_and(|q| q.is_idle()))
    }
}

/// When a requested restart should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartWhen {
    /// Once the queue is idle (merges with any pending restart).
    Idle,
    /// At once, interrupting running jobs.
    Now,
}

/// A request to the core. Replies come back on the oneshot.
#[derive(Debug)]
pub enum CoreCommand {
    /// Re-read the config file and apply it (same as SIGHUP).
    Reload {
        /// The file's bytes when the caller already read them (the watcher), so
        /// one change is read once; `None`: the core reads the file.
        text: Option<Vec<u8>>,
        /// Their parse when the caller made one (the watcher checks that a write
        /// is complete by parsing it), so one change is parsed once.
        parsed: Option<Box<crate::config::Config>>,
        /// Receives the outcome once validation, the layout and scheduling are done.
        reply: oneshot::Sender<ReloadOutcome>,
    },
    /// Restart the UI.
    Restart {
        /// When.
        when: RestartWhen,
        /// Receives the status line once the restart is scheduled (or started).
        reply: oneshot::Sender<String>,
    },
    /// Start failed downloads again (`retry-downloads`).
    RetryDownloads {
        /// Receives how many were restarted.
        reply: oneshot::Sender<usize>,
    },
    /// Stop taking new work for good (the first half of a stop): `draining` in
    /// every snapshot from now on.
    Drain {
        /// Receives `()` once the snapshot says so.
        reply: oneshot::Sender<()>,
    },
    /// Answer at once: proves the loop still runs (`/healthz`).
    Ping {
        /// Receives `()`.
        reply: oneshot::Sender<()>,
    },
    /// Render declared images now (`generate`), once the UI is ready and idle.
    Generate {
        /// Image names; empty: all.
        names: Vec<String>,
        /// Render those already on disk too.
        force: bool,
        /// Receives the PNG paths (or the failure) once all are done.
        reply: oneshot::Sender<crate::images::GenerateResult>,
    },
    /// The front door saw the UI accept a prompt: journal it.
    QueueAccepted(Box<crate::journal::Kept>),
    /// `queue pause|resume|list|release`.
    Queue {
        /// What to do.
        op: QueueOp,
        /// Receives the journal's listing afterwards, or why not.
        reply: oneshot::Sender<Result<QueueList, QueueRefusal>>,
    },
}

/// A `queue` command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum QueueOp {
    /// Hold new submissions at the front door (running work finishes).
    Pause,
    /// Let them through again.
    Resume,
    /// Only list.
    List,
    /// Send a quarantined prompt again.
    Release {
        /// Which.
        prompt_id: String,
    },
}

/// Where a kept prompt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeptState {
    /// Accepted, waiting in the UI's queue (or to be sent to a new UI).
    Pending,
    /// The UI runs it now.
    Running,
    /// Held back after crashing the UI; `queue release` sends it again.
    Quarantined,
}

/// One kept prompt in a listing (no body: it is the user's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedPrompt {
    /// Its id.
    pub prompt_id: String,
    /// Where it stands.
    pub state: KeptState,
    /// The submitter's `client_id`.
    pub client_id: Option<String>,
    /// The UI's queue number when it was accepted.
    pub number: Option<f64>,
    /// Unix seconds when it was accepted.
    pub accepted_unix: u64,
    /// Crashes of the UI while it ran.
    pub strikes: u32,
    /// Times it was sent to a new UI.
    pub resubmits: u32,
}

/// The answer of every `queue` command: the journal now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueList {
    /// Whether the journal is kept (ComfyUI behind the front door).
    pub enabled: bool,
    /// Whether new submissions are held.
    pub paused: bool,
    /// Whether the kept prompts are being sent to a new UI.
    pub replaying: bool,
    /// Unfinished prompts, in the order they were accepted.
    pub prompts: Vec<ListedPrompt>,
    /// Finished prompts, most recent last.
    pub history: Vec<crate::journal::Done>,
}

/// Why a `queue` command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "refused", rename_all = "kebab-case")]
pub enum QueueRefusal {
    /// No journal: not ComfyUI, or no front door.
    #[error("no queue journal is kept (only ComfyUI behind the front door has one)")]
    NotKept,
    /// The journal has no such prompt.
    #[error("no kept prompt {prompt_id}")]
    Unknown {
        /// The id asked for.
        prompt_id: String,
    },
    /// The prompt is not quarantined.
    #[error("prompt {prompt_id} is not quarantined")]
    NotQuarantined {
        /// The id asked for.
        prompt_id: String,
    },
}

/// Why a command could not be delivered.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    /// The core has stopped (the daemon is shutting down).
    #[error("the supervisor core has stopped")]
    CoreStopped,
    /// `wait_idle` ran out of time.
    #[error("the UI did not become idle within {0:?}")]
    Timeout(Duration),
}

/// Cloneable access to the core for adapters (HTTP, D-Bus, signals, watcher).
#[derive(Debug, Clone)]
pub struct CoreHandle {
    commands: mpsc::Sender<CoreCommand>,
    snapshots: watch::Receiver<Snapshot>,
    /// The front door's counters, shared by every clone once set.
    front: Arc<OnceLock<Arc<crate::front::Stats>>>,
    /// The sleep inhibitor's state, shared by every clone once set.
    inhibitor: Arc<OnceLock<watch::Receiver<Option<bool>>>>,
    /// The deletion-cost task's state, shared by every clone once set.
    deletion_cost: Arc<OnceLock<watch::Receiver<Option<crate::kube::DeletionCostStatus>>>>,
}

impl CoreHandle {
    /// Wraps the core's channels.
    pub fn new(commands: mpsc::Sender<CoreCommand>, snapshots: watch::Receiver<Snapshot>) -> Self {
        CoreHandle {
            commands,
            snapshots,
            front: Arc::new(OnceLock::new()),
            inhibitor: Arc::new(OnceLock::new()),
            deletion_cost: Arc::new(OnceLock::new()),
        }
    }

    /// Makes every snapshot read through this handle (and its clones) carry the
    /// front door's counters. Once; a second call is ignored.
    pub fn attach_front(&self, stats: Arc<crate::front::Stats>) {
        let _ = self.front.set(stats);
    }

    /// Makes every snapshot read through this handle (and its clones) say
    /// whether the sleep inhibitor holds its lock (`sleep_inhibited`). Once; a
    /// second call is ignored.
    pub fn attach_inhibitor(&self, held: watch::Receiver<Option<bool>>) {
        let _ = self.inhibitor.set(held);
    }

    /// Makes every snapshot read through this handle (and its clones) say what
    /// the Pod's deletion cost is (`pod_deletion_cost`). Once; a second call is
    /// ignored.
    pub fn attach_deletion_cost(
        &self,
        status: watch::Receiver<Option<crate::kube::DeletionCostStatus>>,
    ) {
        let _ = self.deletion_cost.set(status);
    }

    /// The latest snapshot, with the front door's counters, the sleep
    /// inhibitor's state and the Pod's deletion cost.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = self.snapshots.borrow().clone();
        s.front = self.front.get().map(|f| f.status());
        if let Some(held) = self.inhibitor.get() {
            s.sleep_inhibited = *held.borrow();
        }
        if let Some(status) = self.deletion_cost.get() {
            s.pod_deletion_cost = status.borrow().clone();
        }
        s
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshots.clone()
    }

    /// Asks the core to reload its config file and waits for the outcome.
    pub async fn reload(&self) -> Result<ReloadOutcome, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Reload {
            text: None,
            parsed: None,
            reply,
        })
        .await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Like [`CoreHandle::reload`], with the config file's bytes already read
    /// and, when the caller parsed them, their parse (taken as is: it must come
    /// from `Config::from_bytes` of the same bytes and path).
    pub async fn reload_bytes(
        &self,
        text: Vec<u8>,
        parsed: Option<Box<crate::config::Config>>,
    ) -> Result<ReloadOutcome, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Reload {
            text: Some(text),
            parsed,
            reply,
        })
        .await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Asks the core to restart the UI; returns the status line after scheduling.
    pub async fn restart(&self, when: RestartWhen) -> Result<String, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Restart { when, reply }).await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Starts failed downloads again; returns how many.
    pub async fn retry_downloads(&self) -> Result<usize, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::RetryDownloads { reply }).await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Asks the core to render declared images and waits until they are done.
    pub async fn generate(
        &self,
        names: Vec<String>,
        force: bool,
    ) -> Result<crate::images::GenerateResult, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Generate {
            names,
            force,
            reply,
        })
        .await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Hands a prompt the UI accepted to the journal (the front door's side).
    pub async fn queue_accepted(&self, kept: crate::journal::Kept) -> Result<(), HandleError> {
        self.send(CoreCommand::QueueAccepted(Box::new(kept))).await
    }

    /// A `queue` command; the journal's listing afterwards.
    pub async fn queue(&self, op: QueueOp) -> Result<Result<QueueList, QueueRefusal>, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Queue { op, reply }).await?;
        rx.await.map_err(|_| HandleError::CoreStopped)
    }

    /// Waits until the UI is ready with an empty queue and no restart pending
    /// that would interrupt, or until `timeout`.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<Snapshot, HandleError> {
        let mut rx = self.snapshots.clone();
        let idle = |s: &Snapshot| {
            s.state == Phase::Ready
                && s.queue.is_some_and(|q| q.is_idle())
                && s.restart_pending
                    .as_ref()
                    .is_none_or(|p| p.policy == RestartPolicy::Manual)
        };
        let wait = rx.wait_for(idle);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(HandleError::CoreStopped),
            Err(_) => Err(HandleError::Timeout(timeout)),
        }
    }

    /// Whether the core's loop answers a [`CoreCommand::Ping`] within `within`.
    pub async fn ping(&self, within: Duration) -> Result<(), HandleError> {
        let (reply, rx) = oneshot::channel();
        let round_trip = async {
            self.send(CoreCommand::Ping { reply }).await?;
            rx.await.map_err(|_| HandleError::CoreStopped)
        };
        tokio::time::timeout(within, round_trip)
            .await
            .map_err(|_| HandleError::Timeout(within))?
    }

    /// Marks the supervisor as draining, then waits until no job runs or waits,
    /// or until `timeout` (draining stays either way).
    pub async fn drain(&self, timeout: Duration) -> Result<Snapshot, HandleError> {
        let (reply, rx) = oneshot::channel();
        self.send(CoreCommand::Drain { reply }).await?;
        rx.await.map_err(|_| HandleError::CoreStopped)?;
        let mut snapshots = self.snapshots.clone();
        match tokio::time::timeout(timeout, snapshots.wait_for(Snapshot::drained)).await {
            Ok(Ok(s)) => Ok(s.clone()),
            Ok(Err(_)) => Err(HandleError::CoreStopped),
            Err(_) => Err(HandleError::Timeout(timeout)),
        }
    }

    async fn send(&self, cmd: CoreCommand) -> Result<(), HandleError> {
        self.commands
            .send(cmd)
            .await
            .map_err(|_| HandleError::CoreStopped)
    }
}
