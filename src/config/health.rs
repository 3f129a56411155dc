//! `[health]`: what the supervisor does about a UI that answers but no longer
//! works (docs/design.md, "Health"): a job whose progress stopped is
//! interrupted, then the UI restarted; a CUDA fault in the UI's output
//! schedules a restart once the queue is idle. Kept apart from the other
//! sections so its keys have one home: the raw form, its checks and the typed
//! form. Every key applies live: the core reads them on each probe.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checker::Checker;
use super::limits;

/// `health.stall_timeout` when the config does not say: no sampling step of a
/// real UI takes ten minutes, while loading a large checkpoint from a slow
/// disk (no progress either) may take several.
pub const DEFAULT_STALL_TIMEOUT: &str = "10m";
/// `health.stall_grace` when the config does not say.
pub const DEFAULT_STALL_GRACE: &str = "1m";

/// `[health]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub stall_timeout: Option<String>,
    pub stall_grace: Option<String>,
    pub gpu_errors: Option<bool>,
}

impl RawHealth {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["stall_timeout", "stall_grace", "gpu_errors"];
}

/// `[health]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// How long a running job may go without progress before it is
    /// interrupted; `None` (`"off"`): never.
    #[serde(with = "super::humantime_serde_compat::option")]
    pub stall_timeout: Option<Duration>,
    /// How long after the interrupt a job still without progress waits before
    /// the UI is restarted.
    #[serde(with = "super::humantime_serde_compat")]
    pub stall_grace: Duration,
    /// A CUDA fault in the UI's output ("an illegal memory access", an
    /// out-of-memory error no progress followed) restarts the UI once idle.
    pub gpu_errors: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            stall_timeout: Some(Duration::from_secs(600)),
            stall_grace: Duration::from_secs(60),
            gpu_errors: true,
        }
    }
}

/// Checks `[health]`: the stall timeout a duration or `"off"`, the grace a
/// duration.
pub(super) fn validate(c: &mut Checker<'_>, raw: RawHealth) -> HealthConfig {
    let stall_timeout = match raw.stall_timeout.as_deref() {
        Some("off") => None,
        other => Some(c.duration(
            "health",
            "stall_timeout",
            other,
            DEFAULT_STALL_TIMEOUT,
            limits::STALL_TIMEOUT,
        )),
    };
    let stall_grace = c.duration(
        "health",
        "stall_grace",
        raw.stall_grace.as_deref(),
        DEFAULT_STALL_GRACE,
        limits::STALL_GRACE,
    );
    HealthConfig {
        stall_timeout,
        stall_grace,
        gpu_errors: raw.gpu_errors.unwrap_or(true),
    }
}
