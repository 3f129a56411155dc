//! The few filesystem primitives the layout needs to stay crash-safe: recognisable
//! temporary names, atomic file replacement, directory fsync, and the lock that
//! keeps two layouts of one data dir from interleaving.

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Every temporary name the supervisor creates starts with this, so that leftovers
/// of a killed run are recognisably its own (config names never start with `.`).
pub(crate) const TEMP_PREFIX: &str = ".sd-webui-supervisor.tmp.";

/// Distinguishes temporaries made by one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh temporary path in `dir`: `<TEMP_PREFIX><pid>.<n>`. Short, so that it
/// never exceeds the file name limit whatever the final name is.
pub(crate) fn temp_path(dir: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()))
}

/// Whether a directory entry is a temporary left by the supervisor.
pub(crate) fn is_temp_name(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Replaces `path` with `contents` so that readers see the old or the new file,
/// never a torn one, even across a crash: temp file, fsync, rename, fsync the dir.
/// `mode` sets the new file's permission bits (to keep a user's mode).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = temp_path(dir);
    let result = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&temp)?;
        if let Some(mode) = mode {
            // The open mode is filtered by the umask; the user's mode is not.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
        }
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Makes the entries of `dir` (links created, renamed, removed) durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive lock on a data dir, held for one whole layout (released on drop).
///
/// The daemon's relayout and an admin's `layout` command may run at once; without
/// the lock one could sweep the other's temporary links.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
}

impl Lock {
    /// Blocks until the lock file in `state_dir` is exclusively locked.
    pub(crate) fn acquire(state_dir: &Path) -> io::Result<Lock> {
        let path = state_dir.join("lock");
        // Opened without O_CREAT when it exists: a relayout stays free of writes.
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)?,
            Err(e) => return Err(e),
        };
        file.lock()?;
        Ok(Lock { _file: file })
    }
}

/// `items.iter().map(f)`, spread over up to `available_parallelism` threads
/// (inline for few items): a layout's time goes into one `readlink` and one
/// `stat` per link, which run in parallel across cores.
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    par_map_if(items.len() >= 1024, items, f)
}

/// [`par_map`] where the caller judges whether threads are worth starting (a
/// few items that are each much work).
pub(crate) fn par_map_if<T: Sync, R: Send>(
    worth_it: bool,
    items: &[T],
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = threads();
    if threads < 2 || !worth_it || items.len() < 2 {
        return items.iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|chunk| scope.spawn(move || chunk.iter().map(f).collect::<Vec<R>>()))
            .collect();
        handles.into_iter().flat_map(joined).collect()
    })
}

/// Threads worth starting for filesystem calls: the cores this process may use
/// (asked once: the answer reads cgroup files), at most 8.
fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)))
}

/// The result of a scoped thread; its panic goes on in the caller.
pub(crate) fn joined<T>(handle: std::thread::ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_the_order() {
        let items: Vec<usize> = (0..5000).collect();
        assert_eq!(
            par_map(&items, |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn temp_names_are_recognised_and_distinct() {
        let a = temp_path(Path::new("/d"));
        let b = temp_path(Path::new("/d"));
        assert_ne!(a, b);
        assert!(is_temp_name(a.file_name().unwrap()));
        assert!(!is_temp_name(OsStr::new("model.safetensors")));
    }

    #[test]
    fn atomic_write_replaces_and_keeps_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new", Some(0o640)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
