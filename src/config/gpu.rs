//! `[gpu]`: how the supervisor treats the machine its GPUs are in while the UI
//! works on them. Kept apart from the other sections so its keys have one home:
//! the raw form, its checks and the typed form.
//!
//! - `inhibit_sleep`: hold a logind sleep inhibitor lock while the UI's queue has
//!   jobs (running or waiting), so a suspend does not cut a generation off
//!   ([`crate::inhibit`]). Applied live: a reload turns it on or off without a
//!   restart of anything.
//!
//! - `unload_after`: once the queue has been idle that long, the models leave
//!   the GPU (`supervisor::unload`); not for A1111, whose unload keeps the
//!   weights in RAM and runs the next job there. Applied live.
//!
//! A key added here goes into [`RawGpu`] (and its `KEYS`), [`GpuConfig`], the
//! checks in `validate` and the diff's `gpu` function, which does not compile
//! until the new field is classified.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checker::Checker;
use super::limits;
use crate::ui::flavor::Flavor;

/// `[gpu]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGpu {
    pub inhibit_sleep: Option<bool>,
    pub unload_after: Option<String>,
}

impl RawGpu {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["inhibit_sleep", "unload_after"];
}

/// `[gpu]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GpuConfig {
    /// Hold a logind `sleep` inhibitor lock while jobs run or wait, so the
    /// machine does not suspend in the middle of a generation.
    pub inhibit_sleep: bool,
    /// Unload the models from the GPU once the queue has been idle this long;
    /// `None`: never.
    #[serde(with = "super::humantime_serde_compat::option")]
    pub unload_after: Option<Duration>,
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            inhibit_sleep: true,
            unload_after: None,
        }
    }
}

/// Checks `[gpu]`: `unload_after` a duration, and not for A1111 (`flavor`,
/// when `[ui]` was valid enough to say).
pub(super) fn validate(c: &mut Checker<'_>, raw: RawGpu, flavor: Option<Flavor>) -> GpuConfig {
    let default = GpuConfig::default();
    let unload_after = raw.unload_after.as_deref().and_then(|text| {
        let after =
            c.checked_duration("gpu", "unload_after", Some(text), "", limits::UNLOAD_AFTER)?;
        if flavor == Some(Flavor::A1111) {
            c.value(
                ["gpu", "unload_after"],
                "not for a1111: its unload-checkpoint moves the weights to RAM and the next job would run there until reload-checkpoint; use forge or comfyui, or leave it out",
            );
            return None;
        }
        Some(after)
    });
    GpuConfig {
        inhibit_sleep: raw.inhibit_sleep.unwrap_or(default.inhibit_sleep),
        unload_after,
    }
}
