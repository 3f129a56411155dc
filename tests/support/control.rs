//! Shared helpers of the control-plane tests: a fake core that answers commands with
//! canned outcomes and publishes snapshots the test controls, and sample snapshots.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use sd_webui_supervisor::images::{FailedImage, GenerateError, GenerateResult, ImagesStatus};
use sd_webui_supervisor::kube::DeletionCostStatus;
use sd_webui_supervisor::supervisor::protocol::{
    CoreCommand, CoreHandle, PendingRestart, Phase, Queue, QueueList, QueueOp, ReloadOutcome,
    ReloadResult, RestartPolicy, RestartReason, RestartWhen, Snapshot,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// A core stand-in: answers `Reload` with [`FakeCore::set_reload`]'s outcome and
/// `Restart` with a status line, and records every command it got.
pub struct FakeCore {
    pub handle: CoreHandle,
    snapshots: watch::Sender<Snapshot>,
    reload: Arc<Mutex<ReloadOutcome>>,
    seen: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl FakeCore {
    /// A fake core publishing `initial`.
    pub fn new(initial: Snapshot) -> FakeCore {
        let (commands, mut rx) = mpsc::channel::<CoreCommand>(8);
        let (snapshots, snapshot_rx) = watch::channel(initial);
        let reload = Arc::new(Mutex::new(outcome("applied")));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (reload2, seen2) = (reload.clone(), seen.clone());
        let task = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    CoreCommand::Reload { reply, .. } => {
                        seen2.lock().unwrap().push("reload".into());
                        let _ = reply.send(reload2.lock().unwrap().clone());
                    }
                    CoreCommand::Restart { when, reply } => {
                        let when = match when {
                            RestartWhen::Idle => "idle",
                            RestartWhen::Now => "now",
                        };
                        seen2.lock().unwrap().push(format!("restart {when}"));
                        let _ = reply.send(format!("ready; idle; restart scheduled ({when})"));
                    }
                    CoreCommand::RetryDownloads { reply } => {
                        seen2.lock().unwrap().push("retry-downloads".into());
                        let _ = reply.send(1);
                    }
                    CoreCommand::Drain { reply } => {
                        seen2.lock().unwrap().push("drain".into());
                        let _ = reply.send(());
                    }
                    CoreCommand::Ping { reply } => {
                        let _ = reply.send(());
                    }
                    CoreCommand::Generate {
                        names,
                        force,
                        reply,
                    } => {
                        seen2.lock().unwrap().push(format!(
                            "generate {}{}",
                            names.join(","),
                            if force { " --force" } else { "" }
                        ));
                        let _ = reply.send(generated(&names));
                    }
                    CoreCommand::QueueAccepted(kept) => {
                        seen2
                            .lock()
                            .unwrap()
                            .push(format!("accepted {}", kept.prompt_id));
                    }
                    CoreCommand::Queue { op, reply } => {
                        seen2.lock().unwrap().push(format!("queue {op:?}"));
                        let _ = reply.send(Ok(QueueList {
                            enabled: true,
                            paused: op == QueueOp::Pause,
                            replaying: false,
                            prompts: vec![],
                            history: vec![],
                        }));
                    }
                }
            }
        });
        FakeCore {
            handle: CoreHandle::new(commands, snapshot_rx),
            snapshots,
            reload,
            seen,
            task,
        }
    }

    /// Sets what the next reloads answer.
    pub fn set_reload(&self, outcome: ReloadOutcome) {
        *self.reload.lock().unwrap() = outcome;
    }

    /// Publishes a changed snapshot.
    pub fn publish(&self, change: impl FnOnce(&mut Snapshot)) {
        self.snapshots.send_modify(change);
    }

    /// The commands received so far (`reload`, `restart idle`, `restart now`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops answering and publishing, as a core that shut down.
    pub fn stop(self) -> CoreHandle {
        self.task.abort();
        self.handle
    }
}

/// What the fake core answers to `generate`: `cat` renders, `dog` fails with the
/// UI's error, any other name is unknown.
pub fn generated(names: &[String]) -> GenerateResult {
    let dir = "/var/lib/sd-webui-forge/outputs/declared";
    if let Some(other) = names.iter().find(|n| *n != "cat" && *n != "dog") {
        return Err(GenerateError::Unknown(format!(
            "no declared image named {other} (declared: cat, dog)"
        )));
    }
    if names.iter().any(|n| n == "dog") {
        return Err(GenerateError::Failed(
            "dog: /sdapi/v1/txt2img: HTTP 500: RuntimeError: CUDA out of memory".into(),
        ));
    }
    Ok(names
        .iter()
        .map(|n| format!("{dir}/{n}.png").into())
        .collect())
}

/// A reload outcome with the given result and plausible lists.
pub fn outcome(result: &str) -> ReloadOutcome {
    let rejected = result == "rejected";
    ReloadOutcome {
        result: serde_json::from_value::<ReloadResult>(result.into())
            .expect("a reload result name"),
        at_unix: 1_767_225_600,
        errors: if rejected {
            vec![
                "/etc/sd-webui-forge/config.toml:3:9: ui.port: expected an integer".into(),
                "/etc/sd-webui-forge/config.toml:7:1: restart.policy: unknown policy \"never\""
                    .into(),
            ]
        } else {
            vec![]
        },
        applied_live: if result == "applied" {
            vec!["settings".into()]
        } else {
            vec![]
        },
        needs_restart: vec![],
        unknown_settings: vec![],
        next_start: vec![],
    }
}

/// A ready, idle Forge on GPU 0.
pub fn ready_idle() -> Snapshot {
    Snapshot {
        state: Phase::Ready,
        status_line: "ready; idle; forge on GPU 0; 12 models".into(),
        reason: None,
        flavor: "forge".into(),
        gpus: Some(vec![0]),
        ui_pid: Some(4242),
        queue: Some(Queue {
            running: 0,
            pending: 0,
        }),
        restart_pending: None,
        last_reload: None,
        config_generation: "9f2c4e1a".into(),
        models: 12,
        layout_conflicts: vec![],
        uptime_seconds: 3723,
        ready_since_unix: Some(1_767_225_000),
        restarts: BTreeMap::new(),
        crashes: 0,
        reloads: BTreeMap::new(),
        last_time_to_ready_ms: Some(12_345),
        downloads: vec![],
        missing_targets: vec![],
        refresh_failed: None,
        refresh_failures: 0,
        draining: false,
        images: ImagesStatus::default(),
        health: Default::default(),
        vram: Default::default(),
        queue_oldest_wait_seconds: None,
        front: None,
        inhibit_sleep: true,
        sleep_inhibited: Some(false),
        pod_deletion_cost: None,
        queue_keep: Default::default(),
        instances: Vec::new(),
    }
}

/// Busy with a restart pending on two config changes, with every optional field set.
pub fn busy_pending() -> Snapshot {
    Snapshot {
        state: Phase::Ready,
        status_line:
            "ready; busy: 1 running, 3 queued; restart pending (ui.extra_args, extensions), waits for idle"
                .into(),
        queue: Some(Queue { running: 1, pending: 3 }),
        restart_pending: Some(PendingRestart {
            reasons: vec!["ui.extra_args".into(), "extensions".into()],
            policy: RestartPolicy::WhenIdle,
            since_unix: 1_767_225_600,
            deadline_unix: Some(1_767_247_200),
        }),
        last_reload: Some(ReloadOutcome {
            needs_restart: vec!["ui.extra_args".into(), "extensions".into()],
            unknown_settings: vec!["made_up_key".into()],
            next_start: vec![],
            ..outcome("applied")
        }),
        layout_conflicts: vec![
            "models/Lora/add-detail.safetensors: a user file is where the managed link goes".into(),
        ],
        restarts: BTreeMap::from([(RestartReason::Config, 2), (RestartReason::Crash, 1)]),
        crashes: 1,
        reloads: BTreeMap::from([(ReloadResult::Applied, 3), (ReloadResult::Rejected, 1)]),
        sleep_inhibited: Some(true),
        pod_deletion_cost: Some(DeletionCostStatus {
            pod: "gpu-pool/sd-webui-7d9f-abcde".into(),
            value: Some(3),
            error: Some("PATCH https://10.96.0.1:443/api/v1/namespaces/gpu-pool/pods/sd-webui-7d9f-abcde: 500 Internal Server Error".into()),
            failures: 2,
        }),
        images: ImagesStatus {
            declared: 3,
            rendered: 1,
            pending: 1,
            rendering: Some("cat".into()),
            failed: vec![FailedImage {
                name: "dog".into(),
                error: "/sdapi/v1/txt2img: HTTP 500: RuntimeError: CUDA out of memory".into(),
            }],
        },
        missing_targets: vec![
            "models/Stable-diffusion/gone.safetensors: target /nix/store/x-gone.safetensors of models.checkpoints.\"gone.safetensors\" does not exist; not linked".into(),
        ],
        refresh_failed: Some("/sdapi/v1/refresh-embeddings: HTTP 500: AttributeError".into()),
        refresh_failures: 2,
        ..ready_idle()
    }
}

/// A UI that is not up: no pid, no queue, no GPUs configured.
pub fn starting() -> Snapshot {
    Snapshot {
        state: Phase::Starting,
        status_line: "starting: waiting for the UI to answer".into(),
        reason: Some("model loading".into()),
        gpus: None,
        ui_pid: None,
        queue: None,
        ready_since_unix: None,
        last_time_to_ready_ms: None,
        draining: false,
        ..ready_idle()
    }
}

/// Parses a Prometheus text exposition (panics, showing it, when it is not one).
pub fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .unwrap_or_else(|e| panic!("not a Prometheus exposition ({e}):\n{text}"))
}

/// `docs/status.schema.json`, parsed.
pub fn status_schema() -> serde_json::Value {
    serde_json::from_str(include_str!("../../docs/status.schema.json"))
        .expect("docs/status.schema.json is JSON")
}

/// Asserts that a `status --json` document fits `docs/status.schema.json`.
pub fn assert_fits_schema(doc: &serde_json::Value) {
    let problems = super::schema::violations(&status_schema(), doc);
    assert!(problems.is_empty(), "{problems:#?}\n{doc:#}");
}

/// Whether a Prometheus exposition has a sample of `metric`.
pub fn has_metric(text: &str, metric: &str) -> bool {
    scrape(text).samples.iter().any(|s| s.metric == metric)
}

/// `status --json` of the daemon at `socket`, from a client process of the
/// binary under test (also for a daemon in the systemd sandbox: its socket is
/// under the shared target dir).
pub fn status_at(socket: &std::path::Path) -> serde_json::Value {
    let out = std::process::Command::new(super::env::BIN)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run `status --json`");
    assert!(out.status.success(), "status --json: {out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}
