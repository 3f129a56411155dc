//! The HTTP/JSON control API (axum): routes that translate requests into
//! [`CoreHandle`] calls and the answers into status codes. No logic of its own.
//!
//! The same [`router`] serves the unix socket (guarded by its file mode) and the
//! optional TCP listener (wrapped by [`super::token::require_token`]).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::metrics;
use super::wire::{
    self, ErrorBody, GenerateReply, GenerateRequest, RestartReply, RestartRequest, WaitIdleQuery,
    parse_timeout,
};
use crate::images::GenerateError;
use crate::supervisor::protocol::{
    CoreHandle, HandleError, QueueList, QueueOp, QueueRefusal, ReloadOutcome, ReloadResult,
    Snapshot,
};

/// The control API's routes over one core; serve it or drive it with `oneshot` in tests.
pub fn router(handle: CoreHandle) -> Router {
    Router::new()
        .route(wire::STATUS, get(status))
        .route(wire::RELOAD, post(reload))
        .route(wire::RESTART, post(restart))
        .route(wire::WAIT_IDLE, get(wait_idle))
        .route(wire::RETRY_DOWNLOADS, post(retry_downloads))
        .route(wire::DRAIN, post(drain))
        .route(wire::GENERATE, post(generate))
        .route(wire::QUEUE, get(queue_list))
        .route(wire::QUEUE_PAUSE, post(queue_pause))
        .route(wire::QUEUE_RESUME, post(queue_resume))
        .route(wire::QUEUE_RELEASE, post(queue_release))
        .route(wire::METRICS, get(prometheus))
        .fallback(not_found)
        .with_state(handle)
}

/// An error answer: a status code and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: String) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }
}

impl From<HandleError> for ApiError {
    fn from(e: HandleError) -> Self {
        let status = match e {
            HandleError::CoreStopped => StatusCode::SERVICE_UNAVAILABLE,
            HandleError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

/// `GET /v1/status`: the latest snapshot.
async fn status(State(core): State<CoreHandle>) -> Json<Snapshot> {
    Json(core.snapshot())
}

/// `POST /v1/reload`: 200 when applied or unchanged, 422 when rejected; the
/// outcome is the body either way.
async fn reload(
    State(core): State<CoreHandle>,
) -> Result<(StatusCode, Json<ReloadOutcome>), ApiError> {
    let outcome = core.reload().await?;
    let status = if outcome.result == ReloadResult::Rejected {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, Json(outcome)))
}

/// `POST /v1/restart` with `{"when":"idle"|"now"}` (an empty body means idle).
async fn restart(
    State(core): State<CoreHandle>,
    body: Bytes,
) -> Result<Json<RestartReply>, ApiError> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        RestartRequest::default()
    } else {
        // Only an object: serde's derive would also take `["now"]` as a struct.
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
            .and_then(|object| RestartRequest::deserialize(serde_json::Value::Object(object)))
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "body must be {{\"when\":\"idle\"}} or {{\"when\":\"now\"}}: {e}"
                ))
            })?
    };
    let status_line = core.restart(request.when).await?;
    Ok(Json(RestartReply { status_line }))
}

/// `POST /v1/retry-downloads`: failed downloads start again (a wrong hash, a
/// 401 or a full disk is not retried by itself).
async fn retry_downloads(
    State(core): State<CoreHandle>,
) -> Result<Json<wire::RetryReply>, ApiError> {
    let retried = core.retry_downloads().await?;
    Ok(Json(wire::RetryReply { retried }))
}

/// `POST /v1/generate` with `{"names": [...], "force": bool}`: 200 with the paths
/// once rendered, 422 with the UI's error, 400 for an unknown name.
async fn generate(
    State(core): State<CoreHandle>,
    body: Bytes,
) -> Result<Json<GenerateReply>, ApiError> {
    let request = if body.iter().all(u8::is_ascii_whitespace) {
        GenerateRequest::default()
    } else {
        serde_json::from_slice::<GenerateRequest>(&body).map_err(|e| {
            ApiError::bad_request(format!(
                "body must be {{\"names\": [\"NAME\", ...], \"force\": false}}: {e}"
            ))
        })?
    };
    match core.generate(request.names, request.force).await? {
        Ok(paths) => Ok(Json(GenerateReply { paths })),
        Err(GenerateError::Unknown(message)) => Err(ApiError::bad_request(message)),
        Err(GenerateError::Failed(message)) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        }),
    }
}

/// `GET /v1/wait-idle?timeout=30s`: 200 with the snapshot once idle, 504 on timeout.
async fn wait_idle(
    State(core): State<CoreHandle>,
    query: Result<Query<WaitIdleQuery>, QueryRejection>,
) -> Result<Json<Snapshot>, ApiError> {
    let timeout = timeout_of(query)?;
    Ok(Json(core.wait_idle(timeout).await?))
}

/// `POST /v1/drain?timeout=30s`: draining from now on; 200 with the snapshot
/// once no job runs or waits, 504 on timeout (still draining).
async fn drain(
    State(core): State<CoreHandle>,
    query: Result<Query<WaitIdleQuery>, QueryRejection>,
) -> Result<Json<Snapshot>, ApiError> {
    let timeout = timeout_of(query)?;
    Ok(Json(core.drain(timeout).await?))
}

/// The `timeout` of a waiting route; none means without limit.
fn timeout_of(
    query: Result<Query<WaitIdleQuery>, QueryRejection>,
) -> Result<std::time::Duration, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match query.timeout.as_deref() {
        Some(text) => parse_timeout(text).map_err(ApiError::bad_request),
        None => Ok(std::time::Duration::MAX),
    }
}

/// `GET /v1/queue`: the journal of ComfyUI prompts.
async fn queue_list(State(core): State<CoreHandle>) -> Result<Json<QueueList>, ApiError> {
    queue_op(&core, QueueOp::List).await
}

/// `POST /v1/queue/pause`: new submissions are held at the front door.
async fn queue_pause(State(core): State<CoreHandle>) -> Result<Json<QueueList>, ApiError> {
    queue_op(&core, QueueOp::Pause).await
}

/// `POST /v1/queue/resume`: they pass again.
async fn queue_resume(State(core): State<CoreHandle>) -> Result<Json<QueueList>, ApiError> {
    queue_op(&core, QueueOp::Resume).await
}

/// `POST /v1/queue/release` with `{"prompt_id": "…"}`: a quarantined prompt
/// is sent to the UI again; 404 for an unknown id, 409 for one not quarantined.
async fn queue_release(
    State(core): State<CoreHandle>,
    body: Bytes,
) -> Result<Json<QueueList>, ApiError> {
    let request = serde_json::from_slice::<wire::ReleaseRequest>(&body).map_err(|e| {
        ApiError::bad_request(format!("body must be {{\"prompt_id\": \"ID\"}}: {e}"))
    })?;
    let op = QueueOp::Release {
        prompt_id: request.prompt_id,
    };
    queue_op(&core, op).await
}

async fn queue_op(core: &CoreHandle, op: QueueOp) -> Result<Json<QueueList>, ApiError> {
    core.queue(op).await?.map(Json).map_err(|refusal| {
        let status = match refusal {
            QueueRefusal::Unknown { .. } => StatusCode::NOT_FOUND,
            QueueRefusal::NotKept | QueueRefusal::NotQuarantined { .. } => StatusCode::CONFLICT,
        };
        ApiError {
            status,
            message: refusal.to_string(),
        }
    })
}

/// `GET /metrics`: Prometheus text.
async fn prometheus(State(core): State<CoreHandle>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&core.snapshot()),
    )
}

/// Any other path: a JSON 404 naming what was asked for.
async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: format!("no such route: {method} {}", uri.path()),
    }
}
