//! HTTP probes of the UI: readiness, queue (busy/idle), live settings and model
//! refreshes. All requests go to loopback, whatever `listen` says.
//!
//! The JSON parsing is split into pure functions tested against responses captured
//! from the real UIs (`tests/data/`).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ui::flavor::Flavor;
use crate::ui::loopback::{Answer, Loopback, LoopbackError};

/// The UI's generation queue as last probed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queue {
    /// Jobs running now (0 or 1 for Forge/A1111).
    pub running: u32,
    /// Jobs waiting.
    pub pending: u32,
}

impl Queue {
    /// No job running or waiting.
    pub fn is_idle(&self) -> bool {
        self.running == 0 && self.pending == 0
    }
}

/// One queue probe: the queue, and what tells one running job and its
/// progress from another reading (the stall watchdog compares them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueReading {
    /// The queue.
    pub queue: Queue,
    /// Which job runs: Forge/A1111 its start time and name
    /// (`state.job_timestamp`, `state.job`), ComfyUI its prompt id; `None`
    /// when none runs.
    pub job: Option<String>,
    /// How far it got, where the UI reports it over HTTP (Forge/A1111:
    /// `state.job_no`, `sampling_step`, `sampling_steps`); ComfyUI reports
    /// progress on `/ws` only.
    pub mark: Option<String>,
    /// The ids of the jobs waiting (Forge/A1111 `/internal/pending-tasks`
    /// `tasks`, ComfyUI `/queue` `queue_pending`), for how long the oldest
    /// has waited; empty where the UI does not list them.
    pub waiting: Vec<String>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connection refused, timeout, …
    #[error("{path}: {source}")]
    Http {
        /// The endpoint.
        path: String,
        /// The transport error.
        #[source]
        source: LoopbackError,
    },
    /// The UI answered with an error status.
    #[error("{path}: HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        path: String,
        /// HTTP status code.
        status: u16,
        /// Start of the response body.
        body: String,
    },
    /// The UI answered something that is not the documented JSON shape.
    #[error("{path}: unexpected response: {detail}")]
    Shape {
        /// The endpoint.
        path: String,
        /// What was wrong.
        detail: String,
    },
}

/// `user:pass` for Forge/A1111 `--api-auth` (HTTP Basic on `/sdapi/*`).
#[derive(Clone, PartialEq, Eq)]
pub struct ApiAuth {
    /// User name.
    pub user: String,
    /// Password (never logged).
    pub password: String,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiAuth({}:***)", self.user)
    }
}

impl ApiAuth {
    /// Parses a `user:pass` line. A1111 splits on every `:`, so a password with a
    /// colon would crash the UI at start: refuse it here with a clear message.
    pub fn parse(text: &str) -> Result<ApiAuth, String> {
        let line = text.trim();
        match line.split(':').collect::<Vec<_>>().as_slice() {
            [user, password] if !user.is_empty() && !password.is_empty() => Ok(ApiAuth {
                user: (*user).to_string(),
                password: (*password).to_string(),
            }),
            _ => Err("must hold exactly one \"user:password\" (no ':' in the password; the UI splits on every ':')".into()),
        }
    }
}

/// A probe client for one UI instance.
#[derive(Debug, Clone)]
pub struct Probe {
    client: Loopback,
    flavor: Flavor,
}

/// Timeout of readiness and queue probes: a loaded UI answers these in milliseconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Timeout of an unload: moving gigabytes of weights out of VRAM takes seconds.
const UNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl Probe {
    /// A client for the UI on `127.0.0.1:port`.
    pub fn new(flavor: Flavor, port: u16, auth: Option<ApiAuth>) -> Probe {
        Probe {
            client: Loopback::new(port, auth),
            flavor,
        }
    }

    /// True when the UI answers its readiness endpoints (never a log line).
    pub async fn ready(&self) -> bool {
        match self.flavor {
            Flavor::Forge | Flavor::A1111 => {
                self.get("/internal/ping").await.is_ok()
                    && self
                        .get("/sdapi/v1/progress?skip_current_image=true")
                        .await
                        .is_ok()
            }
            Flavor::Comfyui => self.get("/system_stats").await.is_ok(),
        }
    }

    /// The queue right now, with the running job and its progress.
    pub async fn queue(&self) -> Result<QueueReading, ProbeError> {
        match self.flavor {
            Flavor::Forge | Flavor::A1111 => {
                let progress = self
                    .get("/sdapi/v1/progress?skip_current_image=true")
                    .await?;
                let pending = self.get("/internal/pending-tasks").await?;
                let queue =
                    forge_queue(&progress, &pending).map_err(|detail| ProbeError::Shape {
                        path: "/sdapi/v1/progress".into(),
                        detail,
                    })?;
                let (job, mark) = forge_progress(&progress, queue);
                Ok(QueueReading {
                    queue,
                    job,
                    mark,
                    waiting: forge_waiting(&pending),
                })
            }
            Flavor::Comfyui => {
                let answer = self.get("/queue").await?;
                let queue = comfyui_queue(&answer).map_err(|detail| ProbeError::Shape {
                    path: "/queue".into(),
                    detail,
                })?;
                let job = comfyui_running_prompt(&answer).filter(|_| queue.running > 0);
                Ok(QueueReading {
                    queue,
                    job,
                    mark: None,
                    waiting: comfyui_waiting(&answer),
                })
            }
        }
    }

    /// Frees the GPU memory the loaded models hold (`gpu.unload_after`):
    /// ComfyUI `POST /free {"unload_models": true, "free_memory": true}`
    /// (acted on by its worker at once when idle, else after the running
    /// prompt; it wants a JSON object, anything else is a 500), Forge
    /// `POST /sdapi/v1/unload-checkpoint` (the next job loads it again by
    /// itself). A1111 is refused by the config check: it would keep the
    /// weights in RAM and run the next job there until `reload-checkpoint`.
    pub async fn unload_models(&self) -> Result<(), ProbeError> {
        let (path, body) = match self.flavor {
            Flavor::Forge | Flavor::A1111 => ("/sdapi/v1/unload-checkpoint", None),
            Flavor::Comfyui => (
                "/free",
                Some(serde_json::json!({ "unload_models": true, "free_memory": true })),
            ),
        };
        self.post(path, body, UNLOAD_TIMEOUT).await.map(|_| ())
    }

    /// Interrupts the running job (Forge/A1111 `POST /sdapi/v1/interrupt`,
    /// ComfyUI `POST /interrupt`, naming `prompt` where known so that a newer
    /// prompt is never hit). Neither waits for the queue lock.
    pub async fn interrupt(&self, prompt: Option<&str>) -> Result<(), ProbeError> {
        let (path, body) = match self.flavor {
            Flavor::Forge | Flavor::A1111 => ("/sdapi/v1/interrupt", None),
            Flavor::Comfyui => (
                "/interrupt",
                Some(prompt.map_or_else(
                    || serde_json::json!({}),
                    |p| serde_json::json!({ "prompt_id": p }),
                )),
            ),
        };
        self.post(path, body, PROBE_TIMEOUT).await.map(|_| ())
    }

    /// `GET /sdapi/v1/options` (Forge/A1111): the keys the UI knows, with values.
    pub async fn options(&self) -> Result<serde_json::Map<String, Value>, ProbeError> {
        match self.get("/sdapi/v1/options").await? {
            Value::Object(map) => Ok(map),
            other => Err(ProbeError::Shape {
                path: "/sdapi/v1/options".into(),
                detail: format!("expected an object, got {}", type_name(&other)),
            }),
        }
    }

    /// `POST /sdapi/v1/options` with only the given keys. May wait behind a running
    /// job in A1111 (model-changing keys take the queue lock), hence the long timeout.
    pub async fn set_options(
        &self,
        values: &serde_json::Map<String, Value>,
    ) -> Result<(), ProbeError> {
        self.post(
            "/sdapi/v1/options",
            Some(Value::Object(values.clone())),
            Duration::from_secs(3600),
        )
        .await
        .map(|_| ())
    }

    /// `POST` to a refresh endpoint (`/sdapi/v1/refresh-checkpoints`, …). These wait
    /// for the queue lock, so callers run them in the background.
    pub async fn refresh(&self, endpoint: &str) -> Result<(), ProbeError> {
        self.post(endpoint, None, Duration::from_secs(3600))
            .await
            .map(|_| ())
    }

    /// The paths that accept `POST`, from `GET /openapi.json` (FastAPI's schema):
    /// real Forge lacks some refresh routes (ui-apis.md §10), so the supervisor
    /// calls only the ones listed here.
    pub async fn post_routes(&self) -> Result<BTreeSet<String>, ProbeError> {
        let schema = self.get("/openapi.json").await?;
        openapi_post_paths(&schema).map_err(|detail| ProbeError::Shape {
            path: "/openapi.json".into(),
            detail,
        })
    }

    async fn get(&self, path: &str) -> Result<Value, ProbeError> {
        let answer = self.client.get(path, PROBE_TIMEOUT).await;
        decode(path, answer)
    }

    async fn post(
        &self,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, ProbeError> {
        let json = body.map(|b| b.to_string().into_bytes());
        let answer = self.client.post(path, json, timeout).await;
        decode(path, answer)
    }
}

/// The JSON of a successful answer (`null` for an empty body); an error status
/// with the start of its body otherwise.
fn decode(path: &str, answer: Result<Answer, LoopbackError>) -> Result<Value, ProbeError> {
    let answer = answer.map_err(|source| ProbeError::Http {
        path: path.to_string(),
        source,
    })?;
    if !answer.is_success() {
        let body = String::from_utf8_lossy(&answer.body)
            .chars()
            .take(300)
            .collect();
        return Err(ProbeError::Status {
            path: path.to_string(),
            status: answer.status,
            body,
        });
    }
    if answer.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&answer.body).map_err(|e| ProbeError::Shape {
        path: path.to_string(),
        detail: e.to_string(),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Forge/A1111 busy predicate: running when `state.job_count != 0`
/// or `state.job != ""`; pending = `/internal/pending-tasks` `size`.
pub fn forge_queue(progress: &Value, pending: &Value) -> Result<Queue, String> {
    let state = progress
        .get("state")
        .ok_or("no \"state\" in /sdapi/v1/progress")?;
    let job_count = state
        .get("job_count")
        .and_then(Value::as_i64)
        .ok_or("no state.job_count")?;
    let job = state
        .get("job")
        .and_then(Value::as_str)
        .ok_or("no state.job")?;
    let size = pending
        .get("size")
        .and_then(Value::as_u64)
        .ok_or("no \"size\" in /internal/pending-tasks")?;
    Ok(Queue {
        running: u32::from(job_count != 0 || !job.is_empty()),
        pending: u32::try_from(size).unwrap_or(u32::MAX),
    })
}

/// Forge/A1111: the running job (`state.job_timestamp` and `state.job`) and
/// its progress (`state.job_no`/`job_count`, `sampling_step`/`sampling_steps`);
/// both `None` while `queue` says nothing runs.
pub fn forge_progress(progress: &Value, queue: Queue) -> (Option<String>, Option<String>) {
    if queue.running == 0 {
        return (None, None);
    }
    let state = progress.get("state");
    let field = |key: &str| {
        state
            .and_then(|s| s.get(key))
            .map_or_else(String::new, |v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
    };
    let job = format!("{} {}", field("job_timestamp"), field("job"));
    let mark = format!(
        "{}/{} {}/{}",
        field("job_no"),
        field("job_count"),
        field("sampling_step"),
        field("sampling_steps")
    );
    (Some(job), Some(mark))
}

/// Forge/A1111: the task ids of `/internal/pending-tasks` (`tasks`, in queue order).
pub fn forge_waiting(pending: &Value) -> Vec<String> {
    pending
        .get("tasks")
        .and_then(Value::as_array)
        .map(|tasks| {
            tasks
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// ComfyUI: the prompt ids of `/queue`'s pending items (`[number, prompt_id, …]`).
pub fn comfyui_waiting(queue: &Value) -> Vec<String> {
    queue
        .get("queue_pending")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.get(1)?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// ComfyUI: the prompt id of `/queue`'s running item (`[number, prompt_id, …]`).
pub fn comfyui_running_prompt(queue: &Value) -> Option<String> {
    queue
        .get("queue_running")?
        .get(0)?
        .get(1)?
        .as_str()
        .map(str::to_owned)
}

/// The paths of an OpenAPI document that have a `post` operation.
pub fn openapi_post_paths(schema: &Value) -> Result<BTreeSet<String>, String> {
    let paths = schema
        .get("paths")
        .and_then(Value::as_object)
        .ok_or("no \"paths\" object in /openapi.json")?;
    Ok(paths
        .iter()
        .filter(|(_, ops)| ops.get("post").is_some())
        .map(|(p, _)| p.clone())
        .collect())
}

/// ComfyUI: `GET /queue` lists running and pending prompts.
pub fn comfyui_queue(queue: &Value) -> Result<Queue, String> {
    let len = |key: &str| {
        queue
            .get(key)
            .and_then(Value::as_array)
            .map(|a| u32::try_from(a.len()).unwrap_or(u32::MAX))
            .ok_or(format!("no \"{key}\" list in /queue"))
    };
    Ok(Queue {
        running: len("queue_running")?,
        pending: len("queue_pending")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> Value {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn forge_captures_parse() {
        let pending = data("forge-pending-tasks-idle.json");
        assert_eq!(
            forge_queue(&data("forge-progress-idle.json"), &pending),
            Ok(Queue {
                running: 0,
                pending: 0
            })
        );
        assert_eq!(
            forge_queue(&data("forge-progress-busy-extras.json"), &pending),
            Ok(Queue {
                running: 1,
                pending: 0
            })
        );
        let two = serde_json::json!({"size": 2, "tasks": ["task(a)", "task(b)"]});
        assert_eq!(
            forge_queue(&data("forge-progress-idle.json"), &two),
            Ok(Queue {
                running: 0,
                pending: 2
            })
        );
        assert!(forge_queue(&serde_json::json!({}), &pending).is_err());
    }

    #[test]
    fn forge_progress_names_the_job_and_its_step() {
        let busy = data("forge-progress-busy-extras.json");
        let running = Queue {
            running: 1,
            pending: 0,
        };
        assert_eq!(
            forge_progress(&busy, running),
            (Some("20261121235626 extras".into()), Some("1/1 0/0".into()))
        );
        let mut later = busy.clone();
        later["state"]["sampling_step"] = serde_json::json!(7);
        assert_ne!(
            forge_progress(&later, running).1,
            forge_progress(&busy, running).1
        );
        assert_eq!(
            forge_progress(&later, running).0,
            forge_progress(&busy, running).0
        );
        assert_eq!(forge_progress(&busy, Queue::default()), (None, None));
        // A shape without state still names a job (the stall watch then sees
        // no progress, never a crash of the probe).
        assert!(forge_progress(&serde_json::json!({}), running).0.is_some());
    }

    #[test]
    fn comfyui_running_prompt_is_the_running_items_id() {
        assert_eq!(
            comfyui_running_prompt(&data("comfyui-queue-busy.json")).as_deref(),
            Some("978bfa58-63d0-49ab-b2a5-a9ab8fe31fb2")
        );
        assert_eq!(
            comfyui_running_prompt(&data("comfyui-queue-idle.json")),
            None
        );
        assert_eq!(
            comfyui_running_prompt(&serde_json::json!({"queue_running": [[0, 5]]})),
            None
        );
    }

    #[test]
    fn waiting_ids_come_from_the_queue_listings() {
        let two = serde_json::json!({"size": 2, "tasks": ["task(a)", "task(b)"]});
        assert_eq!(forge_waiting(&two), ["task(a)", "task(b)"]);
        assert!(forge_waiting(&data("forge-pending-tasks-idle.json")).is_empty());
        assert_eq!(
            comfyui_waiting(&data("comfyui-queue-busy.json"))
                .first()
                .map(String::as_str),
            Some("bed664d6-6cca-4ebd-b2de-81e482c5f39d")
        );
        assert!(comfyui_waiting(&serde_json::json!({"queue_pending": [[1, 2]]})).is_empty());
    }

    #[test]
    fn comfyui_captures_parse() {
        assert_eq!(
            comfyui_queue(&data("comfyui-queue-idle.json")),
            Ok(Queue {
                running: 0,
                pending: 0
            })
        );
        assert_eq!(
            comfyui_queue(&data("comfyui-queue-busy.json")),
            Ok(Queue {
                running: 1,
                pending: 1
            })
        );
    }

    #[test]
    fn openapi_lists_post_routes() {
        let schema = serde_json::json!({"openapi": "3.1.0", "paths": {
            "/sdapi/v1/refresh-checkpoints": {"post": {}},
            "/sdapi/v1/options": {"get": {}, "post": {}},
            "/sdapi/v1/progress": {"get": {}},
        }});
        let posts = openapi_post_paths(&schema).unwrap();
        assert!(posts.contains("/sdapi/v1/refresh-checkpoints"));
        assert!(posts.contains("/sdapi/v1/options"));
        assert!(!posts.contains("/sdapi/v1/progress"));
        assert!(openapi_post_paths(&serde_json::json!([])).is_err());
    }

    #[test]
    fn api_auth_refuses_colons_in_passwords() {
        assert_eq!(ApiAuth::parse("sup:secret\n").unwrap().user, "sup");
        assert!(ApiAuth::parse("sup:se:cret").is_err());
        assert!(ApiAuth::parse("nocolon").is_err());
        assert!(!format!("{:?}", ApiAuth::parse("u:pw").unwrap()).contains("pw"));
    }
}
