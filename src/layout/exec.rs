//! Carrying a plan out, crash-safely.
//!
//! Order of writes: folders, leftover temporaries, then (only if links are to be
//! created or replaced) the manifest with those links as `pending`, then the
//! links, an fsync of every folder whose links changed, the final manifest, and
//! the settings file. A kill at any point leaves links that are either recorded
//! or pending, and temporaries under a name only the supervisor uses: the next
//! run recognises all of them.
//!
//! The disk may change between the scan and a write; each write is made so that
//! it cannot clobber something new: `symlink` fails on an existing name, and a
//! link is only replaced or removed after re-reading that it still is ours.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::action::Action;
use super::manifest;
use super::plan::Plan;
use super::report::{Conflict, LayoutReport, Wanted};
use super::scan::lstat_entry;
use super::{LayoutError, LinkFailure, LinkFailures, fsio};

/// Creates the data dir and the supervisor's state dir when missing (they must
/// exist before the lock can be taken); returns how many were created.
pub(crate) fn prepare(data_dir: &Path, mode: u32) -> Result<usize, LayoutError> {
    let mut created = 0;
    for dir in [data_dir.to_path_buf(), manifest::state_dir(data_dir)] {
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(LayoutError::NotADirectory(dir)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(&dir)
                    .map_err(|e| LayoutError::io("create", &dir, e))?;
                set_mode(&dir, mode)?;
                created += 1;
            }
            Err(e) => return Err(LayoutError::io("examine", &dir, e)),
        }
    }
    Ok(created)
}

/// What became of one link action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Carried out.
    Done,
    /// Something not ours appeared at the path since the scan: left alone.
    Lost,
    /// Nothing to do any more (the link to remove is gone or no longer ours).
    Skipped,
}

/// Carries out `plan`: folders and temporaries, the intent record, the links
/// (folders in parallel: creating a link costs the kernel far more than the
/// call, and links in different folders do not contend), the final manifest,
/// the settings file.
pub(crate) fn execute(plan: Plan) -> Result<LayoutReport, LayoutError> {
    let data_dir = &plan.data_dir;
    let mut report = LayoutReport::default();
    let mut links: Vec<Vec<usize>> = Vec::new();
    let mut folder_of: BTreeMap<&Path, usize> = BTreeMap::new();
    for (i, action) in plan.actions.iter().enumerate() {
        let done = match action {
            Action::CreateDir { path, mode } => create_dir(path, *mode)?,
            Action::SetMode { path, mode } => {
                set_mode(path, *mode)?;
                true
            }
            Action::RemoveTemp { path } => remove(path)?,
            Action::CreateLink { path, .. }
            | Action::ReplaceLink { path, .. }
            | Action::RemoveLink { path, .. } => {
                let dir = path.parent().unwrap_or(Path::new(""));
                let group = *folder_of.entry(dir).or_insert_with(|| {
                    links.push(Vec::new());
                    links.len() - 1
                });
                links[group].push(i);
                false
            }
            _ => false,
        };
        report.actions_applied += usize::from(done);
    }
    if !plan.pending.is_empty() {
        manifest::write(data_dir, &plan.start(), &plan.pending)?;
        report.actions_applied += 1;
    }
    let many = links.iter().map(Vec::len).sum::<usize>() >= 1024;
    let outcomes: Vec<(usize, Result<Outcome, LayoutError>)> =
        fsio::par_map_if(many, &links, |group| {
            let mut out = Vec::with_capacity(group.len());
            for &i in group {
                // A failing link never stops the others: each is recorded
                // as done or not, and the next layout completes the rest.
                out.push((i, link_action(&plan.actions[i])));
            }
            out
        })
        .into_iter()
        .flatten()
        .collect();
    let mut outcome_of = vec![None; plan.actions.len()];
    let mut failed = Vec::new();
    for (i, outcome) in outcomes {
        match outcome {
            Ok(o) => outcome_of[i] = Some(o),
            Err(error) => failed.push((i, error)),
        }
    }

    let mut lost = Vec::new();
    let mut changed_dirs = BTreeSet::new();
    for (action, outcome) in plan.actions.iter().zip(outcome_of) {
        match (action, outcome) {
            (Action::Conflict(c), _) => report.conflicts.push(c.clone()),
            (Action::Dangling(d), _) => report.dangling.push(d.clone()),
            (
                Action::CreateLink { path, wanted, .. }
                | Action::ReplaceLink { path, wanted, .. }
                | Action::RemoveLink { path, wanted, .. },
                Some(outcome),
            ) => match outcome {
                Outcome::Done => {
                    note_change(&mut report, wanted, path, &mut changed_dirs);
                    report.actions_applied += 1;
                }
                Outcome::Lost => {
                    lost.push(path);
                    lost_race(&mut report, path, wanted)?;
                }
                Outcome::Skipped => {}
            },
            _ => {}
        }
    }
    for dir in &changed_dirs {
        fsio::sync_dir(dir).map_err(|e| LayoutError::io("sync", dir, e))?;
    }
    if plan.writes_manifest() {
        let mut finish = plan.finish();
        for path in lost {
            let rel = path.strip_prefix(data_dir).unwrap_or(path);
            finish.remove(&*rel.to_string_lossy());
        }
        // A failed link action left the link as it was before the layout.
        let start = plan.start();
        for (i, _) in &failed {
            let Some(path) = plan.actions[*i].link_path() else {
                continue;
            };
            let rel = path.strip_prefix(data_dir).unwrap_or(path);
            let rel = rel.to_string_lossy();
            match start.get(&*rel) {
                Some(owned) => {
                    finish.insert(rel.clone().into_owned(), owned.clone());
                }
                None => {
                    finish.remove(&*rel);
                }
            }
        }
        manifest::write(data_dir, &finish, &Default::default())?;
        report.actions_applied += 1;
    }
    for action in &plan.actions {
        match action {
            Action::SetAsideSettings { path, .. } => {
                report.corrupt_settings_moved_to = Some(set_aside(path)?);
            }
            Action::WriteSettings {
                path,
                contents,
                mode,
                ..
            } => {
                fsio::write_atomic(path, contents, *mode)
                    .map_err(|e| LayoutError::io("write", path, e))?;
                report.settings_written = true;
            }
            _ => continue,
        }
        report.actions_applied += 1;
    }
    if failed.is_empty() {
        return Ok(report);
    }
    let failures = failed
        .into_iter()
        .filter_map(|(i, error)| {
            let wanted = plan.actions[i].link_wanted()?.clone();
            Some(LinkFailure { wanted, error })
        })
        .collect();
    Err(LayoutError::Links(LinkFailures(failures)))
}

/// One link action; the disk is re-checked so nothing new is clobbered.
fn link_action(action: &Action) -> Result<Outcome, LayoutError> {
    Ok(match action {
        Action::CreateLink { path, target, .. } => match symlink(target, path) {
            Ok(()) => Outcome::Done,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Outcome::Lost,
            Err(e) => return Err(LayoutError::io("create link", path, e)),
        },
        Action::ReplaceLink {
            path, old, target, ..
        } => match replace_link(path, old, target)? {
            true => Outcome::Done,
            false => Outcome::Lost,
        },
        Action::RemoveLink { path, target, .. } => {
            match still_points(path, target) && remove(path)? {
                true => Outcome::Done,
                false => Outcome::Skipped,
            }
        }
        _ => Outcome::Skipped,
    })
}

/// Something appeared at `path` after the scan: it is the user's, so it is
/// reported like any conflict and left alone.
fn lost_race(report: &mut LayoutReport, path: &Path, wanted: &Wanted) -> Result<(), LayoutError> {
    if let Some(entry) = lstat_entry(path)? {
        report.conflicts.push(Conflict {
            path: path.to_path_buf(),
            found: entry.found(),
            wanted: wanted.clone(),
        });
    }
    Ok(())
}

fn note_change(
    report: &mut LayoutReport,
    wanted: &Wanted,
    path: &Path,
    changed_dirs: &mut BTreeSet<PathBuf>,
) {
    match wanted {
        Wanted::Model { kind, .. } => {
            report.changed_kinds.insert(*kind);
        }
        _ => report.extensions_changed = true,
    }
    if let Some(dir) = path.parent() {
        changed_dirs.insert(dir.to_path_buf());
    }
}

/// Points the link at `path` to `target` without a moment where the name is
/// missing: a new link under a temporary name is renamed over the old one, but
/// only if the old one is still the link we own.
fn replace_link(path: &Path, old: &Path, target: &Path) -> Result<bool, LayoutError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = fsio::temp_path(dir);
    symlink(target, &temp).map_err(|e| LayoutError::io("create link", &temp, e))?;
    if !still_points(path, old) {
        remove(&temp)?;
        return Ok(false);
    }
    fs::rename(&temp, path).map_err(|e| LayoutError::io("rename over", path, e))?;
    Ok(true)
}

fn still_points(path: &Path, target: &Path) -> bool {
    fs::read_link(path).is_ok_and(|t| t == target)
}

/// Creates one folder (its parent exists: the plan lists parents first).
fn create_dir(path: &Path, mode: u32) -> Result<bool, LayoutError> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            set_mode(path, mode)?;
            Ok(true)
        }
        // Appeared since the scan: not ours, keep its mode.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(LayoutError::io("create", path, e)),
    }
}

/// The umask filters the mode given to `mkdir`; the configured mode must not be.
fn set_mode(path: &Path, mode: u32) -> Result<(), LayoutError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| LayoutError::io("set the mode of", path, e))
}

fn remove(path: &Path) -> Result<bool, LayoutError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LayoutError::io("remove", path, e)),
    }
}

/// Moves an unparsable settings file to `<name>.corrupt-<UTC time>`, never over
/// an earlier one (a hard link fails on an existing name), and returns where.
fn set_aside(path: &Path) -> Result<PathBuf, LayoutError> {
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace(':', "");
    let base = format!("{}.corrupt-{stamp}", path.display());
    for n in 0..1000 {
        let dest = PathBuf::from(match n {
            0 => base.clone(),
            n => format!("{base}.{n}"),
        });
        match fs::hard_link(path, &dest) {
            Ok(()) => {
                remove(path)?;
                return Ok(dest);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(LayoutError::io("set aside", path, e)),
        }
    }
    Err(LayoutError::io(
        "set aside",
        path,
        io::Error::new(io::ErrorKind::AlreadyExists, "too many earlier copies"),
    ))
}
