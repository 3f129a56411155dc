//! Health endpoints for schedulers (Kubernetes probes, `docker` health checks):
//! `GET /healthz` and `GET /readyz`, served without a token on the unix socket
//! and the TCP listener, since a kubelet has none to send. They answer nothing
//! secret: a yes or no, the state's name, whether the supervisor drains.
//!
//! Like every handler here they only translate: liveness is a round trip through
//! the core's command channel (a core whose loop is stuck cannot answer), and
//! readiness is [`Snapshot::takes_work`](crate::supervisor::protocol::Snapshot::takes_work).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::wire::{self, Alive, Readiness};
use crate::supervisor::protocol::CoreHandle;

/// How long the core's loop may take to answer a liveness ping. Its loop never
/// awaits I/O, so anything near this means it is stuck.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(5);

/// The two routes, without authentication; merge them beside the guarded API.
pub fn router(handle: CoreHandle) -> Router {
    Router::new()
        .route(wire::HEALTHZ, get(healthz))
        .route(wire::READYZ, get(readyz))
        .with_state(handle)
}

/// `GET /healthz`: 200 while the core's loop answers within [`LIVENESS_TIMEOUT`].
async fn healthz(State(core): State<CoreHandle>) -> (StatusCode, Json<Alive>) {
    let alive = core.ping(LIVENESS_TIMEOUT).await.is_ok();
    let status = if alive {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Alive { alive }))
}

/// `GET /readyz`: 200 while the UI answers and the supervisor is not draining.
async fn readyz(State(core): State<CoreHandle>) -> (StatusCode, Json<Readiness>) {
    let snapshot = core.snapshot();
    let ready = snapshot.takes_work();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        state: snapshot.state,
        draining: snapshot.draining,
    };
    (status, Json(body))
}
