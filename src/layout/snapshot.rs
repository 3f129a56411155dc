//! What is on disk, as plain data, so the planner can be pure ([`super::scan`]
//! reads it).

use std::collections::HashSet;
use std::path::PathBuf;

use rustc_hash::FxHashMap;

use super::desired::Rel;
use super::manifest::Manifest;
use super::report::Found;

/// The state of a folder the layout cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DirState {
    /// Not there (the parent is a directory, or missing too).
    Missing,
    /// A directory, or a link to one (a user's other disk is followed).
    Present {
        /// Permission bits.
        mode: u32,
    },
    /// Something else stands at the folder's path.
    Blocked(Found),
    /// An ancestor is blocked: nothing below can be examined or changed.
    Unreachable,
}

/// What stands at a path that matters (a declared or a recorded link).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Entry {
    /// A symbolic link with this stored target.
    Link(PathBuf),
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else.
    Other,
}

impl Entry {
    /// How a conflict names what was found.
    pub(crate) fn found(&self) -> Found {
        match self {
            Entry::Link(target) => Found::Link {
                target: target.clone(),
            },
            Entry::File => Found::File,
            Entry::Dir => Found::Directory,
            Entry::Other => Found::Other,
        }
    }
}

/// The managed settings file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SettingsState {
    /// No `[settings]`, or its folder is unreachable.
    NotManaged,
    /// No file yet; it would be written at `path`.
    Absent { path: PathBuf },
    /// A regular file (at `path`, after following a user's link), its bytes and mode.
    Present {
        path: PathBuf,
        bytes: Vec<u8>,
        mode: u32,
    },
    /// Something that is not a regular file stands at `path`.
    Blocked { path: PathBuf, found: Found },
}

/// Everything the planner needs to know about the disk.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DiskState {
    /// The data dir itself (never `Blocked`: that is an error).
    pub root: DirState,
    /// Folders: the desired ones and the parents of recorded links.
    pub dirs: FxHashMap<Rel, DirState>,
    /// What stands at declared and recorded link paths; absent = nothing.
    /// (Fx-hashed: the planner looks every link up here, and SipHash's
    /// resistance to chosen keys buys nothing against names in one's own disk.)
    pub entries: FxHashMap<Rel, Entry>,
    /// Absolute paths of the supervisor's leftover temporaries.
    pub temps: Vec<PathBuf>,
    /// Declared targets that do not exist (usually none, so that checking a
    /// target costs no hashing).
    pub missing_targets: HashSet<PathBuf>,
    /// The manifest; `None` when there is none.
    pub manifest: Option<Manifest>,
    /// The settings file.
    pub settings: SettingsState,
}

impl DiskState {
    /// The state of a folder (`""` is the data dir); folders the scan did not
    /// look at count as unreachable, so nothing is decided about them.
    pub(crate) fn dir(&self, rel: &str) -> &DirState {
        if rel.is_empty() {
            return &self.root;
        }
        self.dirs.get(rel).unwrap_or(&DirState::Unreachable)
    }
}
