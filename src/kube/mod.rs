//! The Pod's deletion cost (`kubernetes.pod_deletion_cost`, docs/containers.md#kubernetes):
//! in a cluster, the supervisor keeps its own Pod's
//! `controller.kubernetes.io/pod-deletion-cost` annotation at the number of jobs
//! running and waiting in the UI, so that a scale-in (KEDA or an HPA lowering the
//! Deployment's replicas) removes idle pods before busy ones.
//!
//! Like the sleep inhibitor it is a task beside the core that only reads the
//! core's snapshots: the core never waits for it, nor for the API server. What it
//! wants for a snapshot is the pure [`cost_of`]; the task patches (`api.rs`) when
//! that changes, at most once per [`MIN_INTERVAL`] and always with the latest
//! value, retries a failure with a backoff up to [`MAX_BACKOFF`], and publishes
//! what the API server last accepted, which [`CoreHandle::snapshot`] adds to the
//! status as `pod_deletion_cost`. It holds one value, never a queue of them, so a
//! failing API server costs no memory.
//!
//! Not in a cluster (no `KUBERNETES_SERVICE_HOST`, no service account token) it
//! says so once as a warning and does nothing. A failed patch is a warning once
//! per distinct error; the token is never logged.

mod api;
pub mod patch;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use api::{ANNOTATION, API_ENV, Api, PatchError, SERVICE_ACCOUNT_DIR, SERVICE_ACCOUNT_ENV};

use crate::supervisor::protocol::{CoreHandle, Phase, Snapshot};
use crate::warn_once::WarnOnce;

/// The shortest time between two patches: a queue that changes every few
/// milliseconds costs the API server one request a second.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest wait before a failed patch is tried again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the status says about the deletion cost (`pod_deletion_cost`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletionCostStatus {
    /// The Pod patched, `namespace/name`.
    pub pod: String,
    /// The cost the API server last accepted; `None` before the first patch.
    pub value: Option<i32>,
    /// Why the last patch failed, until one succeeds again.
    pub error: Option<String>,
    /// Failed patches since the supervisor started.
    pub failures: u64,
}

/// The cost for `s`: the jobs running and waiting while the UI is ready, 0
/// while it is not (it runs none that would be lost), `None` when a ready UI's
/// queue is not known (a failed probe): the last value stands, as one lost
/// probe says nothing about the jobs.
pub fn cost_of(s: &Snapshot) -> Option<i32> {
    match (s.state, s.queue) {
        (Phase::Ready, Some(q)) => {
            let jobs = q.running.saturating_add(q.pending);
            Some(i32::try_from(jobs).unwrap_or(i32::MAX))
        }
        (Phase::Ready, None) => None,
        _ => Some(0),
    }
}

/// The wait before the next try after `failures` failures in a row: 1 s
/// doubling, at most [`MAX_BACKOFF`].
pub fn backoff(failures: u32) -> Duration {
    let doubled = MIN_INTERVAL.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(MAX_BACKOFF)
}

/// The running deletion-cost task.
pub struct DeletionCost {
    task: JoinHandle<()>,
    status: watch::Receiver<Option<DeletionCostStatus>>,
}

impl DeletionCost {
    /// Starts the task on `core`'s snapshots when `enabled` and this is a Pod
    /// that can patch itself; otherwise `None` (enabled outside a cluster: one
    /// warning saying why).
    pub fn start(core: &CoreHandle, enabled: bool) -> Option<DeletionCost> {
        if !enabled {
            return None;
        }
        let api = match Api::discover(|k| std::env::var(k).ok()) {
            Ok(api) => api,
            Err(why) => {
                tracing::warn!(
                    "kubernetes.pod_deletion_cost is on, but the Pod's deletion cost is not kept: {why}"
                );
                return None;
            }
        };
        tracing::info!(pod = %api.pod(), "keeping the Pod's {ANNOTATION} at the queue's length");
        let initial = DeletionCostStatus {
            pod: api.pod(),
            ..Default::default()
        };
        let (tx, status) = watch::channel(Some(initial));
        let task = tokio::spawn(run(api, core.subscribe(), tx));
        Some(DeletionCost { task, status })
    }

    /// What the task last published, for [`CoreHandle::attach_deletion_cost`].
    pub fn status(&self) -> watch::Receiver<Option<DeletionCostStatus>> {
        self.status.clone()
    }

    /// Ends the task (a patch in flight is dropped). The annotation stays as
    /// it is: a Pod that stops is going away, and a new binary after a
    /// self-upgrade patches at its start.
    ///
    /// Awaiting the aborted task is what kills a patch helper in flight: the
    /// runtime drops the task's future before the join completes, and with it
    /// the helper's child, which `kill_on_drop` SIGKILLs. So once this returns
    /// no helper of this binary is patching, and `daemon.rs` calls it before a
    /// self-upgrade's exec and before a stop. That is why there is no
    /// `Helpers` set (`download/worker.rs`) here: the download manager needs
    /// one because its `Drop` only aborts its tasks, which are never polled
    /// again before the exec.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The task's state: what the API server has, when the next patch may go, the
/// failures and the last error warned about.
struct Task {
    api: Api,
    status: watch::Sender<Option<DeletionCostStatus>>,
    accepted: Option<i32>,
    next: Instant,
    failures_in_row: u32,
    warned: WarnOnce,
}

/// Follows the snapshots until the core ends.
async fn run(
    api: Api,
    mut snapshots: watch::Receiver<Snapshot>,
    status: watch::Sender<Option<DeletionCostStatus>>,
) {
    let mut task = Task {
        api,
        status,
        accepted: None,
        next: Instant::now(),
        failures_in_row: 0,
        warned: WarnOnce::default(),
    };
    let mut want = None;
    loop {
        if let Some(cost) = cost_of(&snapshots.borrow_and_update()) {
            want = Some(cost);
        }
        let due = want.filter(|w| task.accepted != Some(*w));
        match due {
            Some(cost) if Instant::now() >= task.next => task.patch(cost).await,
            Some(_) => {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep_until(task.next) => {}
                }
            }
            None => {
                if snapshots.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

impl Task {
    /// One patch to `cost`, and what follows from its result: the next
    /// allowed time, the status, the log.
    async fn patch(&mut self, cost: i32) {
        let result = self.api.patch(cost).await;
        match result {
            Ok(()) => {
                self.accepted = Some(cost);
                self.next = Instant::now() + MIN_INTERVAL;
                if self.warned.clear() {
                    tracing::info!(
                        cost,
                        failures = self.failures_in_row,
                        "the Pod's deletion cost is patched again"
                    );
                } else {
                    tracing::debug!(cost, "patched the Pod's deletion cost");
                }
                self.failures_in_row = 0;
                self.publish(|s| {
                    s.value = Some(cost);
                    s.error = None;
                });
            }
            Err(e) => {
                self.failures_in_row = self.failures_in_row.saturating_add(1);
                let wait = backoff(self.failures_in_row);
                self.next = Instant::now() + wait;
                let text = e.to_string();
                if self.warned.is_new(&text) {
                    tracing::warn!(error = %e, cost, "cannot patch the Pod's deletion cost; retrying with backoff");
                } else {
                    tracing::debug!(error = %e, cost, retry_in = ?wait, "cannot patch the Pod's deletion cost");
                }
                self.publish(|s| {
                    s.error = Some(text);
                    s.failures = s.failures.saturating_add(1);
                });
            }
        }
    }

    fn publish(&self, change: impl FnOnce(&mut DeletionCostStatus)) {
        self.status.send_modify(|s| {
            if let Some(s) = s {
                change(s);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisor::protocol::Queue;

    fn snapshot(state: Phase, queue: Option<Queue>) -> Snapshot {
        let json = serde_json::json!({
            "state": state, "status_line": "", "reason": null, "flavor": "forge",
            "gpus": null, "ui_pid": null, "queue": queue, "restart_pending": null,
            "last_reload": null, "config_generation": "", "models": 0,
            "layout_conflicts": [], "uptime_seconds": 0, "ready_since_unix": null,
            "restarts": {}, "crashes": 0, "reloads": {}, "last_time_to_ready_ms": null,
            "images": {"declared": 0, "rendered": 0, "pending": 0, "rendering": null, "failed": []},
        });
        serde_json::from_value(json).expect("a snapshot")
    }

    fn q(running: u32, pending: u32) -> Option<Queue> {
        Some(Queue { running, pending })
    }

    #[test]
    fn the_cost_is_the_jobs_running_and_waiting_while_ready() {
        assert_eq!(cost_of(&snapshot(Phase::Ready, q(1, 2))), Some(3));
        assert_eq!(cost_of(&snapshot(Phase::Ready, q(0, 0))), Some(0));
        // A failed probe: the last value stands.
        assert_eq!(cost_of(&snapshot(Phase::Ready, None)), None);
        for phase in [
            Phase::Starting,
            Phase::Stopping,
            Phase::Backoff,
            Phase::Failed,
            Phase::Waiting,
        ] {
            assert_eq!(cost_of(&snapshot(phase, q(2, 0))), Some(0), "{phase:?}");
        }
    }

    #[test]
    fn a_huge_queue_is_an_int32() {
        let s = snapshot(Phase::Ready, q(u32::MAX, 5));
        assert_eq!(cost_of(&s), Some(i32::MAX));
    }

    #[test]
    fn the_backoff_doubles_up_to_its_cap() {
        let secs: Vec<u64> = (1..=8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
