//! The steps a layout is made of, each printable as one line (`layout --dry-run`).

use std::fmt;
use std::path::PathBuf;

use super::report::{Conflict, Dangling, Wanted};

/// Why an owned link goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// No declaration wants it any more.
    Undeclared,
    /// Its declared target does not exist (garbage-collected).
    TargetMissing,
}

/// One step of a layout. Paths are absolute.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a folder with the data dir's mode.
    CreateDir { path: PathBuf, mode: u32 },
    /// Give the data dir the configured mode.
    SetMode { path: PathBuf, mode: u32 },
    /// Remove a temporary left by a killed layout.
    RemoveTemp { path: PathBuf },
    /// Create a link where nothing stands.
    CreateLink {
        path: PathBuf,
        target: PathBuf,
        wanted: Wanted,
    },
    /// Atomically point an owned link elsewhere (temp link renamed over it).
    ReplaceLink {
        path: PathBuf,
        old: PathBuf,
        target: PathBuf,
        wanted: Wanted,
    },
    /// Remove an owned link.
    RemoveLink {
        path: PathBuf,
        target: PathBuf,
        wanted: Wanted,
        why: Removal,
    },
    /// Report something in the way; it stays untouched.
    Conflict(Conflict),
    /// Report a declared target that does not exist.
    Dangling(Dangling),
    /// Move an unparsable settings file aside (never deleted).
    SetAsideSettings { path: PathBuf, reason: String },
    /// Write the merged settings file atomically.
    WriteSettings {
        path: PathBuf,
        keys: Vec<String>,
        contents: Vec<u8>,
        mode: Option<u32>,
    },
}

impl Action {
    /// Whether carrying the action out writes to the filesystem.
    pub fn writes(&self) -> bool {
        !matches!(self, Action::Conflict(_) | Action::Dangling(_))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateDir { path, mode } => {
                write!(f, "create dir {} (mode {mode:04o})", path.display())
            }
            Action::SetMode { path, mode } => write!(f, "chmod {mode:04o} {}", path.display()),
            Action::RemoveTemp { path } => write!(f, "remove leftover {}", path.display()),
            Action::CreateLink {
                path,
                target,
                wanted,
            } => write!(
                f,
                "link {} -> {} ({wanted})",
                path.display(),
                target.display()
            ),
            Action::ReplaceLink {
                path,
                old,
                target,
                wanted,
            } => write!(
                f,
                "relink {} -> {} (was {}; {wanted})",
                path.display(),
                target.display(),
                old.display()
            ),
            Action::RemoveLink {
                path,
                target,
                wanted,
                why,
            } => {
                let why = match why {
                    Removal::Undeclared => "no longer declared",
                    Removal::TargetMissing => "declared target missing",
                };
                write!(
                    f,
                    "unlink {} (was -> {}; {wanted} {why})",
                    path.display(),
                    target.display()
                )
            }
            Action::Conflict(c) => write!(f, "conflict: {c}"),
            Action::Dangling(d) => write!(f, "missing target: {d}"),
            Action::SetAsideSettings { path, reason } => write!(
                f,
                "set aside {} as {}.corrupt-<time> (not JSON: {reason})",
                path.display(),
                path.display()
            ),
            Action::WriteSettings { path, keys, .. } => {
                write!(
                    f,
                    "write {} (managed keys: {})",
                    path.display(),
                    keys.join(", ")
                )
            }
        }
    }
}
