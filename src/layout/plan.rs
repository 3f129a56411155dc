//! The pure planner: (desired state, snapshot of the disk) → actions.
//!
//! No I/O happens here, so every decision (what is owned, what is a conflict,
//! what is replaced) is unit- and property-tested on synthetic snapshots.

use std::fmt;
use std::path::PathBuf;

use super::desired::{Desired, Want, parent};
use super::manifest::{self, Links, Manifest, Owned};
use super::report::{Conflict, Dangling, Wanted};
use super::settings::{self, Merge};
use super::snapshot::{DirState, Entry, SettingsState, Snapshot};

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

/// A layout decided but not yet carried out (what `layout --dry-run` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The data dir.
    pub(crate) data_dir: PathBuf,
    /// The steps, in execution order.
    pub actions: Vec<Action>,
    /// What the manifest said.
    pub(crate) recorded: Option<Manifest>,
    /// Owned links before the layout: written with the pending links as the
    /// intent record before any link is created or replaced.
    pub(crate) start: Links,
    /// Links to be created or replaced.
    pub(crate) pending: Links,
    /// Owned links after the layout.
    pub(crate) finish: Links,
}

impl Plan {
    /// Whether the manifest must be (re)written at the end.
    pub fn writes_manifest(&self) -> bool {
        manifest_differs(self.recorded.as_ref(), &self.finish)
    }

    /// The conflicts the plan reports.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> {
        self.actions.iter().filter_map(|a| match a {
            Action::Conflict(c) => Some(c),
            _ => None,
        })
    }

    /// Whether applying the plan would write nothing at all.
    pub fn is_noop(&self) -> bool {
        !self.writes_manifest() && !self.actions.iter().any(Action::writes)
    }
}

/// Whether `links` (with nothing pending) differs from what the manifest holds.
pub(crate) fn manifest_differs(recorded: Option<&Manifest>, links: &Links) -> bool {
    match recorded {
        None => !links.is_empty(),
        Some(m) => !m.pending.is_empty() || m.links != *links,
    }
}

impl fmt::Display for Plan {
    /// One action a line; the final manifest write last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for action in &self.actions {
            writeln!(f, "{action}")?;
        }
        if self.writes_manifest() {
            writeln!(
                f,
                "write {} ({} owned links)",
                manifest::path(&self.data_dir).display(),
                self.finish.len()
            )?;
        }
        Ok(())
    }
}

/// Decides the layout.
pub(crate) fn plan(desired: &Desired, snap: &Snapshot) -> Plan {
    let root = &desired.data_dir;
    let mut actions = Vec::new();
    match snap.root {
        DirState::Missing => actions.push(Action::CreateDir {
            path: root.clone(),
            mode: desired.mode,
        }),
        DirState::Present { mode } if mode != desired.mode => actions.push(Action::SetMode {
            path: root.clone(),
            mode: desired.mode,
        }),
        _ => {}
    }
    for rel in &desired.dirs {
        match snap.dir(rel) {
            DirState::Missing => actions.push(Action::CreateDir {
                path: root.join(rel),
                mode: desired.mode,
            }),
            DirState::Blocked(found) => actions.push(Action::Conflict(Conflict {
                path: root.join(rel),
                found: found.clone(),
                wanted: Wanted::Folder,
            })),
            DirState::Present { .. } | DirState::Unreachable => {}
        }
    }
    actions.extend(
        snap.temps
            .iter()
            .map(|p| Action::RemoveTemp { path: p.clone() }),
    );

    let start = owned_now(snap);
    let mut finish = start.clone();
    let mut pending = Links::new();
    for (rel, want) in &desired.links {
        if !reachable(snap, rel) {
            continue; // the folder's conflict is reported once, above
        }
        let path = root.join(rel);
        let target_ok = snap.present_targets.contains(&want.target);
        let new = Owned {
            target: want.target.clone(),
            kind: want.kind(),
        };
        let wanted = want.wanted.clone();
        match (snap.entries.get(rel), start.contains_key(rel)) {
            (None, _) if target_ok => {
                actions.push(Action::CreateLink {
                    path,
                    target: want.target.clone(),
                    wanted,
                });
                pending.insert(rel.clone(), new.clone());
                finish.insert(rel.clone(), new);
            }
            (None, _) => actions.push(dangling(path, want)),
            (Some(Entry::Link(old)), true) if !target_ok => {
                actions.push(Action::RemoveLink {
                    path: path.clone(),
                    target: old.clone(),
                    wanted,
                    why: Removal::TargetMissing,
                });
                actions.push(dangling(path, want));
                finish.remove(rel);
            }
            (Some(Entry::Link(old)), true) if *old == want.target => {
                finish.insert(rel.clone(), new);
            }
            (Some(Entry::Link(old)), true) => {
                actions.push(Action::ReplaceLink {
                    path,
                    old: old.clone(),
                    target: want.target.clone(),
                    wanted,
                });
                pending.insert(rel.clone(), new.clone());
                finish.insert(rel.clone(), new);
            }
            (Some(entry), _) => actions.push(Action::Conflict(Conflict {
                path,
                found: entry.found(),
                wanted,
            })),
        }
    }
    for (rel, owned) in &start {
        let here_now = matches!(snap.dir(parent(rel)), DirState::Present { .. });
        if here_now && !desired.links.contains_key(rel) {
            actions.push(Action::RemoveLink {
                path: root.join(rel),
                target: owned.target.clone(),
                wanted: wanted_of(rel, owned),
                why: Removal::Undeclared,
            });
            finish.remove(rel);
        }
    }
    settings_actions(desired, snap, &mut actions);
    Plan {
        data_dir: root.clone(),
        actions,
        recorded: snap.manifest.clone(),
        start,
        pending,
        finish,
    }
}

/// Recorded links still standing exactly as recorded (or as a pending intent said
/// they would be). Links in unreachable folders cannot be checked and stay recorded.
fn owned_now(snap: &Snapshot) -> Links {
    let Some(m) = &snap.manifest else {
        return Links::new();
    };
    let mut owned = Links::new();
    for rel in m.links.keys().chain(m.pending.keys()) {
        match snap.dir(parent(rel)) {
            DirState::Present { .. } => {
                let Some(Entry::Link(target)) = snap.entries.get(rel) else {
                    continue;
                };
                let record = [m.links.get(rel), m.pending.get(rel)]
                    .into_iter()
                    .flatten()
                    .find(|o| o.target == *target);
                if let Some(o) = record {
                    owned.insert(rel.clone(), o.clone());
                }
            }
            DirState::Missing => {}
            DirState::Blocked(_) | DirState::Unreachable => {
                if let Some(o) = m.links.get(rel) {
                    owned.insert(rel.clone(), o.clone());
                }
            }
        }
    }
    owned
}

/// Whether links can be made in the folder of `rel` (it is there or will be).
fn reachable(snap: &Snapshot, rel: &str) -> bool {
    matches!(
        snap.dir(parent(rel)),
        DirState::Present { .. } | DirState::Missing
    )
}

fn dangling(link: PathBuf, want: &Want) -> Action {
    Action::Dangling(Dangling {
        link,
        target: want.target.clone(),
        wanted: want.wanted.clone(),
    })
}

/// The declaration an owned but undeclared link once had, from its record.
fn wanted_of(rel: &str, owned: &Owned) -> Wanted {
    let name = rel.rsplit('/').next().unwrap_or(rel).to_string();
    match owned.kind {
        Some(kind) => Wanted::Model { kind, name },
        None => Wanted::Extension { name },
    }
}

fn settings_actions(desired: &Desired, snap: &Snapshot, actions: &mut Vec<Action>) {
    let Some((_, managed)) = &desired.settings else {
        return;
    };
    let (path, existing, mode) = match &snap.settings {
        SettingsState::NotManaged => return,
        SettingsState::Blocked { path, found } => {
            actions.push(Action::Conflict(Conflict {
                path: path.clone(),
                found: found.clone(),
                wanted: Wanted::Settings,
            }));
            return;
        }
        SettingsState::Absent { path } => (path, None, None),
        SettingsState::Present { path, bytes, mode } => (path, Some(bytes.as_slice()), Some(*mode)),
    };
    let merged = match settings::merge(existing, managed) {
        Ok(merged) => merged,
        Err(reason) => {
            actions.push(Action::SetAsideSettings {
                path: path.clone(),
                reason,
            });
            settings::merge(None, managed).unwrap_or(Merge::Unchanged)
        }
    };
    if let Merge::Write { contents, keys } = merged {
        actions.push(Action::WriteSettings {
            path: path.clone(),
            keys,
            contents,
            mode,
        });
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
