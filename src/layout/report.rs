//! What a layout tells its caller: the conflicts and missing targets it left alone,
//! and which parts of the UI must be told to rescan.
//!
//! These types are the daemon's and the status API's view of a layout, so they are
//! plain data: serializable, comparable, and each prints as one line.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::ui::flavor::ModelKind;

/// The declaration (or built-in need) that wanted a path.
///
/// Carried in conflicts and removals so a message says *why* the supervisor cared
/// about a path, in the config file's own spelling.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Wanted {
    /// `models.<kind>."<name>"`.
    Model {
        /// The model kind (decides the folder and the refresh endpoint).
        kind: ModelKind,
        /// The link's file name.
        name: String,
    },
    /// `extensions."<name>"`.
    Extension {
        /// The link's name under the extensions folder.
        name: String,
    },
    /// A folder the UI needs before it starts.
    Folder,
    /// The file the `[settings]` table is merged into.
    Settings,
}

impl fmt::Display for Wanted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Wanted::Model { kind, name } => write!(f, "models.{kind}.{name:?}"),
            Wanted::Extension { name } => write!(f, "extensions.{name:?}"),
            Wanted::Folder => f.write_str("a folder the UI needs"),
            Wanted::Settings => f.write_str("[settings]"),
        }
    }
}

/// What was found at a path the supervisor wanted but does not own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Found {
    /// A regular file.
    File,
    /// A real directory.
    Directory,
    /// A symbolic link the supervisor did not make (or, for a folder, one that
    /// does not lead to a directory).
    Link {
        /// Where the link points, as stored in the link.
        target: PathBuf,
    },
    /// A socket, FIFO or device node.
    Other,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::File => f.write_str("a regular file"),
            Found::Directory => f.write_str("a directory"),
            Found::Link { target } => write!(f, "a symbolic link to {}", target.display()),
            Found::Other => f.write_str("a special file"),
        }
    }
}

/// Something not made by the supervisor stands where the layout wanted to put
/// something: it is kept untouched, and the rest of the layout proceeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The contested path.
    pub path: PathBuf,
    /// What is there.
    pub found: Found,
    /// What wanted the path.
    pub wanted: Wanted,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match &self.wanted {
            Wanted::Folder => write!(
                f,
                "{path}: the UI needs a folder here, but {} is there; left untouched",
                self.found
            ),
            wanted => write!(
                f,
                "{path}: wanted by {wanted}, but {} not made by the supervisor is there; left untouched",
                self.found
            ),
        }
    }
}

/// A declared link whose target does not exist (typically garbage-collected from
/// the Nix store): the link is not created, and a stale one the supervisor owned
/// is removed, so the UI never lists a model it cannot load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dangling {
    /// Where the link belongs.
    pub link: PathBuf,
    /// The declared target that is missing.
    pub target: PathBuf,
    /// The declaration.
    pub wanted: Wanted,
}

impl fmt::Display for Dangling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: target {} of {} does not exist; not linked",
            self.link.display(),
            self.target.display(),
            self.wanted
        )
    }
}

/// The outcome of one [`super::apply`], for logs, status and the refresh calls the
/// daemon makes afterwards.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayoutReport {
    /// Filesystem writes performed; 0 for a relayout with nothing changed.
    pub actions_applied: usize,
    /// Paths left untouched because something else stands there.
    pub conflicts: Vec<Conflict>,
    /// Declared targets that do not exist.
    pub dangling: Vec<Dangling>,
    /// Model kinds whose links were created, replaced or removed: the UI must
    /// rescan these (`ModelKind::refresh_endpoint`).
    pub changed_kinds: BTreeSet<ModelKind>,
    /// Whether an extension link changed (extensions load only at UI start).
    pub extensions_changed: bool,
    /// Whether the settings file was written.
    pub settings_written: bool,
    /// Where an unparsable settings file was moved before a fresh one was written.
    pub corrupt_settings_moved_to: Option<PathBuf>,
}
