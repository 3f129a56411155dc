//! The pure planner: (desired state, snapshot of the disk) → actions.
//!
//! No I/O happens here, so every decision (what is owned, what is a conflict,
//! what is replaced) is unit- and property-tested on synthetic snapshots.
//!
//! Ownership is kept as the recorded manifest plus small deltas, so that an
//! unchanged relayout of 10,000 links copies nothing.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use super::action::{Action, Removal};
use super::desired::{Desired, Rel, Want, parent};
use super::manifest::{self, Links, Manifest, Owned};
use super::report::{Conflict, Dangling, Wanted};
use super::settings::{self, Merge};
use super::snapshot::{DirState, Entry, SettingsState, Snapshot};

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
pub(crate) fn plan(desired: &Desired, mut snap: Snapshot) -> Plan {
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
    let Ownership {
        owned,
        forget,
        adopt,
    } = verify(&snap, &recorded);
    let (mut pending, mut relabel, mut removed) = (Links::new(), Vec::new(), Vec::new());
    for (rel, want) in &desired.links {
        if !reachable(&snap, rel) {
            continue; // the folder's conflict is reported once, above
        }
        let target_ok = !snap.missing_targets.contains(&want.target);
        let new = || Owned {
            target: want.target.clone(),
            kind: want.kind(),
        };
        match (snap.entries.get(rel), owned.get(rel.as_str())) {
            (None, _) if target_ok => {
                actions.push(Action::CreateLink {
                    path: root.join(rel),
                    target: want.target.clone(),
                    wanted: want.wanted.clone(),
                });
                pending.insert(rel.clone(), new());
            }
            (None, _) => actions.push(dangling(root.join(rel), want)),
            (Some(Entry::Link(old)), Some(_)) if !target_ok => {
                actions.push(Action::RemoveLink {
                    path: root.join(rel),
                    target: old.clone(),
                    wanted: want.wanted.clone(),
                    why: Removal::TargetMissing,
                });
                actions.push(dangling(root.join(rel), want));
                removed.push(rel.clone());
            }
            (Some(Entry::Link(old)), Some(record)) if same(old, &want.target) => {
                if record.kind != want.kind() {
                    relabel.push((rel.clone(), new()));
                }
            }
            (Some(Entry::Link(old)), Some(_)) => {
                actions.push(Action::ReplaceLink {
                    path: root.join(rel),
                    old: old.clone(),
                    target: want.target.clone(),
                    wanted: want.wanted.clone(),
                });
                pending.insert(rel.clone(), new());
            }
            (Some(entry), _) => actions.push(Action::Conflict(Conflict {
                path: root.join(rel),
                found: entry.found(),
                wanted: want.wanted.clone(),
            })),
        }
    }
    // Owned links nobody declares any more (in record order, for a stable plan).
    for records in [&recorded.links, &recorded.pending] {
        for (rel, record) in undeclared(records, &desired.links) {
            let is_owned = owned
                .get(rel.as_str())
                .is_some_and(|o| std::ptr::eq(*o, record));
            if is_owned && matches!(snap.dir(parent(rel)), DirState::Present { .. }) {
                actions.push(Action::RemoveLink {
                    path: root.join(rel),
                    target: record.target.clone(),
                    wanted: wanted_of(rel, record),
                    why: Removal::Undeclared,
                });
                removed.push(rel.clone());
            }
        }
    }
    settings_actions(desired, &snap, &mut actions);
    Plan {
        data_dir: root.clone(),
        actions,
        recorded,
        forget,
        adopt,
        relabel,
        removed,
        pending,
    }
}

/// Which recorded links are the supervisor's now: those standing exactly as
/// recorded, or exactly as a pending intent said (adopted). Records in folders
/// that cannot be examined are kept; the others are forgotten.
fn verify<'m>(snap: &Snapshot, recorded: &'m Manifest) -> Ownership<'m> {
    let mut owned = HashMap::with_capacity(recorded.links.len());
    let (mut forget, mut adopt) = (Vec::new(), Vec::new());
    let stands = |rel: &str, record: &Owned| matches!(snap.entries.get(rel), Some(Entry::Link(t)) if same(t, &record.target));
    for (rel, record) in &recorded.links {
        match snap.dir(parent(rel)) {
            DirState::Present { .. } if stands(rel, record) => {
                owned.insert(rel.as_str(), record);
            }
            // Superseded by its pending record, below.
            DirState::Present { .. }
                if recorded.pending.get(rel).is_some_and(|p| stands(rel, p)) => {}
            DirState::Present { .. } | DirState::Missing => forget.push(rel.clone()),
            DirState::Blocked(_) | DirState::Unreachable => {
                owned.insert(rel.as_str(), record);
            }
        }
    }
    for (rel, record) in &recorded.pending {
        let here = matches!(snap.dir(parent(rel)), DirState::Present { .. });
        if here && !owned.contains_key(rel.as_str()) && stands(rel, record) {
            owned.insert(rel.as_str(), record);
            adopt.push((rel.clone(), record.clone()));
        }
    }
    Ownership {
        owned,
        forget,
        adopt,
    }
}

/// What [`verify`] found.
struct Ownership<'m> {
    /// The links that are the supervisor's now, by path, with their record.
    owned: HashMap<&'m str, &'m Owned>,
    /// Records to drop.
    forget: Vec<Rel>,
    /// Pending records to keep.
    adopt: Vec<(Rel, Owned)>,
}

/// The records whose path is not declared: one merge of two sorted maps rather
/// than a lookup per record.
fn undeclared<'a>(
    records: &'a Links,
    declared: &'a BTreeMap<Rel, Want>,
) -> impl Iterator<Item = (&'a Rel, &'a Owned)> {
    let mut declared = declared.keys().peekable();
    records.iter().filter(move |(rel, _)| {
        while declared.next_if(|d| *d < *rel).is_some() {}
        declared.peek() != Some(rel)
    })
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
