//! The front door's side of the queue journal: a ComfyUI `POST /prompt` whose
//! body is small enough is read whole before it is sent, and the UI's answer
//! read whole before it goes back, so the core can journal the prompt the UI
//! accepted (its body, `client_id`, `prompt_id`, number). Anything else —
//! a bigger or chunked body, a refused prompt — passes as before, unjournaled.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::Response;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap};

use super::forward::{self, DownBody};
use super::page;
use crate::journal::{MAX_BODY, comfy};
use crate::supervisor::protocol::CoreHandle;

/// Largest answer of the UI to a submission that is read for its id
/// (`{"prompt_id": …, "number": …, "node_errors": {}}` is tiny).
const MAX_ANSWER: usize = 1024 * 1024;

/// Where journaled submissions go: the core.
#[derive(Debug, Clone)]
pub struct Tap {
    core: CoreHandle,
}

impl Tap {
    /// A tap into `core`'s journal.
    pub fn new(core: CoreHandle) -> Tap {
        Tap { core }
    }
}

/// Whether `method path` with `headers` is a submission to journal: a
/// `POST /prompt` with a `Content-Length` up to [`MAX_BODY`].
pub fn wants(method: &str, path: &str, headers: &HeaderMap) -> bool {
    comfy::is_submission(method, path)
        && headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<usize>().ok())
            .is_some_and(|n| n <= MAX_BODY)
}

/// The client's whole body (at most [`MAX_BODY`]); `None` when it broke off.
pub async fn read_body(body: Incoming) -> Option<Bytes> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// The UI's answer to the submission `sent`: read whole, handed to the
/// journal when it accepted the prompt, and passed back to the client as it came.
pub async fn answer(tap: &Tap, sent: &Bytes, response: Response<Incoming>) -> Response<DownBody> {
    let Some((parts, bytes)) = forward::read_whole(response, MAX_ANSWER).await else {
        // The UI died while answering: the client hears so, as for any body.
        return forward::own(page::ui_gone());
    };
    if parts.status.is_success() {
        match comfy::accepted(sent, &bytes, unix_now()) {
            Ok(kept) => {
                if tap.core.queue_accepted(kept).await.is_err() {
                    tracing::warn!("the core is gone; a prompt the UI accepted is not journaled");
                }
            }
            Err(e) => tracing::debug!(error = %e, "submission not journaled"),
        }
    }
    forward::pass_whole(parts, bytes)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
