//! Whether the front door lets requests through to the UI, read from the core's
//! snapshots: open while the UI is ready, closed while it starts, restarts, backs
//! off after a crash or waits for its GPU (requests are held), failed when it
//! will not start by itself (requests are answered 503 at once).

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::supervisor::protocol::{Phase, Snapshot};

/// The door's state for one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The UI answers: forward.
    Open,
    /// Not yet: hold API requests, show browsers the restarting page.
    Closed {
        /// The status line to show.
        status: String,
        /// How long the last start took, as a guess for this one.
        expected: Option<Duration>,
    },
    /// The UI will not come back by itself.
    Failed {
        /// The status line to show.
        status: String,
    },
}

impl Gate {
    /// The gate a snapshot implies.
    pub fn of(s: &Snapshot) -> Gate {
        match s.state {
            Phase::Ready => Gate::Open,
            Phase::Failed => Gate::Failed {
                status: s.status_line.clone(),
            },
            Phase::Starting | Phase::Backoff | Phase::Waiting | Phase::Stopping => Gate::Closed {
                status: s.status_line.clone(),
                expected: s.last_time_to_ready_ms.map(Duration::from_millis),
            },
        }
    }
}

impl Gate {
    /// The gate for one request: a ComfyUI submission (`submission`) also
    /// waits while the queue is paused or the journal is being replayed.
    pub fn for_request(s: &Snapshot, submission: bool) -> Gate {
        let gate = Gate::of(s);
        if gate == Gate::Open && submission && s.queue_keep.holds_submissions() {
            let why = if s.queue_keep.paused {
                "queue paused: new prompts wait until `sd-webui-supervisor queue resume`"
            } else {
                "sending the journaled prompts to the UI again"
            };
            return Gate::Closed {
                status: why.into(),
                expected: None,
            };
        }
        gate
    }
}

/// Why a hold ended without the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldEnd {
    /// `front.hold_timeout` passed.
    TimedOut,
    /// The UI failed; the status line says why.
    Failed(String),
    /// The supervisor is stopping.
    Stopped,
}

/// Waits until the gate opens (for a submission, see [`Gate::for_request`])
/// or `until`.
pub async fn wait_open(
    rx: &mut watch::Receiver<Snapshot>,
    until: Instant,
    submission: bool,
) -> Result<(), HoldEnd> {
    loop {
        match Gate::for_request(&rx.borrow_and_update(), submission) {
            Gate::Open => return Ok(()),
            Gate::Failed { status } => return Err(HoldEnd::Failed(status)),
            Gate::Closed { .. } => {}
        }
        match tokio::time::timeout_at(until, rx.changed()).await {
            Err(_) => return Err(HoldEnd::TimedOut),
            Ok(Err(_)) => return Err(HoldEnd::Stopped),
            Ok(Ok(())) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(paused: bool, replaying: bool) -> Snapshot {
        let json = serde_json::json!({
            "state": "ready", "status_line": "ready", "reason": null, "flavor": "comfyui",
            "gpus": null, "ui_pid": 1, "queue": null, "restart_pending": null,
            "last_reload": null, "config_generation": "", "models": 0,
            "layout_conflicts": [], "uptime_seconds": 0, "ready_since_unix": null,
            "restarts": {}, "crashes": 0, "reloads": {}, "last_time_to_ready_ms": null,
            "images": {"declared": 0, "rendered": 0, "pending": 0, "rendering": null, "failed": []},
            "queue_keep": {"enabled": true, "paused": paused, "replaying": replaying, "kept": 0,
                           "running": null, "quarantined": [], "resubmitted": 0, "journaled": 0,
                           "not_journaled": 0, "error": null},
        });
        serde_json::from_value(json).expect("a snapshot")
    }

    #[test]
    fn submissions_wait_while_paused_or_replaying_other_requests_pass() {
        assert_eq!(Gate::for_request(&ready(false, false), true), Gate::Open);
        assert_eq!(Gate::for_request(&ready(true, false), false), Gate::Open);
        assert!(matches!(
            Gate::for_request(&ready(true, false), true),
            Gate::Closed { status, .. } if status.contains("paused")
        ));
        assert!(matches!(
            Gate::for_request(&ready(false, true), true),
            Gate::Closed { .. }
        ));
    }
}
