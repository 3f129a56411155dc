//! The core's state, by concern. [`Supervisor`] holds one part per concern,
//! and each part is changed by the file that owns the concern: the UI slot
//! (everything that exists once per running UI: its process, probes, crash
//! record, health and idle state) by `start.rs`, `probe.rs`, `stop.rs`,
//! `watchdog.rs` and `unload.rs`; reloads by `reconfigure.rs`; the self-upgrade
//! by `handoff.rs`; downloads by `downloads.rs`; the data dir's layout by
//! `start.rs` and `work.rs`'s lane. The loop (`mod.rs`) only routes.
//!
//! The slot is the unit a supervisor with one UI per GPU would hold several of.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::crash::CrashRecord;
use super::pending::Pending;
use super::timers::Timers;
use super::work::{Event, LayoutLane, Tasks};
use super::{
    handoff, images, queue_age, queue_keep, reconfigure, refresh, transient, unload, watchdog,
};
use crate::config::Config;
use crate::notify::Notifier;
use crate::supervisor::protocol::{
    CoreCommand, CoreHandle, Queue, ReloadOutcome, ReloadResult, RestartReason, Snapshot,
};
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::gpu::GpuEnv;
use crate::ui::launch::Prepared;
use crate::ui::process::UiProcess;

/// Where the UI is in its life.
#[derive(Debug)]
pub(super) enum Ui {
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
pub(super) enum LayoutWaiter {
    /// Start number `n` launches once the data dir is laid out.
    Start(u64),
    /// A reload answers once its config is laid out, then applies the live part.
    Reload(reconfigure::Applying),
    /// Finished downloads get linked; the UI then rescans their kinds.
    Downloads,
}

/// The last queue reading and whether a probe is out.
#[derive(Debug, Default)]
pub(super) struct Probing {
    pub(super) queue: Option<Queue>,
    /// When the probe behind `queue` was sent.
    pub(super) sent: Option<Instant>,
    pub(super) in_flight: bool,
}

/// Counters published in snapshots and metrics.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) restarts: BTreeMap<RestartReason, u64>,
    pub(super) crashes: u64,
    pub(super) reloads: BTreeMap<ReloadResult, u64>,
}

/// The core's state. Built by [`Supervisor::new`], consumed by [`Supervisor::run`].
pub struct Supervisor {
    /// The config in force.
    pub(super) config: Config,
    /// Where it came from: file, text, generation.
    pub(super) source: Source,
    pub(super) gpu: GpuEnv,
    pub(super) notifier: Notifier,
    pub(super) snapshots: watch::Sender<Snapshot>,
    /// Events from callbacks outside the task set (ComfyUI's websocket, downloads).
    pub(super) signals: mpsc::UnboundedSender<Event>,
    pub(super) tasks: Tasks,
    pub(super) timers: Timers,
    /// The running UI and what belongs to it.
    pub(super) slot: Slot,
    /// The deferred restart, if one is owed.
    pub(super) pending: Option<Pending>,
    pub(super) counters: Counters,
    pub(super) reloads: Reloads,
    pub(super) layout: Layout,
    pub(super) upgrade: Upgrade,
    pub(super) front: FrontLink,
    pub(super) downloads: super::downloads::Downloads,
    /// Declared images: their state and the render in progress.
    pub(super) images: images::Images,
    /// The journal of ComfyUI prompts (`queue_keep/`).
    pub(super) keep: queue_keep::QueueKeep,
    pub(super) life: Life,
    /// With `[instances]`: which instance this core runs, and the rolling rule.
    pub(super) member: Option<super::instances::Member>,
}

/// The config file behind the config in force.
pub(super) struct Source {
    pub(super) path: PathBuf,
    /// [`super::config_hash`] of `text`: the generation.
    pub(super) hash: String,
    /// The text of the config in force, handed to a new binary on a self-upgrade.
    pub(super) text: Vec<u8>,
}

/// Everything that exists once per running UI.
#[derive(Debug)]
pub(super) struct Slot {
    pub(super) ui: Ui,
    /// Number of the latest start; events of older ones are ignored.
    pub(super) start_seq: u64,
    /// Restart reason to count when the next start happens.
    pub(super) start_reason: Option<RestartReason>,
    pub(super) probing: Probing,
    pub(super) crashes: CrashRecord,
    /// Consecutive transient failures before a launch (full disk, no fds, …).
    pub(super) transient: transient::Retry,
    pub(super) ready_since_unix: Option<u64>,
    pub(super) last_time_to_ready_ms: Option<u64>,
    /// Refresh routes of the running UI and failed refreshes.
    pub(super) refresh: refresh::RefreshState,
    /// `[health]`: stalls and CUDA faults of the running UI.
    pub(super) watchdog: watchdog::Watchdog,
    /// `gpu.unload_after`: the models unloaded from an idle UI.
    pub(super) idle_unload: unload::IdleUnload,
    /// How long the oldest waiting job has waited.
    pub(super) queue_age: queue_age::QueueAge,
}

/// Reloads: the last outcome and those still reading a file or checking a binary.
#[derive(Debug, Default)]
pub(super) struct Reloads {
    pub(super) last: Option<ReloadOutcome>,
    /// Why the last reload was rejected, while the config in force is older.
    pub(super) rejected: Option<String>,
    /// A handoff waits for their answers, so no requester is left without one.
    pub(super) in_flight: u32,
}

/// The data directory's layout: one at a time, and what the last one found.
#[derive(Debug, Default)]
pub(super) struct Layout {
    pub(super) lane: LayoutLane<LayoutWaiter>,
    pub(super) conflicts: Vec<String>,
    /// Declared model targets that do not exist (one line each).
    pub(super) missing_targets: Vec<String>,
    /// Whether the last failure may pass by itself (then retried).
    pub(super) transient: bool,
}

/// The self-upgrade: planned by a reload, or taken over from the old binary.
#[derive(Debug, Default)]
pub(super) struct Upgrade {
    /// A reload decided to hand over to a new binary.
    pub(super) planned: Option<handoff::Planned>,
    /// State handed over by the previous binary, taken over when `run` starts.
    pub(super) adopting: Option<handoff::Adopting>,
}

/// What the core reads of the front door, when one runs.
#[derive(Default)]
pub(super) struct FrontLink {
    /// Requests in flight: a self-upgrade waits for none (see `handoff.rs`);
    /// taken by the loop, which reads it.
    pub(super) busy: Option<watch::Receiver<usize>>,
    /// The last count read from `busy`.
    pub(super) in_flight: usize,
    /// The answers the UI is sending: a planned stop lets them finish first
    /// (see `stop.rs`).
    pub(super) answers: Option<crate::front::Answers>,
}

/// The supervisor's own life.
#[derive(Debug)]
pub(super) struct Life {
    pub(super) started: Instant,
    pub(super) sent_ready: bool,
    /// Draining for a stop: set once, never cleared.
    pub(super) draining: bool,
    /// The UI is stopped for a service restart: the loop ends.
    pub(super) exit_service: bool,
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
        super::CoreEvents,
    ) {
        let (signals, events_rx) = mpsc::unbounded_channel();
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let now = Instant::now();
        let timers = Timers::new(now, notifier.watchdog_interval());
        let (snapshots, snap_rx) = watch::channel(Snapshot::default());
        let images = images::Images::new(&config);
        let keep = queue_keep::QueueKeep::new(&config);
        let sup = Supervisor {
            source: Source {
                path,
                hash: super::config_hash(config_text),
                text: config_text.to_vec(),
            },
            config,
            gpu,
            notifier,
            snapshots,
            signals,
            tasks: Tasks::default(),
            timers,
            slot: Slot {
                // Until `run` starts it (start 0 is never launched).
                ui: Ui::Preparing {
                    start: 0,
                    prepared: None,
                    waiting: None,
                },
                start_seq: 0,
                start_reason: None,
                probing: Probing::default(),
                crashes: CrashRecord::default(),
                transient: transient::Retry::default(),
                ready_since_unix: None,
                last_time_to_ready_ms: None,
                refresh: refresh::RefreshState::default(),
                watchdog: watchdog::Watchdog::default(),
                idle_unload: unload::IdleUnload::default(),
                queue_age: queue_age::QueueAge::default(),
            },
            pending: None,
            counters: Counters::default(),
            reloads: Reloads::default(),
            layout: Layout::default(),
            upgrade: Upgrade::default(),
            front: FrontLink::default(),
            downloads: Default::default(),
            images,
            keep,
            life: Life {
                started: now,
                sent_ready: false,
                draining: false,
                exit_service: false,
            },
            member: None,
        };
        // The first snapshot is built like every later one.
        let first = sup.snapshot();
        sup.snapshots.send_replace(first);
        (
            sup,
            CoreHandle::new(cmd_tx, snap_rx),
            cmd_rx,
            super::CoreEvents(events_rx),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The channel's first value, read before the loop runs, is a real
    /// snapshot of the config (it once was a hand-written placeholder that
    /// said 0 models and no gpus whatever the config declared).
    #[tokio::test]
    async fn the_first_snapshot_is_built_from_the_config() {
        let text = br#"
[ui]
flavor = "comfyui"
command = ["/bin/true"]
gpus = [0]
[data]
dir = "/var/lib/sd-test"
[models.checkpoints]
"a.safetensors" = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.safetensors"
"b.safetensors" = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b.safetensors"
"#;
        let path = PathBuf::from("/etc/sd-test.toml");
        let config = Config::from_bytes(&path, text).expect("valid config");
        let gpu = GpuEnv {
            dev_dir: PathBuf::from("/nonexistent"),
            nvidia_smi: None,
            recheck: std::time::Duration::from_secs(30),
        };
        let (_sup, handle, _cmds, _events) =
            Supervisor::new(path, config, text, gpu, Notifier::from_env());
        let first = handle.snapshot();
        assert_eq!(first.models, 2);
        assert_eq!(first.gpus.as_deref(), Some(&[0u32][..]));
        assert_eq!(first.flavor, "comfyui");
        assert_eq!(first.state, crate::supervisor::protocol::Phase::Starting);
        assert!(
            first.status_line.contains("preparing comfyui"),
            "{}",
            first.status_line
        );
        assert_eq!(first.config_generation, super::super::config_hash(text));
    }
}
