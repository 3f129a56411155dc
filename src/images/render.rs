//! Rendering one declared image through the running UI (ui-apis.md §3, §9):
//! Forge/A1111 `POST /sdapi/v1/txt2img` answers with base64 PNGs and an `info`
//! JSON string; ComfyUI takes `POST /prompt`, is followed through
//! `GET /history/<id>` until the prompt finished, and the picture is fetched from
//! `GET /view?filename=…&subfolder=…&type=…`.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::config::{ImageConfig, Txt2img, Workflow};
use crate::ui::api::ApiAuth;
use crate::ui::loopback::{Answer, Loopback, LoopbackError};

/// The longest one render may take (a large model on a slow GPU, behind a queue).
const RENDER_TIMEOUT: Duration = Duration::from_secs(3600);
/// The largest answer of a render: Forge/A1111 send the PNG base64-encoded inside
/// JSON, a large image with its metadata is tens of MB.
const MAX_RENDER_ANSWER: usize = 256 * 1024 * 1024;
/// How often ComfyUI's history is asked whether the prompt finished.
const HISTORY_POLL: Duration = Duration::from_millis(250);
/// `client_id` of the supervisor's ComfyUI prompts, so they can be told apart.
pub const CLIENT_ID: &str = "sd-webui-supervisor";

const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Why a render failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// The UI could not be reached or stopped answering (it may be restarting):
    /// worth trying again once it is ready.
    #[error("the UI did not answer: {0}")]
    Unreachable(String),
    /// The UI refused or failed the job: retried only when the declaration
    /// changes or on `generate`.
    #[error("{0}")]
    Ui(String),
}

/// A finished render.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The PNG file's bytes.
    pub png: Vec<u8>,
    /// The seed used, when the UI says.
    pub seed: Option<i64>,
    /// The UI's own account (Forge's parsed `info`, ComfyUI's history status and outputs).
    pub info: Value,
}

/// An HTTP client for one UI, for renders.
#[derive(Debug, Clone)]
pub struct Renderer {
    client: Loopback,
}

impl Renderer {
    /// A renderer for the UI on `127.0.0.1:port`.
    pub fn new(port: u16, auth: Option<ApiAuth>) -> Renderer {
        Renderer {
            client: Loopback::new(port, auth).max_answer(MAX_RENDER_ANSWER),
        }
    }

    /// Renders `image` and returns the picture.
    pub async fn render(&self, image: &ImageConfig) -> Result<Rendered, RenderError> {
        match image {
            ImageConfig::Txt2img(t) => self.txt2img(t).await,
            ImageConfig::Workflow(w) => self.workflow(w).await,
        }
    }

    async fn txt2img(&self, t: &Txt2img) -> Result<Rendered, RenderError> {
        let path = "/sdapi/v1/txt2img";
        let body = txt2img_body(t).to_string().into_bytes();
        let answer = self.client.post(path, Some(body), RENDER_TIMEOUT).await;
        let answer = json(path, answer)?;
        parse_txt2img(&answer).map_err(|e| RenderError::Ui(format!("{path}: {e}")))
    }

    async fn workflow(&self, w: &Workflow) -> Result<Rendered, RenderError> {
        let body = json!({ "prompt": w.graph, "client_id": CLIENT_ID });
        let body = body.to_string().into_bytes();
        let answer = self
            .client
            .post("/prompt", Some(body), RENDER_TIMEOUT)
            .await;
        let answer = json("/prompt", answer)?;
        let Some(id) = answer.get("prompt_id").and_then(Value::as_str) else {
            return Err(RenderError::Ui(format!(
                "/prompt: no prompt_id in {}",
                short(&answer.to_string())
            )));
        };
        let entry = self.await_history(id).await?;
        let info = json!({
            "prompt_id": id,
            "status": entry.get("status"),
            "outputs": entry.get("outputs"),
        });
        comfy_failure(&entry).map_or(Ok(()), |e| Err(RenderError::Ui(e)))?;
        let Some((filename, subfolder, kind)) = comfy_first_image(&entry) else {
            return Err(RenderError::Ui(
                "the workflow finished without an image (does it end in SaveImage?)".into(),
            ));
        };
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("filename", &filename)
            .append_pair("subfolder", &subfolder)
            .append_pair("type", &kind)
            .finish();
        let answer = self.get(&format!("/view?{query}")).await;
        let png = bytes("/view", answer)?.to_vec();
        if !png.starts_with(PNG_SIGNATURE) {
            return Err(RenderError::Ui(format!("/view: {filename} is not a PNG")));
        }
        Ok(Rendered {
            png,
            seed: comfy_seed(&w.graph),
            info,
        })
    }

    /// Polls `/history/<id>` until the prompt is there; fails when it left the
    /// queue without a history entry (deleted by someone).
    async fn await_history(&self, id: &str) -> Result<Map<String, Value>, RenderError> {
        let path = format!("/history/{id}");
        for round in 0u64.. {
            let answer = json(&path, self.get(&path).await)?;
            if let Some(Value::Object(entry)) = answer.get(id) {
                let done = entry
                    .get("status")
                    .is_none_or(|s| s.get("completed") == Some(&Value::Bool(true)))
                    || comfy_failure(entry).is_some();
                if done {
                    return Ok(entry.clone());
                }
            } else if round % 8 == 7 && !self.comfy_queued(id).await? {
                // Written under the same lock that removes it from the queue:
                // one more look tells a deleted prompt from a finished one.
                if let Some(Value::Object(entry)) = json(&path, self.get(&path).await)?.get(id) {
                    return Ok(entry.clone());
                }
                return Err(RenderError::Ui(format!(
                    "prompt {id} left the queue without a result (deleted?)"
                )));
            }
            tokio::time::sleep(HISTORY_POLL).await;
        }
        Err(RenderError::Ui("unreachable".into()))
    }

    async fn comfy_queued(&self, id: &str) -> Result<bool, RenderError> {
        let queue = json("/queue", self.get("/queue").await)?;
        let has = |key: &str| {
            queue
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(|items| {
                    items
                        .iter()
                        .any(|item| item.get(1).and_then(Value::as_str) == Some(id))
                })
        };
        Ok(has("queue_running") || has("queue_pending"))
    }

    async fn get(&self, path: &str) -> Result<Answer, LoopbackError> {
        self.client.get(path, RENDER_TIMEOUT).await
    }
}

/// The body of a successful answer; the UI's error otherwise.
fn bytes(path: &str, answer: Result<Answer, LoopbackError>) -> Result<bytes::Bytes, RenderError> {
    let answer = answer.map_err(|e| RenderError::Unreachable(format!("{path}: {e}")))?;
    if !answer.is_success() {
        return Err(RenderError::Ui(format!(
            "{path}: HTTP {}: {}",
            answer.status,
            error_text(&answer.body)
        )));
    }
    Ok(answer.body)
}

/// The JSON of a successful answer.
fn json(path: &str, answer: Result<Answer, LoopbackError>) -> Result<Value, RenderError> {
    let body = bytes(path, answer)?;
    serde_json::from_slice(&body).map_err(|e| RenderError::Ui(format!("{path}: not JSON: {e}")))
}

/// The txt2img request: the declared parameters over `extra`, one PNG back, the
/// checkpoint as a per-request override that the UI restores afterwards.
pub fn txt2img_body(t: &Txt2img) -> Value {
    let mut body = t.extra.clone();
    let mut set = |k: &str, v: Value| {
        body.insert(k.to_string(), v);
    };
    set("prompt", json!(t.prompt));
    set("negative_prompt", json!(t.negative_prompt));
    set("seed", json!(t.seed));
    set("steps", json!(t.steps));
    set("cfg_scale", json!(t.cfg_scale));
    set("width", json!(t.width));
    set("height", json!(t.height));
    if let Some(s) = &t.sampler_name {
        set("sampler_name", json!(s));
    }
    set("send_images", json!(true));
    set("save_images", json!(false));
    if let Some(c) = &t.checkpoint {
        set("override_settings", json!({ "sd_model_checkpoint": c }));
        set("override_settings_restore_afterwards", json!(true));
    }
    Value::Object(body)
}

/// Reads a txt2img answer: the first image, and the seed from `info`.
pub fn parse_txt2img(answer: &Value) -> Result<Rendered, String> {
    let Some(first) = answer
        .get("images")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
    else {
        return Err("the answer holds no image (was the job interrupted?)".into());
    };
    let png = base64::engine::general_purpose::STANDARD
        .decode(first.trim())
        .map_err(|e| format!("the image is not base64: {e}"))?;
    if !png.starts_with(PNG_SIGNATURE) {
        return Err("the image is not a PNG (is the UI's samples_format png?)".into());
    }
    let info = match answer.get("info") {
        Some(Value::String(s)) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        Some(other) => other.clone(),
        None => Value::Null,
    };
    let seed = info.get("seed").and_then(Value::as_i64);
    Ok(Rendered { png, seed, info })
}

/// The error of a failed ComfyUI history entry, if it failed.
pub fn comfy_failure(entry: &Map<String, Value>) -> Option<String> {
    let status = entry.get("status")?;
    if status.get("status_str").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let messages = status.get("messages").and_then(Value::as_array);
    for m in messages.into_iter().flatten() {
        match (m.get(0).and_then(Value::as_str), m.get(1)) {
            (Some("execution_error"), Some(d)) => {
                let text = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
                return Some(format!(
                    "node {} ({}): {}: {}",
                    d.get("node_id")
                        .map_or("?".into(), |v| v.to_string().replace('"', "")),
                    text("node_type"),
                    text("exception_type"),
                    text("exception_message").trim()
                ));
            }
            (Some("execution_interrupted"), _) => {
                return Some("the prompt was interrupted".into());
            }
            _ => {}
        }
    }
    Some("the prompt failed".into())
}

/// The first saved image of a history entry: `(filename, subfolder, type)`,
/// preferring `output` (SaveImage) over `temp` (PreviewImage).
pub fn comfy_first_image(entry: &Map<String, Value>) -> Option<(String, String, String)> {
    let outputs = entry.get("outputs")?.as_object()?;
    let mut ids: Vec<&String> = outputs.keys().collect();
    // Node ids are numbers as strings: order them as numbers where they are.
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.to_string()));
    let images = ids
        .iter()
        .filter_map(|id| outputs[id.as_str()].get("images")?.as_array())
        .flatten();
    let mut best: Option<(String, String, String)> = None;
    for img in images {
        let field = |k: &str| img.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let found = (field("filename"), field("subfolder"), field("type"));
        if found.0.is_empty() {
            continue;
        }
        if found.2 == "output" {
            return Some(found);
        }
        best.get_or_insert(found);
    }
    best
}

/// The seed of a workflow, when one node has a numeric `seed` or `noise_seed`.
fn comfy_seed(graph: &Map<String, Value>) -> Option<i64> {
    graph.values().find_map(|node| {
        let inputs = node.get("inputs")?;
        inputs
            .get("seed")
            .or_else(|| inputs.get("noise_seed"))?
            .as_i64()
    })
}

/// The readable part of an error body (FastAPI, Forge/A1111 middleware, aiohttp,
/// ComfyUI's prompt validation).
pub fn error_text(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return short(String::from_utf8_lossy(body).trim());
    };
    fn s(v: Option<&Value>) -> Option<&str> {
        v.and_then(Value::as_str).filter(|s| !s.is_empty())
    }
    // ComfyUI: {"error": {"type", "message", "details"}, "node_errors": {...}}
    if let Some(err) = v.get("error").filter(|e| e.is_object()) {
        let mut out = s(err.get("message")).unwrap_or("error").to_string();
        if let Some(d) = s(err.get("details")) {
            out.push_str(&format!(": {d}"));
        }
        if let Some(nodes) = v.get("node_errors").and_then(Value::as_object) {
            for (id, n) in nodes {
                for e in n
                    .get("errors")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push_str(&format!(
                        "; node {id}: {} {}",
                        s(e.get("message")).unwrap_or(""),
                        s(e.get("details")).unwrap_or("")
                    ));
                }
            }
        }
        return short(out.trim());
    }
    // Forge: {"error", "message"}; A1111: {"error", "errors"}; FastAPI: {"detail"}.
    if let Some(kind) = s(v.get("error")) {
        let msg = s(v.get("message")).or(s(v.get("errors"))).unwrap_or("");
        return short(&format!("{kind}: {msg}"));
    }
    match v.get("detail") {
        Some(Value::String(d)) => short(d),
        Some(Value::Array(items)) => short(
            &items
                .iter()
                .map(|i| {
                    let loc = i.get("loc").map(Value::to_string).unwrap_or_default();
                    format!("{loc} {}", s(i.get("msg")).unwrap_or(""))
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => short(&v.to_string()),
    }
}

fn short(s: &str) -> String {
    s.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY_PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGNoaGgAAAMEAYFL09IQAAAAAElFTkSuQmCC";

    #[test]
    fn txt2img_answer_gives_png_and_seed() {
        let answer = json!({"images": [TINY_PNG], "parameters": {}, "info": "{\"seed\": 42, \"all_seeds\": [42]}"});
        let r = parse_txt2img(&answer).expect("parses");
        assert!(r.png.starts_with(PNG_SIGNATURE));
        assert_eq!(r.seed, Some(42));
        assert!(parse_txt2img(&json!({"images": [], "info": "{}"})).is_err());
        assert!(parse_txt2img(&json!({"images": ["aGVsbG8="], "info": "{}"})).is_err());
    }

    #[test]
    fn error_bodies_read_like_the_ui_meant() {
        let forge = br#"{"error":"KeyError","detail":"","body":"","message":"'no_such_key_xyz'"}"#;
        assert_eq!(error_text(forge), "KeyError: 'no_such_key_xyz'");
        let comfy = br#"{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}}, "node_errors": {"3": {"errors": [{"type": "value_not_in_list", "message": "Value not in list", "details": "ckpt_name: 'x' not in []"}], "class_type": "CheckpointLoaderSimple"}}}"#;
        assert_eq!(
            error_text(comfy),
            "Prompt outputs failed validation; node 3: Value not in list ckpt_name: 'x' not in []"
        );
    }

    #[test]
    fn comfy_history_entries() {
        let ok = json!({"outputs": {"10": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
                                    "9": {"images": [{"filename": "a.png", "subfolder": "s", "type": "temp"}]}},
                        "status": {"status_str": "success", "completed": true, "messages": []}});
        let ok = ok.as_object().expect("object");
        assert_eq!(comfy_failure(ok), None);
        assert_eq!(
            comfy_first_image(ok),
            Some(("b.png".into(), "".into(), "output".into()))
        );
        let failed = json!({"outputs": {}, "status": {"status_str": "error", "completed": false, "messages": [
            ["execution_start", {"prompt_id": "p"}],
            ["execution_error", {"prompt_id": "p", "node_id": "2", "node_type": "ImageBlur", "exception_type": "RuntimeError", "exception_message": "boom\n"}]]}});
        assert_eq!(
            comfy_failure(failed.as_object().expect("object")).as_deref(),
            Some("node 2 (ImageBlur): RuntimeError: boom")
        );
    }
}
