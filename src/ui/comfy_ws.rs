//! ComfyUI's `/ws` status broadcasts as an instant "the queue changed" signal
//! (issue 4, idle detection): polling alone notices an emptied queue up to
//! `restart.poll_interval` late. ComfyUI broadcasts
//! `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": N}}}}`
//! on every enqueue, dequeue and finish (`tests/data/` holds captured messages).
//!
//! The signal only makes the supervisor probe at once; the HTTP reading stays
//! the authority, so a lost, late or missing message costs latency, never a
//! wrong decision, and a UI without `/ws` is simply polled.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;

/// Pause before connecting again after the connection failed or closed.
const RECONNECT: Duration = Duration::from_secs(1);

/// A connection to the UI's `/ws`, kept up until dropped.
#[derive(Debug)]
pub struct QueueSignal {
    task: AbortHandle,
}

impl QueueSignal {
    /// Listens on `ws://127.0.0.1:<port>/ws` and calls `on_change` with each
    /// `queue_remaining` the UI broadcasts. Must be called inside a tokio runtime.
    pub fn start(port: u16, on_change: impl Fn(u32) + Send + 'static) -> QueueSignal {
        let url = format!("ws://127.0.0.1:{port}/ws");
        let task = tokio::spawn(listen(url, on_change));
        QueueSignal {
            task: task.abort_handle(),
        }
    }
}

impl Drop for QueueSignal {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn listen(url: String, on_change: impl Fn(u32)) {
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => {
                tracing::debug!(%url, "listening to the UI's queue broadcasts");
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(text)) => {
                            if let Some(n) = queue_remaining(text.as_str()) {
                                on_change(n);
                            }
                        }
                        Ok(Message::Close(_)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(%url, error = %e, "queue broadcasts interrupted");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(%url, error = %e, "cannot listen to queue broadcasts; polling only")
            }
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// `queue_remaining` of a `status` message; `None` for any other message.
pub fn queue_remaining(text: &str) -> Option<u32> {
    let msg: Value = serde_json::from_str(text).ok()?;
    if msg.get("type")?.as_str()? != "status" {
        return None;
    }
    let n = msg
        .pointer("/data/status/exec_info/queue_remaining")?
        .as_u64()?;
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_give_the_queue_length() {
        let at_connect = r#"{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 2}}, "sid": "abc"}}"#;
        assert_eq!(queue_remaining(at_connect), Some(2));
        let broadcast =
            r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":0}}}}"#;
        assert_eq!(queue_remaining(broadcast), Some(0));
    }

    #[test]
    fn other_messages_are_ignored() {
        for text in [
            r#"{"type": "progress", "data": {"value": 3, "max": 20}}"#,
            r#"{"type": "executing", "data": {"node": null}}"#,
            r#"{"type": "status", "data": {"status": {}}}"#,
            "not json",
        ] {
            assert_eq!(queue_remaining(text), None, "{text}");
        }
    }
}
