//! `[queue]`: the journal of ComfyUI prompts (docs/design.md, "The queue
//! survives"). Kept apart from the other sections so its keys have one home:
//! the raw form, its checks and the typed form.
//!
//! - `keep`: journal the prompts the UI accepted through the front door and
//!   send the unfinished ones to a new UI (ComfyUI behind the front door only).
//! - `history`: how many finished prompts the journal remembers.
//!
//! Both are set up when the supervisor starts (like `[front]`): a reload lists
//! a change under `next_start`.

use serde::{Deserialize, Serialize};

use super::checker::Checker;

/// Most finished prompts `queue.history` may keep.
pub const MAX_HISTORY: usize = 10_000;

/// `[queue]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub keep: Option<bool>,
    pub history: Option<i64>,
}

impl RawQueue {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["keep", "history"];
}

/// `[queue]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueConfig {
    /// Journal ComfyUI's accepted prompts so no restart loses one.
    pub keep: bool,
    /// Finished prompts remembered across restarts.
    pub history: usize,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            keep: true,
            history: crate::journal::HISTORY,
        }
    }
}

/// Checks `[queue]`: `history` from 1 to [`MAX_HISTORY`].
pub(super) fn validate(c: &mut Checker<'_>, raw: RawQueue) -> QueueConfig {
    let default = QueueConfig::default();
    let history = match raw.history {
        None => default.history,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_HISTORY).contains(&n) => n,
            _ => {
                c.value(
                    ["queue", "history"],
                    format!("{n} is out of range (1 to {MAX_HISTORY})"),
                );
                default.history
            }
        },
    };
    QueueConfig {
        keep: raw.keep.unwrap_or(default.keep),
        history,
    }
}
