//! `[gpu]`: how the supervisor treats the machine its GPUs are in while the UI
//! works on them. Kept apart from the other sections so its keys have one home:
//! the raw form, its checks and the typed form.
//!
//! - `inhibit_sleep`: hold a logind sleep inhibitor lock while the UI's queue has
//!   jobs (running or waiting), so a suspend does not cut a generation off
//!   ([`crate::inhibit`]). Applied live: a reload turns it on or off without a
//!   restart of anything.
//!
//! A key added here goes into [`RawGpu`] (and its `KEYS`), [`GpuConfig`], the
//! checks in `validate` and the diff's `gpu` function, which does not compile
//! until the new field is classified.

use serde::{Deserialize, Serialize};

use super::checker::Checker;

/// `[gpu]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    pub inhibit_sleep: Option<bool>,
}

impl RawGpu {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["inhibit_sleep"];
}

/// `[gpu]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuConfig {
    /// Hold a logind `sleep` inhibitor lock while jobs run or wait, so the
    /// machine does not suspend in the middle of a generation.
    pub inhibit_sleep: bool,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            inhibit_sleep: true,
        }
    }
}

/// Checks `[gpu]`. Its one key is a bool that serde already type-checked; the
/// checker is taken so that keys with semantic checks (durations, ranges) have
/// their place.
pub(super) fn validate(_c: &mut Checker<'_>, raw: RawGpu) -> GpuConfig {
    let default = GpuConfig::default();
    GpuConfig {
        inhibit_sleep: raw.inhibit_sleep.unwrap_or(default.inhibit_sleep),
    }
}
