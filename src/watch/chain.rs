//! The symlink chain from the config path to the file it finally names.
//!
//! NixOS never changes `/etc/sd-webui-forge/config.toml` itself: activation swaps
//! the `/etc/static` link (and editors rename a new file over the old one). So the
//! watcher must know every directory entry the kernel passes through when it opens
//! the path, links in intermediate components included, and watch the directories
//! that hold them. Resolution here follows the kernel's rules one component at a
//! time and records what it visits.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// Links followed before giving up, as Linux does (`MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Never watched although it may hold a chain component: store paths are
/// immutable, and the store directory itself churns during every build and GC.
const NIX_STORE: &str = "/nix/store";

/// What opening a path passes through right now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Real directories holding a component of the chain: a change to any entry
    /// the chain uses happens in one of them.
    pub dirs: BTreeSet<PathBuf>,
    /// Every path looked up (each component, before its link is followed): events
    /// naming one of these can change what the path refers to.
    pub names: BTreeSet<PathBuf>,
    /// The real path of the file, or `None` while the chain is broken (a component
    /// is missing mid-swap, a link loops, or a non-directory is in the middle).
    pub target: Option<PathBuf>,
}

impl Chain {
    /// Whether a change of `path` may change the chain or the file's content.
    pub fn concerns(&self, path: &Path) -> bool {
        self.names.contains(path) || self.dirs.contains(path)
    }
}

/// Resolves `path` (absolute) component by component, recording the chain.
pub(crate) fn resolve(path: &Path) -> Chain {
    resolve_in(path, Path::new(NIX_STORE))
}

/// [`resolve`] with the store directory that is not watched as a parameter.
fn resolve_in(path: &Path, store: &Path) -> Chain {
    let mut chain = Chain::default();
    let mut todo: VecDeque<OsString> = parts(path);
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            // `cur` is already a real directory, so its parent is the lexical one.
            cur.pop();
            continue;
        }
        let next = cur.join(&part);
        if cur != store {
            chain.dirs.insert(cur.clone());
        }
        chain.names.insert(next.clone());
        let Ok(meta) = fs::symlink_metadata(&next) else {
            return chain;
        };
        if meta.file_type().is_symlink() {
            links += 1;
            let Ok(target) = fs::read_link(&next) else {
                return chain;
            };
            if links > MAX_LINKS {
                return chain;
            }
            if target.is_absolute() {
                cur = PathBuf::from("/");
            }
            let mut rest = parts(&target);
            rest.extend(todo);
            todo = rest;
        } else if !meta.is_dir() && !todo.is_empty() {
            return chain;
        } else {
            cur = next;
        }
    }
    chain.target = Some(cur);
    chain
}

/// The components to look up, `.` dropped (it never changes the directory).
fn parts(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsStr::new("..").to_os_string()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = match tempfile::tempdir() {
            Ok(d) => d,
            Err(e) => panic!("tempdir: {e}"),
        };
        // Resolve the tempdir itself (it may sit behind a link, e.g. /tmp on macOS).
        let root = match fs::canonicalize(dir.path()) {
            Ok(r) => r,
            Err(e) => panic!("canonicalize: {e}"),
        };
        (dir, root)
    }

    fn ok(r: std::io::Result<()>) {
        if let Err(e) = r {
            panic!("fs setup: {e}");
        }
    }

    #[test]
    fn a_plain_file_is_its_own_target() {
        let (_d, root) = tree();
        ok(fs::write(root.join("config.toml"), "x"));
        let chain = resolve(&root.join("config.toml"));
        assert_eq!(chain.target, Some(root.join("config.toml")));
        assert!(chain.dirs.contains(&root));
        assert!(chain.dirs.contains(Path::new("/")));
        assert!(chain.concerns(&root.join("config.toml")));
        assert!(!chain.concerns(&root.join("other.toml")));
    }

    #[test]
    fn nixos_etc_links_are_all_followed() {
        let (_d, root) = tree();
        ok(fs::create_dir_all(root.join("store1/etc/sd-webui-forge")));
        ok(fs::write(
            root.join("store1/etc/sd-webui-forge/config.toml"),
            "x",
        ));
        ok(fs::create_dir(root.join("etc")));
        ok(symlink(root.join("store1/etc"), root.join("etc/static")));
        ok(symlink(
            "static/sd-webui-forge",
            root.join("etc/sd-webui-forge"),
        ));
        let chain = resolve(&root.join("etc/./sd-webui-forge/config.toml"));
        let real = root.join("store1/etc/sd-webui-forge/config.toml");
        assert_eq!(chain.target, Some(real.clone()));
        for name in [
            root.join("etc/sd-webui-forge"),
            root.join("etc/static"),
            root.join("store1/etc/sd-webui-forge"),
            real,
        ] {
            assert!(chain.names.contains(&name), "{name:?} in {chain:?}");
        }
        for dir in [
            root.join("etc"),
            root.join("store1"),
            root.join("store1/etc"),
            root.join("store1/etc/sd-webui-forge"),
        ] {
            assert!(chain.dirs.contains(&dir), "{dir:?} in {chain:?}");
        }
    }

    #[test]
    fn dot_dot_in_a_link_is_taken_from_the_links_real_directory() {
        let (_d, root) = tree();
        ok(fs::create_dir_all(root.join("real/sub")));
        ok(fs::write(root.join("real/config.toml"), "x"));
        ok(symlink(root.join("real/sub"), root.join("alias")));
        ok(symlink("../config.toml", root.join("real/sub/link")));
        let chain = resolve(&root.join("alias/link"));
        assert_eq!(chain.target, Some(root.join("real/config.toml")));
    }

    #[test]
    fn a_missing_component_breaks_the_chain_but_keeps_its_directory() {
        let (_d, root) = tree();
        ok(fs::create_dir(root.join("etc")));
        ok(symlink(root.join("gone"), root.join("etc/static")));
        let chain = resolve(&root.join("etc/static/config.toml"));
        assert_eq!(chain.target, None);
        assert!(chain.dirs.contains(&root.join("etc")));
        assert!(chain.names.contains(&root.join("gone")));
        assert!(chain.dirs.contains(&root), "the missing entry's directory");
    }

    #[test]
    fn loops_and_files_in_the_middle_break_the_chain() {
        let (_d, root) = tree();
        ok(symlink("b", root.join("a")));
        ok(symlink("a", root.join("b")));
        assert_eq!(resolve(&root.join("a")).target, None);
        ok(fs::write(root.join("file"), "x"));
        assert_eq!(resolve(&root.join("file/config.toml")).target, None);
    }

    #[test]
    fn the_store_directory_itself_is_not_watched() {
        let (_d, root) = tree();
        ok(fs::create_dir_all(root.join("store/abc-etc/etc")));
        ok(fs::write(root.join("store/abc-etc/etc/config.toml"), "x"));
        let chain = resolve_in(
            &root.join("store/abc-etc/etc/config.toml"),
            &root.join("store"),
        );
        assert!(chain.target.is_some());
        assert!(!chain.dirs.contains(&root.join("store")));
        assert!(chain.dirs.contains(&root.join("store/abc-etc/etc")));
        assert!(chain.concerns(&root.join("store/abc-etc")));
    }
}
