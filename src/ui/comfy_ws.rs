//! ComfyUI's `/ws` status broadcasts as an instant "the queue changed" signal
//! (issue 4, idle detection): polling alone notices an emptied queue up to
//! `restart.poll_interval` late. ComfyUI broadcasts
//! `{"type": "status", "data": {"status": {"exec_info": {"queue_remaining": N}}}}`
//! on every enqueue, dequeue and finish (`tests/data/` holds captured messages).
//!
//! The signal only makes the supervisor probe at once; the HTTP reading stays
//! the authority, so a lost, late or missing message costs latency, never a
//! wrong decision, and a UI without `/ws` is simply polled.
//!
//! The same socket carries the progress of prompts sent without a `client_id`
//! (ComfyUI sends `progress`, `executing` and the like to the prompt's client,
//! to every socket when it has none): the stall watchdog's only view of a
//! ComfyUI job's progress, since `/queue` shows none.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::task::AbortHandle;
use tokio_tungstenite::tungstenite::Message;

/// Pause before connecting again after the connection failed or closed.
const RECONNECT: Duration = Duration::from_secs(1);

/// What one message on `/ws` says that the supervisor cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsNews {
    /// `status`: the queue's length (`queue_remaining`).
    Queue(u32),
    /// `execution_start`, `executing` a node, `progress`, `progress_state`,
    /// `executed`, `execution_cached`: the prompt (when named) is moving.
    Progress(Option<String>),
}

/// A connection to the UI's `/ws`, kept up until dropped.
#[derive(Debug)]
pub struct QueueSignal {
    task: AbortHandle,
}

impl QueueSignal {
    /// Listens on `ws://127.0.0.1:<port>/ws` and calls `on_change` with the
    /// news of each message. Must be called inside a tokio runtime.
    pub fn start(port: u16, on_change: impl Fn(WsNews) + Send + 'static) -> QueueSignal {
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

async fn listen(url: String, on_change: impl Fn(WsNews)) {
    loop {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((mut ws, _)) => {
                tracing::debug!(%url, "listening to the UI's queue broadcasts");
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(text)) => {
                            if let Some(news) = news(text.as_str()) {
                                on_change(news);
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

/// What a text message says: its queue length or the progress of a prompt;
/// `None` for anything else (previews are binary messages, never here).
pub fn news(text: &str) -> Option<WsNews> {
    if let Some(n) = queue_remaining(text) {
        return Some(WsNews::Queue(n));
    }
    let msg: Value = serde_json::from_str(text).ok()?;
    let data = msg.get("data");
    let moving = match msg.get("type")?.as_str()? {
        "execution_start" | "progress" | "progress_state" | "executed" | "execution_cached" => true,
        // `executing` with no node is the prompt's end, not progress.
        "executing" => data
            .and_then(|d| d.get("node"))
            .is_some_and(|n| !n.is_null()),
        _ => false,
    };
    moving.then(|| {
        WsNews::Progress(
            data.and_then(|d| d.get("prompt_id"))
                .and_then(Value::as_str)
                .map(str::to_owned),
        )
    })
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
    fn progress_messages_name_their_prompt() {
        let id = Some("p1".to_string());
        for text in [
            r#"{"type": "progress", "data": {"value": 3, "max": 20, "prompt_id": "p1", "node": "3"}}"#,
            r#"{"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": "p1"}}"#,
            r#"{"type": "execution_start", "data": {"prompt_id": "p1", "timestamp": 1}}"#,
            r#"{"type": "executed", "data": {"node": "9", "output": {}, "prompt_id": "p1"}}"#,
        ] {
            assert_eq!(news(text), Some(WsNews::Progress(id.clone())), "{text}");
        }
        let end = r#"{"type": "executing", "data": {"node": null, "prompt_id": "p1"}}"#;
        assert_eq!(news(end), None);
        let status = r#"{"type":"status","data":{"status":{"exec_info":{"queue_remaining":1}}}}"#;
        assert_eq!(news(status), Some(WsNews::Queue(1)));
        assert_eq!(news(r#"{"type": "crystools.monitor", "data": {}}"#), None);
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
