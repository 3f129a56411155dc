//! The content-addressed cache: `<hex>` for verified files, `<hex>.part` for
//! those still arriving, and the sweep that removes what no model declares.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::config::download::{CACHE_DIR, Sha256};

/// Suffix of a file still being downloaded.
pub const PART: &str = ".part";

/// The cache folder of a data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CACHE_DIR)
}

/// The `.part` of a digest.
pub fn part_path(data_dir: &Path, sha256: &Sha256) -> PathBuf {
    dir(data_dir).join(format!("{}{PART}", sha256.hex()))
}

/// Makes the cache folder (and the supervisor's folder above it) with `mode`.
pub fn ensure_dir(data_dir: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir(data_dir))
}

/// Makes a rename in `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// [`sweep`] after a layout, its outcome logged (a failed sweep only leaves
/// files behind for the next one). Called by whoever laid out: the core's
/// layout task, the `layout` and `fetch-models` commands.
pub fn sweep_after_layout(config: &Config) {
    match sweep(config) {
        Ok(removed) if !removed.is_empty() => {
            tracing::info!(
                "removed {} undeclared downloads: {}",
                removed.len(),
                removed.join(", ")
            )
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot sweep the download cache: {e}"),
    }
}

/// Removes cached files (finished or partial) whose digest no model declares.
/// Called after the layout that dropped their links, so no managed link is
/// left pointing at a removed file. Returns the names removed.
pub fn sweep(config: &Config) -> io::Result<Vec<String>> {
    let declared: BTreeSet<String> = config
        .downloads
        .models
        .values()
        .flat_map(|files| files.values())
        .map(|d| d.sha256.hex())
        .collect();
    let dir = dir(&config.data.dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let hex = name.strip_suffix(PART).unwrap_or(name);
        // Only names of our own shape: anything else is not ours to remove.
        let ours = hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit());
        if ours && !declared.contains(hex) && entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}
