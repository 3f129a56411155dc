//! The steps a layout is made of, each printable as one line (`layout --dry-run`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::report::{Conflict, Dangling, Wanted};

/// Why an owned link goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// No declaration wants it any more.
    Undeclared,
    /// Its declared target does not exist (garbage-collected).
    TargetMissing,
}

/// One step of a layout. Paths are absolute; `path` is always where the step
/// acts, `wanted` the declaration it serves (for messages and refresh calls).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create a folder with the data dir's mode.
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// `data.permissions`.
        mode: u32,
    },
    /// Give the data dir the configured mode.
    SetMode {
        /// The data dir.
        path: PathBuf,
        /// `data.permissions`.
        mode: u32,
    },
    /// Remove a temporary left by a killed layout.
    RemoveTemp {
        /// The temporary (a link or a file with the supervisor's prefix).
        path: PathBuf,
    },
    /// Create a link where nothing stands.
    CreateLink {
        /// Where the link goes.
        path: PathBuf,
        /// The declared target.
        target: PathBuf,
        /// The declaration.
        wanted: Wanted,
    },
    /// Atomically point an owned link elsewhere (temp link renamed over it).
    ReplaceLink {
        /// The owned link.
        path: PathBuf,
        /// Its current target.
        old: PathBuf,
        /// The declared target.
        target: PathBuf,
        /// The declaration.
        wanted: Wanted,
    },
    /// Remove an owned link.
    RemoveLink {
        /// The owned link.
        path: PathBuf,
        /// Its current target (re-checked just before removal).
        target: PathBuf,
        /// The declaration it served.
        wanted: Wanted,
        /// Why it goes.
        why: Removal,
    },
    /// Report something in the way; it stays untouched.
    Conflict(Conflict),
    /// Report a declared target that does not exist.
    Dangling(Dangling),
    /// Move an unparsable settings file aside (never deleted).
    SetAsideSettings {
        /// The settings file.
        path: PathBuf,
        /// The parse error.
        reason: String,
    },
    /// Write the merged settings file atomically.
    WriteSettings {
        /// The settings file (a user's link to it is followed).
        path: PathBuf,
        /// The managed keys that change.
        keys: Vec<String>,
        /// The whole new file.
        contents: Vec<u8>,
        /// The old file's mode, kept; `None` for a new file.
        mode: Option<u32>,
    },
}

impl Action {
    /// Whether carrying the action out writes to the filesystem.
    pub fn writes(&self) -> bool {
        !matches!(self, Action::Conflict(_) | Action::Dangling(_))
    }

    /// The link a link action is about (its record in the manifest is keyed by it).
    pub(crate) fn link_path(&self) -> Option<&Path> {
        match self {
            Action::CreateLink { path, .. }
            | Action::ReplaceLink { path, .. }
            | Action::RemoveLink { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The config entry a link action serves: a failure names it.
    pub(crate) fn link_wanted(&self) -> Option<&Wanted> {
        match self {
            Action::CreateLink { wanted, .. }
            | Action::ReplaceLink { wanted, .. }
            | Action::RemoveLink { wanted, .. } => Some(wanted),
            _ => None,
        }
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
