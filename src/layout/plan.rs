//! The pure planner: (desired state, snapshot of the disk) → actions.
//!
//! No I/O happens here, so every decision (what is owned, what is a conflict,
//! what is replaced) is unit- and property-tested on synthetic snapshots.
//!
//! Ownership is kept as the recorded manifest plus small deltas, so that an
//! unchanged relayout of 10,000 links copies nothing; the declared and the
//! recorded links are walked together in path order (both are sorted), so each
//! path costs one lookup on disk and none in another map.

use std::fmt;
use std::path::{Path, PathBuf};

use super::action::{Action, Removal};
use super::desired::{Desired, Rel, Want, wanted};
use super::manifest::{self, Links, Manifest, Owned};
use super::report::{Conflict, Dangling, Wanted};
use super::rows::{FolderOf, Row, rows};
use super::settings::{self, Merge};
use super::snapshot::{DirState, DiskState, Entry, SettingsState};

/// A layout decided but not yet carried out (what `layout --dry-run` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The data dir.
    pub(crate) data_dir: PathBuf,
    /// The steps, in execution order.
    pub actions: Vec<Action>,
    /// What the manifest said (empty when there is none).
    pub(crate) recorded: Manifest,
    /// Recorded links that are gone or no longer the supervisor's.
    pub(crate) forget: Vec<Rel>,
    /// Pending records of a killed run whose links stand exactly as intended.
    pub(crate) adopt: Vec<(Rel, Owned)>,
    /// Owned links whose record changes without a filesystem change (the kind).
    pub(crate) relabel: Vec<(Rel, Owned)>,
    /// Owned links to be removed.
    pub(crate) removed: Vec<Rel>,
    /// Links to be created or replaced: the intent recorded before any of them.
    pub(crate) pending: Links,
}

impl Plan {
    /// Owned links before the layout.
    pub(crate) fn start(&self) -> Links {
        let mut links = self.recorded.links.clone();
        for rel in &self.forget {
            links.remove(rel);
        }
        links.extend(self.adopt.iter().cloned());
        links
    }

    /// Owned links after the layout, if every action succeeds.
    pub(crate) fn finish(&self) -> Links {
        let mut links = self.start();
        for rel in &self.removed {
            links.remove(rel);
        }
        links.extend(self.relabel.iter().cloned());
        links.extend(self.pending.iter().map(|(r, o)| (r.clone(), o.clone())));
        links
    }

    /// Whether the manifest must be (re)written at the end.
    pub fn writes_manifest(&self) -> bool {
        !(self.recorded.pending.is_empty()
            && self.forget.is_empty()
            && self.adopt.is_empty()
            && self.relabel.is_empty()
            && self.removed.is_empty()
            && self.pending.is_empty())
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
                self.finish().len()
            )?;
        }
        Ok(())
    }
}

/// Whether a link's stored target is exactly `target` (bytes, not `Path`
/// equality, which would call `a//b` and `a/b` the same).
fn same(stored: &Path, target: &Path) -> bool {
    stored.as_os_str() == target.as_os_str()
}

/// Decides the layout.
pub(crate) fn plan(desired: &Desired<'_>, mut snap: DiskState) -> Plan {
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

    let recorded = snap.manifest.take().unwrap_or_default();
    let mut links = Decided::default();
    let mut folders = FolderOf::new(&snap);
    // One pass over the declared and the recorded paths together, in path order:
    // each path is looked up on disk once, and its folder once per folder.
    for row in rows(&desired.links, &recorded) {
        let (rel, dir) = (row.rel, folders.of(row.rel));
        let entry = snap.entries.get(rel);
        let owner = links.owner(&row, dir, entry);
        match row.want {
            Some(want) if reachable(dir) => {
                let target_ok = !snap.missing_targets.contains(want.target);
                links.declared(root, rel, want, entry, owner, target_ok);
            }
            // The folder's conflict is reported once, above.
            Some(_) => {}
            None => links.undeclared(root, rel, owner, dir),
        }
    }
    actions.append(&mut links.actions);
    // Owned links nobody declares any more, after the declared ones.
    actions.append(&mut links.removals);
    settings_actions(desired, &snap, &mut actions);
    Plan {
        data_dir: root.clone(),
        actions,
        recorded,
        forget: links.forget,
        adopt: links.adopt,
        relabel: links.relabel,
        removed: links.removed,
        pending: links.pending,
    }
}

/// What the plan decides about links, beside the actions.
#[derive(Default)]
struct Decided {
    /// Recorded links that are gone or no longer the supervisor's.
    forget: Vec<Rel>,
    /// Pending records whose links stand exactly as intended.
    adopt: Vec<(Rel, Owned)>,
    /// Owned links whose record changes (the kind).
    relabel: Vec<(Rel, Owned)>,
    /// Owned links to be removed.
    removed: Vec<Rel>,
    /// Links to be created or replaced.
    pending: Links,
    /// The actions for declared links.
    actions: Vec<Action>,
    /// The removals of undeclared links, which follow the declared actions.
    removals: Vec<Action>,
}

impl Decided {
    /// Whose link stands at the row's path now: the recorded link if it stands
    /// exactly as recorded, else a pending record if its link does (adopted);
    /// a record in a folder that cannot be examined is kept. Records that are
    /// no longer true are forgotten.
    fn owner<'a>(
        &mut self,
        row: &Row<'a>,
        dir: &DirState,
        entry: Option<&Entry>,
    ) -> Option<&'a Owned> {
        let stands =
            |record: &Owned| matches!(entry, Some(Entry::Link(t)) if same(t, &record.target));
        match dir {
            DirState::Present { .. } => {
                if let Some(link) = row.link.filter(|l| stands(l)) {
                    return Some(link);
                }
                if let Some(pending) = row.pending.filter(|p| stands(p)) {
                    // Supersedes the recorded link, if any.
                    self.adopt.push((row.rel.clone(), pending.clone()));
                    return Some(pending);
                }
            }
            DirState::Missing => {}
            DirState::Blocked(_) | DirState::Unreachable => return row.link,
        }
        if row.link.is_some() {
            self.forget.push(row.rel.clone());
        }
        None
    }

    /// Removes an owned link that nobody declares any more, if its folder is there.
    fn undeclared(&mut self, root: &Path, rel: &Rel, owner: Option<&Owned>, dir: &DirState) {
        if let (Some(record), DirState::Present { .. }) = (owner, dir) {
            self.removals.push(Action::RemoveLink {
                path: root.join(rel),
                target: record.target.clone(),
                wanted: wanted(rel, record.kind),
                why: Removal::Undeclared,
            });
            self.removed.push(rel.clone());
        }
    }

    /// The actions for a declared link whose folder is there or will be.
    fn declared(
        &mut self,
        root: &Path,
        rel: &Rel,
        want: &Want<'_>,
        entry: Option<&Entry>,
        owner: Option<&Owned>,
        target_ok: bool,
    ) {
        let actions = &mut self.actions;
        let new = || Owned {
            target: want.target.to_path_buf(),
            kind: want.kind,
        };
        match (entry, owner) {
            (None, _) if target_ok => {
                actions.push(Action::CreateLink {
                    path: root.join(rel),
                    target: want.target.to_path_buf(),
                    wanted: wanted(rel, want.kind),
                });
                self.pending.insert(rel.clone(), new());
            }
            (None, _) => actions.push(dangling(root, rel, want)),
            (Some(Entry::Link(old)), Some(_)) if !target_ok => {
                actions.push(Action::RemoveLink {
                    path: root.join(rel),
                    target: old.clone(),
                    wanted: wanted(rel, want.kind),
                    why: Removal::TargetMissing,
                });
                actions.push(dangling(root, rel, want));
                self.removed.push(rel.clone());
            }
            (Some(Entry::Link(old)), Some(record)) if same(old, want.target) => {
                if record.kind != want.kind {
                    self.relabel.push((rel.clone(), new()));
                }
            }
            (Some(Entry::Link(old)), Some(_)) => {
                actions.push(Action::ReplaceLink {
                    path: root.join(rel),
                    old: old.clone(),
                    target: want.target.to_path_buf(),
                    wanted: wanted(rel, want.kind),
                });
                self.pending.insert(rel.clone(), new());
            }
            (Some(entry), _) => actions.push(Action::Conflict(Conflict {
                path: root.join(rel),
                found: entry.found(),
                wanted: wanted(rel, want.kind),
            })),
        }
    }
}

/// Whether links can be made in a folder in this state (it is there or will be).
fn reachable(dir: &DirState) -> bool {
    matches!(dir, DirState::Present { .. } | DirState::Missing)
}

fn dangling(root: &Path, rel: &str, want: &Want<'_>) -> Action {
    Action::Dangling(Dangling {
        link: root.join(rel),
        target: want.target.to_path_buf(),
        wanted: wanted(rel, want.kind),
    })
}

fn settings_actions(desired: &Desired<'_>, snap: &DiskState, actions: &mut Vec<Action>) {
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
