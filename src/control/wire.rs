//! The wire types of the HTTP control API, shared by the server ([`super::http`]) and
//! the CLI client ([`super::client`]) so the two cannot drift apart.
//!
//! `GET /v1/status` and `GET /v1/wait-idle` answer with a [`Snapshot`](crate::supervisor::protocol::Snapshot)
//! as-is and `POST /v1/reload` with a [`ReloadOutcome`](crate::supervisor::protocol::ReloadOutcome) as-is;
//! only the shapes below are the API's own. `docs/control-api.md` documents all of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::supervisor::protocol::RestartWhen;

/// Path of the status route.
pub const STATUS: &str = "/v1/status";
/// Path of the reload route.
pub const RELOAD: &str = "/v1/reload";
/// Path of the restart route.
pub const RESTART: &str = "/v1/restart";
/// Path of the wait-idle route.
pub const WAIT_IDLE: &str = "/v1/wait-idle";
/// Path of the retry-downloads route.
pub const RETRY_DOWNLOADS: &str = "/v1/retry-downloads";
/// Path of the generate route (declared images).
pub const GENERATE: &str = "/v1/generate";
/// Path of the Prometheus route.
pub const METRICS: &str = "/metrics";
/// Path of the drain route (`wait-idle --drain`).
pub const DRAIN: &str = "/v1/drain";
/// Path of the queue journal's listing (`queue list`).
pub const QUEUE: &str = "/v1/queue";
/// Path of `queue pause`.
pub const QUEUE_PAUSE: &str = "/v1/queue/pause";
/// Path of `queue resume`.
pub const QUEUE_RESUME: &str = "/v1/queue/resume";
/// Path of `queue release ID`.
pub const QUEUE_RELEASE: &str = "/v1/queue/release";
/// Path of the liveness route (unauthenticated).
pub const HEALTHZ: &str = "/healthz";
/// Path of the readiness route (unauthenticated).
pub const READYZ: &str = "/readyz";

/// Body of `GET /healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alive {
    /// Whether the core's loop answered in time.
    pub alive: bool,
}

/// Body of `GET /readyz`: enough for a scheduler and a person, nothing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Whether work may be routed here (the status code says the same).
    pub ready: bool,
    /// The supervisor's state.
    pub state: crate::supervisor::protocol::Phase,
    /// Whether it is draining for a stop.
    pub draining: bool,
}

/// Body of `POST /v1/restart`; an empty body means `{"when":"idle"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartRequest {
    /// `idle` (the default) or `now`.
    #[serde(default = "default_when")]
    pub when: RestartWhen,
}

fn default_when() -> RestartWhen {
    RestartWhen::Idle
}

impl Default for RestartRequest {
    fn default() -> Self {
        RestartRequest {
            when: default_when(),
        }
    }
}

/// Answer of `POST /v1/restart`: the supervisor's status line once the restart is
/// scheduled, so the caller sees what will happen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartReply {
    /// The status line (as in `systemctl status`).
    pub status_line: String,
}

/// Answer of `POST /v1/retry-downloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryReply {
    /// Failed downloads started again.
    pub retried: usize,
}

/// Body of `POST /v1/generate`: which declared images to render now (all when
/// `names` is empty), and whether to render those already on disk too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    /// Image names from `[images.<name>]`; empty: every declared image.
    #[serde(default)]
    pub names: Vec<String>,
    /// Render even when the file on disk matches the declaration.
    #[serde(default)]
    pub force: bool,
}

/// Answer of `POST /v1/generate` once every image asked for is on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerateReply {
    /// The PNG files, in the order asked for.
    pub paths: Vec<std::path::PathBuf>,
}

/// Body of `POST /v1/queue/release`: the quarantined prompt to send again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    /// Its id, as `queue list` shows it.
    pub prompt_id: String,
}

/// Body of every error answer (4xx/5xx other than a rejected reload), so clients
/// can always show a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for people.
    pub error: String,
}

/// Query of `GET /v1/wait-idle`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitIdleQuery {
    /// A duration like `30s` or `10m`; absent means wait without limit.
    pub timeout: Option<String>,
}

/// Parses a `timeout` the way the config file spells durations (`30s`, `10m`).
pub fn parse_timeout(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("timeout {text:?} is not a duration like \"30s\" ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_request_defaults_to_idle() {
        let r: RestartRequest = serde_json::from_str("{}").expect("parses");
        assert_eq!(r.when, RestartWhen::Idle);
        let r: RestartRequest = serde_json::from_str(r#"{"when":"now"}"#).expect("parses");
        assert_eq!(r.when, RestartWhen::Now);
        assert!(serde_json::from_str::<RestartRequest>(r#"{"when":"later"}"#).is_err());
        assert!(serde_json::from_str::<RestartRequest>(r#"{"whenn":"now"}"#).is_err());
    }

    #[test]
    fn timeouts_parse_like_config_durations() {
        assert_eq!(parse_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_timeout("soon").is_err());
    }
}
