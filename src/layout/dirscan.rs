//! The scan's reads, made relative to open directories.
//!
//! A relayout with nothing to change is one `readlink` per link and one `stat` per
//! target; in a VM each of those costs about as much in the path walk as in the
//! call itself. Naming entries relative to an open folder walks each folder's
//! path once instead of once per entry (about a third less time per call at
//! 10,000 links, measured by `cargo bench --bench layout`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::NixPath;
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, open};
use nix::sys::stat::{FileStat, Mode, SFlag, fstatat};

use super::fsio;
use super::snapshot::Entry;

/// What a directory entry is, as far as the scan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A symbolic link (its target is read separately).
    Link,
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// Anything else.
    Other,
}

impl Kind {
    fn of_type(t: Type) -> Kind {
        match t {
            Type::Symlink => Kind::Link,
            Type::File => Kind::File,
            Type::Directory => Kind::Dir,
            _ => Kind::Other,
        }
    }

    fn of_stat(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFLNK => Kind::Link,
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            _ => Kind::Other,
        }
    }
}

/// A folder opened once; its entries are then read by name relative to it.
/// The path is followed when opened, so a managed folder that is a user's link
/// to another disk is read there.
#[derive(Debug)]
pub(crate) struct OpenDir {
    fd: OwnedFd,
}

impl OpenDir {
    /// Opens the folder at `path` for listing and reading entries.
    pub(crate) fn open(path: &Path) -> io::Result<OpenDir> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        Ok(OpenDir {
            fd: open(path, flags, Mode::empty())?,
        })
    }

    /// Calls `each` with every entry but `.` and `..`, and its kind when the
    /// filesystem's listing says it (some do not: then `None`).
    pub(crate) fn list(&self, mut each: impl FnMut(&OsStr, Option<Kind>)) -> io::Result<()> {
        // A `Dir` owns (and closes) its descriptor: give it a duplicate.
        let mut dir = Dir::from_fd(self.fd.try_clone()?)?;
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                each(
                    OsStr::from_bytes(name),
                    entry.file_type().map(Kind::of_type),
                );
            }
        }
        Ok(())
    }

    /// What stands at `name` (its link read); `None` when nothing does any more.
    /// `kind` is what the listing said, if it said.
    pub(crate) fn entry(&self, name: &OsStr, kind: Option<Kind>) -> io::Result<Option<Entry>> {
        let kind = match kind {
            Some(kind) => kind,
            None => match fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => Kind::of_stat(&st),
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(Some(match kind {
            Kind::Link => match read_link_at(&self.fd, name) {
                Ok(target) => Entry::Link(target),
                // Removed since the folder was listed.
                Err(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e.into()),
            },
            Kind::File => Entry::File,
            Kind::Dir => Entry::Dir,
            Kind::Other => Entry::Other,
        }))
    }
}

/// `readlinkat(2)` into a buffer on the stack: reading a link costs one
/// allocation of the target's length (`nix::fcntl::readlinkat` makes three, one
/// of them a page, which at 10,000 links is most of the scan's time in user space).
fn read_link_at(dir: &OwnedFd, name: &OsStr) -> Result<PathBuf, Errno> {
    let mut buf = [0u8; libc::PATH_MAX as usize];
    let len = name.with_nix_path(|name| {
        // SAFETY: `name` is NUL-terminated, `dir` is an open descriptor borrowed
        // for the call, and the kernel writes at most `buf.len()` bytes to `buf`.
        unsafe {
            libc::readlinkat(
                dir.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        }
    })?;
    let len = usize::try_from(Errno::result(len)?).map_err(|_| Errno::EINVAL)?;
    // A full buffer may be a truncated target (Linux caps targets below PATH_MAX).
    if len >= buf.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(PathBuf::from(OsStr::from_bytes(&buf[..len])))
}

/// The targets that do not exist (following links, as `stat` does). Targets are
/// grouped by folder, each folder opened once (a Nix store path is usually one
/// of many in `/nix/store`), and the checks spread over the cores.
pub(crate) fn missing<'a>(targets: impl IntoIterator<Item = &'a Path>) -> HashSet<PathBuf> {
    let mut folders: Vec<&[u8]> = Vec::new();
    let mut folder_of: HashMap<&[u8], usize> = HashMap::new();
    // Each target with its folder's index and its name there, when it splits.
    let mut checks: Vec<(Option<(usize, &OsStr)>, &Path)> = Vec::new();
    for target in targets {
        let split = split(target).map(|(folder, name)| match folders.last() {
            // Declared targets mostly come in runs from one folder.
            Some(last) if *last == folder => (folders.len() - 1, name),
            _ => {
                let i = *folder_of.entry(folder).or_insert_with(|| {
                    folders.push(folder);
                    folders.len() - 1
                });
                (i, name)
            }
        });
        checks.push((split, target));
    }
    let opened: Vec<Option<OwnedFd>> = fsio::par_map_if(folders.len() >= 64, &folders, |f| {
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        open(OsStr::from_bytes(f), flags, Mode::empty()).ok()
    });
    let exists = fsio::par_map(&checks, |(split, target)| match split {
        Some((i, name)) => {
            (opened[*i].as_ref()).is_some_and(|fd| fstatat(fd, *name, AtFlags::empty()).is_ok())
        }
        None => std::fs::metadata(target).is_ok(),
    });
    checks
        .into_iter()
        .zip(exists)
        .filter(|(_, exists)| !exists)
        .map(|((_, target), _)| target.to_path_buf())
        .collect()
}

/// `/a/b/name` → (`/a/b`, `name`) when looking `name` up in `/a/b` means exactly
/// what looking up the whole path means; `None` for a path ending in `/`, `.` or
/// `..` (checked whole instead).
fn split(target: &Path) -> Option<(&[u8], &OsStr)> {
    let bytes = target.as_os_str().as_bytes();
    let cut = bytes.iter().rposition(|b| *b == b'/')?;
    let name = &bytes[cut + 1..];
    if name.is_empty() || name == b"." || name == b".." {
        return None;
    }
    let folder = if cut == 0 {
        b"/" as &[u8]
    } else {
        &bytes[..cut]
    };
    Some((folder, OsStr::from_bytes(name)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn split_keeps_what_a_lookup_means() {
        let s = |p: &str| split(Path::new(p)).map(|(f, n)| (f.to_vec(), n.to_owned()));
        assert_eq!(
            s("/nix/store/x"),
            Some((b"/nix/store".to_vec(), "x".into()))
        );
        assert_eq!(s("/x"), Some((b"/".to_vec(), "x".into())));
        assert_eq!(s("/a//b"), Some((b"/a/".to_vec(), "b".into())));
        assert_eq!(s("/a/b/"), None);
        assert_eq!(s("/a/b/."), None);
        assert_eq!(s("/a/.."), None);
        assert_eq!(s("/"), None);
    }

    #[test]
    fn missing_follows_links_and_reports_only_absent_targets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file"), b"").unwrap();
        symlink(d.join("file"), d.join("good-link")).unwrap();
        symlink(d.join("nowhere"), d.join("bad-link")).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        let targets = [
            d.join("file"),
            d.join("good-link"),
            d.join("bad-link"),
            d.join("absent"),
            d.join("no-folder/x"),
            d.join("file/x"),
            d.join("sub/"),
            d.join("sub/."),
            d.join("file/."),
        ];
        let mut found: Vec<_> = missing(targets.iter().map(PathBuf::as_path))
            .into_iter()
            .collect();
        found.sort();
        let mut want = vec![
            d.join("bad-link"),
            d.join("absent"),
            d.join("no-folder/x"),
            d.join("file/x"),
            d.join("file/."),
        ];
        want.sort();
        assert_eq!(found, want);
    }

    #[test]
    fn entries_are_read_with_or_without_a_listed_kind() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("file"), b"").unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        symlink("/nix/store/x", d.join("link")).unwrap();
        let open = OpenDir::open(d).unwrap();
        let mut listed = Vec::new();
        open.list(|name, kind| listed.push((name.to_owned(), kind)))
            .unwrap();
        listed.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<_> = listed.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, ["file", "link", "sub"]);
        for (name, kind) in &listed {
            let want = match name.to_str().unwrap() {
                "file" => Entry::File,
                "link" => Entry::Link("/nix/store/x".into()),
                _ => Entry::Dir,
            };
            assert_eq!(open.entry(name, *kind).unwrap(), Some(want.clone()));
            assert_eq!(open.entry(name, None).unwrap(), Some(want));
        }
        assert_eq!(open.entry(OsStr::new("gone"), None).unwrap(), None);
        assert_eq!(
            open.entry(OsStr::new("gone"), Some(Kind::Link)).unwrap(),
            None
        );
    }
}
