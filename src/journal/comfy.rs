//! ComfyUI's shapes as the journal needs them (ui-apis.md §3.6): what a
//! `POST /prompt` and its answer say, the body a resubmission sends, and what
//! `/queue` and `/history/{id}` know. Every input is the UI's or a client's,
//! so every reading is checked and none panics.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{Kept, Outcome};

/// Why a submission is forwarded but not journaled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotKept {
    /// The body is not a JSON object with a `prompt`.
    #[error("the body is not a JSON object with a prompt")]
    NotAPrompt,
    /// The UI's answer names no `prompt_id`.
    #[error("the UI's answer names no prompt_id")]
    NoPromptId,
}

/// Whether `method path` submits a prompt (`POST /prompt`, or `/api/prompt`
/// as the new frontend sends it).
pub fn is_submission(method: &str, path: &str) -> bool {
    method == "POST" && (path == "/prompt" || path == "/api/prompt")
}

/// The prompt the UI accepted: the body the client sent, the answer the UI
/// gave (`{"prompt_id": …, "number": …, "node_errors": {}}`).
pub fn accepted(body: &[u8], answer: &[u8], now_unix: u64) -> Result<Kept, NotKept> {
    let Ok(Value::Object(body_map)) = serde_json::from_slice::<Value>(body) else {
        return Err(NotKept::NotAPrompt);
    };
    if !body_map.get("prompt").is_some_and(Value::is_object) {
        return Err(NotKept::NotAPrompt);
    }
    let answer: Value = serde_json::from_slice(answer).map_err(|_| NotKept::NoPromptId)?;
    let prompt_id = answer
        .get("prompt_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty() && id.len() <= 256)
        .ok_or(NotKept::NoPromptId)?
        .to_owned();
    Ok(Kept {
        prompt_id,
        client_id: body_map
            .get("client_id")
            .and_then(Value::as_str)
            .map(|c| c.chars().take(256).collect()),
        number: answer.get("number").and_then(Value::as_f64),
        accepted_unix: now_unix,
        body: body_map,
        bytes: body.len(),
        strikes: 0,
        quarantined: false,
        resubmits: 0,
    })
}

/// The body that sends `kept` to a new UI: as the client sent it, with the
/// same `prompt_id` (ComfyUI takes a client-chosen one), so the prompt keeps
/// its id and a check of `/queue` or `/history` recognises it.
pub fn resubmission(kept: &Kept) -> Vec<u8> {
    let mut body = kept.body.clone();
    body.insert("prompt_id".into(), Value::String(kept.prompt_id.clone()));
    serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
}

/// The prompt ids in a `GET /queue` answer, running and pending.
pub fn queue_ids(queue: &Value) -> BTreeSet<String> {
    ["queue_running", "queue_pending"]
        .iter()
        .filter_map(|k| queue.get(*k)?.as_array())
        .flatten()
        .filter_map(|item| item.get(1)?.as_str().map(str::to_owned))
        .collect()
}

/// What `GET /history/{id}` says of `id`: `None` when it does not know it.
pub fn history_outcome(id: &str, history: &Value) -> Option<Outcome> {
    let item = history.get(id)?;
    let status = item.get("status");
    let completed = status
        .and_then(|s| s.get("completed"))
        .and_then(Value::as_bool);
    let word = status
        .and_then(|s| s.get("status_str"))
        .and_then(Value::as_str);
    match (word, completed) {
        (Some("success"), _) | (None, Some(true)) => Some(Outcome::Succeeded),
        _ => Some(Outcome::Failed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_accepted_prompt_keeps_body_id_and_client() {
        let body =
            br#"{"prompt": {"9": {"class_type": "SaveImage", "inputs": {}}}, "client_id": "web"}"#;
        let answer = br#"{"prompt_id": "p-1", "number": 3, "node_errors": {}}"#;
        let k = accepted(body, answer, 7).expect("kept");
        assert_eq!(k.prompt_id, "p-1");
        assert_eq!(k.client_id.as_deref(), Some("web"));
        assert_eq!(k.number, Some(3.0));
        assert_eq!(k.bytes, body.len());
        let again: Value = serde_json::from_slice(&resubmission(&k)).expect("json");
        assert_eq!(again["prompt_id"], "p-1");
        assert_eq!(again["client_id"], "web");
        assert_eq!(again["prompt"]["9"]["class_type"], "SaveImage");
    }

    #[test]
    fn hostile_bodies_and_answers_are_not_kept() {
        let ok = br#"{"prompt_id": "x"}"#;
        assert_eq!(accepted(b"[1]", ok, 0), Err(NotKept::NotAPrompt));
        assert_eq!(
            accepted(b"{\"prompt\": 5}", ok, 0),
            Err(NotKept::NotAPrompt)
        );
        assert_eq!(accepted(b"\xff", ok, 0), Err(NotKept::NotAPrompt));
        let body = br#"{"prompt": {}}"#;
        assert_eq!(accepted(body, b"{}", 0), Err(NotKept::NoPromptId));
        assert_eq!(
            accepted(body, b"{\"prompt_id\": 5}", 0),
            Err(NotKept::NoPromptId)
        );
        assert_eq!(accepted(body, b"oops", 0), Err(NotKept::NoPromptId));
    }

    #[test]
    fn queue_and_history_readings() {
        let q =
            json!({"queue_running": [[0, "a", {}, {}, []]], "queue_pending": [[1, "b"], [2], "x"]});
        assert_eq!(queue_ids(&q), BTreeSet::from(["a".into(), "b".into()]));
        assert!(queue_ids(&json!([])).is_empty());
        let h = json!({"a": {"status": {"status_str": "success", "completed": true}},
                       "b": {"status": {"status_str": "error", "completed": false}}, "c": {}});
        assert_eq!(history_outcome("a", &h), Some(Outcome::Succeeded));
        assert_eq!(history_outcome("b", &h), Some(Outcome::Failed));
        assert_eq!(history_outcome("c", &h), Some(Outcome::Failed));
        assert_eq!(history_outcome("d", &h), None);
    }
}
