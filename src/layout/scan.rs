//! Reading the disk into a [`DiskState`].
//!
//! Reading is cheap on purpose: one `readdir` per managed folder (which also gives
//! each entry's type), one `readlink` per symbolic link in them, one `stat` per
//! declared target, each relative to an open folder ([`dirscan`]). The targets
//! are checked on a thread of their own while the managed folders are read
//! (whose `readlink`s are spread over the cores).

use std::collections::{BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, FileType};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use super::desired::{Desired, Rel, join, name, parent};
use super::dirscan::{self, Kind, OpenDir};
use super::manifest::{self, Manifest, Reading};
use super::report::Found;
use super::snapshot::{DirState, DiskState, Entry, SettingsState};
use super::{LayoutError, fsio, settings};

/// How often, and how far apart, a settings file that is not a JSON object is
/// read again before it is set aside as corrupt (300 ms in all: a save by the UI
/// takes microseconds).
const CORRUPT_RECHECKS: usize = 10;
const CORRUPT_RECHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(30);

/// Reads the disk for `desired`; `manifest` gives the manifest as read, waited
/// for only once the managed folders are read.
pub(crate) fn scan(desired: &Desired<'_>, manifest: Reading<'_>) -> Result<DiskState, LayoutError> {
    let root = match dir_state(&desired.data_dir)? {
        DirState::Blocked(_) => return Err(LayoutError::NotADirectory(desired.data_dir.clone())),
        state => state,
    };
    let mut snap = DiskState {
        root,
        dirs: FxHashMap::default(),
        entries: FxHashMap::default(),
        temps: Vec::new(),
        missing_targets: HashSet::new(),
        manifest: None,
        settings: SettingsState::NotManaged,
    };
    std::thread::scope(|s| {
        let targets = s.spawn(|| missing_targets(desired));
        let read = read_data_dir(desired, &mut snap, manifest);
        snap.missing_targets = fsio::joined(targets);
        read
    })?;
    Ok(snap)
}

/// Everything but the targets: the folders, what stands in them, recorded links
/// elsewhere, the settings file.
fn read_data_dir(
    desired: &Desired<'_>,
    snap: &mut DiskState,
    manifest: Reading<'_>,
) -> Result<(), LayoutError> {
    add_folders(desired, desired.dirs.iter().cloned(), snap)?;
    let mut swept = managed_entries(desired, snap)?;
    // Ignored unless the data dir is there (it could have been made since).
    let manifest = manifest()?.filter(|_| matches!(snap.root, DirState::Present { .. }));
    if let Some(m) = &manifest {
        recorded_elsewhere(desired, m, snap)?;
    }
    snap.settings = settings_state(desired, snap)?;
    // Other places the supervisor writes temporaries: the data dir, its state dir,
    // the settings file's folder.
    let mut others = vec![
        desired.data_dir.clone(),
        manifest::state_dir(&desired.data_dir),
    ];
    if let SettingsState::Present { path, .. } | SettingsState::Absent { path } = &snap.settings {
        others.extend(path.parent().map(Path::to_path_buf));
    }
    for dir in others {
        if !swept.contains(&dir) && dir.is_dir() {
            let read = |e| LayoutError::io("read", &dir, e);
            let open = OpenDir::open(&dir).map_err(read)?;
            let mut temps = Vec::new();
            open.list(|name, kind| {
                if fsio::is_temp_name(name) {
                    temps.push((name.to_owned(), kind));
                }
            })
            .map_err(read)?;
            for (name, kind) in temps {
                note_temp(&mut snap.temps, &open, &dir, &name, kind)?;
            }
            swept.insert(dir);
        }
    }
    snap.manifest = manifest;
    Ok(())
}

/// Adds the state of each folder (parents before children; a known folder is
/// not looked at again).
fn add_folders(
    desired: &Desired<'_>,
    folders: impl IntoIterator<Item = Rel>,
    snap: &mut DiskState,
) -> Result<(), LayoutError> {
    for rel in folders {
        let state = match snap.dir(parent(&rel)) {
            DirState::Present { .. } => dir_state(&desired.data_dir.join(&rel))?,
            DirState::Missing => DirState::Missing,
            DirState::Blocked(_) | DirState::Unreachable => DirState::Unreachable,
        };
        snap.dirs.insert(rel, state);
    }
    Ok(())
}

/// What stands in the managed folders (every entry: looking each name up to
/// skip a few user files would cost more than it saves) and the temporaries
/// there; returns the folders read. Folders are listed side by side, then their
/// links read side by side (listing a folder of thousands takes milliseconds).
fn managed_entries(
    desired: &Desired<'_>,
    snap: &mut DiskState,
) -> Result<BTreeSet<PathBuf>, LayoutError> {
    let folders: Vec<&Rel> = (desired.link_dirs.iter())
        .filter(|rel| matches!(snap.dir(rel), DirState::Present { .. }))
        .collect();
    let many = desired.links.len() >= 1024;
    let listed = fsio::par_map_if(many, &folders, |rel| list(desired, rel));
    let listed = listed.into_iter().collect::<Result<Vec<_>, _>>()?;
    let mut swept = BTreeSet::new();
    for folder in &listed {
        for (name, kind) in &folder.temps {
            note_temp(&mut snap.temps, &folder.dir, &folder.path, name, *kind)?;
        }
        swept.insert(folder.path.clone());
    }
    let found: Vec<(&Listed, &Rel, Option<Kind>)> = (listed.iter())
        .flat_map(|folder| {
            folder
                .names
                .iter()
                .map(move |(rel, kind)| (folder, rel, *kind))
        })
        .collect();
    let entries = fsio::par_map(&found, |(folder, rel, kind)| {
        let name = OsStr::new(name(rel));
        (folder.dir.entry(name, *kind))
            .map_err(|e| LayoutError::io("examine", &folder.path.join(name), e))
    });
    snap.entries.reserve(found.len());
    let names = listed.into_iter().flat_map(|folder| folder.names);
    for ((rel, _), entry) in names.zip(entries) {
        if let Some(entry) = entry? {
            snap.entries.insert(rel, entry);
        }
    }
    Ok(swept)
}

/// A managed folder, opened and listed.
struct Listed {
    path: PathBuf,
    dir: OpenDir,
    /// Entries by path (names that are not UTF-8 were neither declared nor
    /// recorded, and are left out).
    names: Vec<(Rel, Option<Kind>)>,
    /// Entries under the supervisor's temporary prefix.
    temps: Vec<(OsString, Option<Kind>)>,
}

fn list(desired: &Desired<'_>, rel: &Rel) -> Result<Listed, LayoutError> {
    let path = desired.data_dir.join(rel);
    let read = |e| LayoutError::io("read", &path, e);
    let dir = OpenDir::open(&path).map_err(read)?;
    let (mut names, mut temps) = (Vec::new(), Vec::new());
    dir.list(|name, kind| {
        if fsio::is_temp_name(name) {
            temps.push((name.to_owned(), kind));
        } else if let Some(name) = name.to_str() {
            names.push((join(rel, name), kind));
        }
    })
    .map_err(read)?;
    Ok(Listed {
        path,
        dir,
        names,
        temps,
    })
}

/// Recorded links outside today's managed folders (an old flavor, a removed
/// kind): their folders, then what stands at each.
fn recorded_elsewhere(
    desired: &Desired<'_>,
    m: &Manifest,
    snap: &mut DiskState,
) -> Result<(), LayoutError> {
    let records = || m.links.keys().chain(m.pending.keys());
    let mut folders = BTreeSet::new();
    let mut last = None;
    for rel in records() {
        // Records are sorted: links of one folder come in a run.
        let mut dir = parent(rel);
        if last == Some(dir) {
            continue;
        }
        last = Some(dir);
        while !dir.is_empty() && !snap.dirs.contains_key(dir) && !folders.contains(dir) {
            folders.insert(dir.to_string());
            dir = parent(dir);
        }
    }
    add_folders(desired, folders, snap)?;
    let mut folder: Option<(&str, bool)> = None;
    for rel in records() {
        // Decided once per run of one folder's records.
        let dir = parent(rel);
        let elsewhere = match folder {
            Some((last, elsewhere)) if last == dir => elsewhere,
            _ => {
                let elsewhere = !desired.link_dirs.contains(dir)
                    && matches!(snap.dir(dir), DirState::Present { .. });
                folder = Some((dir, elsewhere));
                elsewhere
            }
        };
        if elsewhere && let Some(entry) = lstat_entry(&desired.data_dir.join(rel))? {
            snap.entries.insert(rel.clone(), entry);
        }
    }
    Ok(())
}

/// Declared targets that do not exist.
fn missing_targets(desired: &Desired<'_>) -> HashSet<PathBuf> {
    dirscan::missing(desired.links.values().map(|w| w.target))
}

/// Follows links: a folder that is a user's link to another disk is `Present`.
fn dir_state(path: &Path) -> Result<DirState, LayoutError> {
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(DirState::Present {
            mode: m.permissions().mode() & 0o7777,
        }),
        Ok(_) => Ok(DirState::Blocked(
            lstat_entry(path)?.map_or(Found::Other, |e| e.found()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match lstat_entry(path)? {
            // A dangling link: perhaps a disk that is not mounted. Never replaced.
            Some(e) => Ok(DirState::Blocked(e.found())),
            None => Ok(DirState::Missing),
        },
        Err(e) => Err(LayoutError::io("examine", path, e)),
    }
}

/// What stands at `path` without following it; `None` when nothing does.
pub(crate) fn lstat_entry(path: &Path) -> Result<Option<Entry>, LayoutError> {
    match fs::symlink_metadata(path) {
        Ok(m) => entry_from(path, m.file_type()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LayoutError::io("examine", path, e)),
    }
}

fn entry_from(path: &Path, ft: FileType) -> Result<Option<Entry>, LayoutError> {
    Ok(Some(if ft.is_symlink() {
        match fs::read_link(path) {
            Ok(target) => Entry::Link(target),
            // Removed since the directory was read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(LayoutError::io("read link", path, e)),
        }
    } else if ft.is_file() {
        Entry::File
    } else if ft.is_dir() {
        Entry::Dir
    } else {
        Entry::Other
    }))
}

/// Only links and plain files under the temp prefix are leftovers; a directory
/// with that name is nobody's business of ours.
fn note_temp(
    temps: &mut Vec<PathBuf>,
    dir: &OpenDir,
    path: &Path,
    name: &OsStr,
    kind: Option<Kind>,
) -> Result<(), LayoutError> {
    let entry = dir
        .entry(name, kind)
        .map_err(|e| LayoutError::io("examine", &path.join(name), e))?;
    if matches!(entry, Some(Entry::Link(_) | Entry::File)) {
        temps.push(path.join(name));
    }
    Ok(())
}

fn settings_state(desired: &Desired<'_>, snap: &DiskState) -> Result<SettingsState, LayoutError> {
    let Some((rel, _)) = &desired.settings else {
        return Ok(SettingsState::NotManaged);
    };
    let path = desired.data_dir.join(rel);
    match snap.dir(parent(rel)) {
        DirState::Present { .. } => {}
        DirState::Missing => return Ok(SettingsState::Absent { path }),
        _ => return Ok(SettingsState::NotManaged),
    }
    let blocked = |found| SettingsState::Blocked {
        path: path.clone(),
        found,
    };
    let real = match lstat_entry(&path)? {
        None => return Ok(SettingsState::Absent { path }),
        Some(Entry::File) => path.clone(),
        // A user's link to their own file is followed, like a linked folder.
        Some(Entry::Link(target)) => match fs::canonicalize(&path) {
            Ok(real) if real.is_file() => real,
            _ => return Ok(blocked(Found::Link { target })),
        },
        Some(other) => return Ok(blocked(other.found())),
    };
    let read = |e| LayoutError::io("read", &real, e);
    let mut bytes = fs::read(&real).map_err(read)?;
    // The UI saves its settings in place (truncate, then write): a file caught
    // half-written is not corrupt. Look again for a while before believing it.
    for _ in 0..CORRUPT_RECHECKS {
        if settings::is_object(&bytes) {
            break;
        }
        std::thread::sleep(CORRUPT_RECHECK_EVERY);
        bytes = fs::read(&real).map_err(read)?;
    }
    let mode = fs::metadata(&real).map_err(read)?.permissions().mode() & 0o7777;
    Ok(SettingsState::Present {
        path: real,
        bytes,
        mode,
    })
}
