//! Shared by the layout tests: config text, and the checks every test makes of a
//! data dir after a layout (user things untouched, links exactly as declared,
//! manifest equal to the disk).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sd_webui_supervisor::config::Config;

use super::config::Conf;

/// The binary under test.
pub fn layout_cmd(config: &Path, dry_run: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"));
    cmd.arg("layout").arg("--config").arg(config);
    if dry_run {
        cmd.arg("--dry-run");
    }
    cmd.output().expect("the binary runs")
}

/// One declared link: `models.<kind>."<name>" = target` or `extensions."<name>"`
/// (kind `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decl {
    pub kind: Option<&'static str>,
    pub name: String,
    pub target: PathBuf,
}

/// The config of a layout test: `flavor` with the given declarations and raw
/// `[settings]` lines, data dir `data` (mode 0750), a UI that is never started.
pub fn conf(flavor: &str, data: &Path, decls: &[Decl], settings: &str) -> Conf {
    let mut conf = Conf::plain(data.parent().unwrap_or(data));
    conf.flavor = flavor.into();
    conf.command = vec!["/bin/true".into()];
    conf.data_dir = data.to_path_buf();
    conf.permissions = Some("0750".into());
    for d in decls {
        match d.kind {
            Some(kind) => {
                conf.models
                    .entry(kind.into())
                    .or_default()
                    .insert(d.name.clone(), d.target.clone());
            }
            None => {
                conf.extensions.insert(d.name.clone(), d.target.clone());
            }
        }
    }
    conf.settings = toml::from_str(settings).unwrap_or_else(|e| panic!("{e}\n{settings}"));
    conf
}

/// [`conf`] as TOML text.
pub fn config_text(flavor: &str, data: &Path, decls: &[Decl], settings: &str) -> String {
    conf(flavor, data, decls, settings).render()
}

/// Parses config text as the daemon would.
pub fn config(text: &str) -> Config {
    Config::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Where a declaration's link goes for Forge.
pub fn forge_dir(kind: Option<&str>) -> &'static str {
    match kind {
        Some("checkpoints") => "models/Stable-diffusion",
        Some("loras") => "models/Lora",
        Some("embeddings") => "embeddings",
        Some(other) => panic!("no test folder for {other}"),
        None => "extensions",
    }
}

/// A thing a user made in the data dir, which the layout must never change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserThing {
    File(Vec<u8>),
    Dir,
    Link(PathBuf),
}

/// Makes a user thing at `path` (parents created).
pub fn make(path: &Path, thing: &UserThing) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    match thing {
        UserThing::File(bytes) => fs::write(path, bytes).unwrap(),
        UserThing::Dir => {
            fs::create_dir(path).unwrap();
            fs::write(path.join("inside.txt"), b"user data").unwrap();
        }
        UserThing::Link(target) => symlink(target, path).unwrap(),
    }
}

/// Asserts that every user thing is still there, byte for byte.
pub fn assert_user_things_intact(data: &Path, things: &BTreeMap<PathBuf, UserThing>) {
    for (rel, thing) in things {
        let path = data.join(rel);
        let meta = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("user's {} is gone: {e}", path.display()));
        match thing {
            UserThing::File(bytes) => {
                assert!(meta.is_file(), "{} is no longer a file", path.display());
                assert_eq!(
                    &fs::read(&path).unwrap(),
                    bytes,
                    "{} changed",
                    path.display()
                );
            }
            UserThing::Dir => {
                assert!(meta.is_dir(), "{} is no longer a dir", path.display());
                assert_eq!(fs::read(path.join("inside.txt")).unwrap(), b"user data");
            }
            UserThing::Link(target) => {
                assert!(
                    meta.file_type().is_symlink(),
                    "{} is no longer a link",
                    path.display()
                );
                assert_eq!(
                    &fs::read_link(&path).unwrap(),
                    target,
                    "{} repointed",
                    path.display()
                );
            }
        }
    }
}

/// The manifest's links (relative path → target); panics on any pending entry.
pub fn manifest_links(data: &Path) -> BTreeMap<String, PathBuf> {
    #[derive(serde::Deserialize)]
    struct Manifest {
        links: BTreeMap<String, Link>,
        pending: Option<serde_json::Value>,
    }
    #[derive(serde::Deserialize)]
    struct Link {
        target: PathBuf,
    }
    let path = data.join(".sd-webui-supervisor/manifest.json");
    let Ok(bytes) = fs::read(&path) else {
        return BTreeMap::new();
    };
    let m: Manifest = serde_json::from_slice(&bytes).unwrap();
    assert!(
        m.pending.is_none(),
        "a finished layout leaves nothing pending"
    );
    m.links.into_iter().map(|(k, l)| (k, l.target)).collect()
}

/// Symlinks in the given folders (relative to `data`) that no user made, by
/// relative path (`folder/name`, as the manifest spells it).
pub fn supervisor_links(
    data: &Path,
    folders: &[&str],
    user: &BTreeMap<PathBuf, UserThing>,
) -> BTreeMap<String, PathBuf> {
    let mut links = BTreeMap::new();
    for folder in folders {
        let Ok(entries) = fs::read_dir(data.join(folder)) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let rel = format!("{folder}/{}", e.file_name().to_str().unwrap());
            if e.file_type().unwrap().is_symlink() && !user.contains_key(Path::new(&rel)) {
                links.insert(rel, fs::read_link(e.path()).unwrap());
            }
        }
    }
    links
}

/// Names under `data` (recursively, not following links) that look like the
/// supervisor's temporaries.
pub fn leftover_temps(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for e in entries {
        let e = e.unwrap();
        if e.file_name()
            .to_string_lossy()
            .contains(".sd-webui-supervisor.tmp.")
        {
            found.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            found.extend(leftover_temps(&e.path()));
        }
    }
    found
}

/// Per entry: inode, mode, size, mtime (s, ns), ctime (s, ns).
pub type Stamp = (u64, u32, u64, i64, i64, i64, i64);

/// Every entry under a dir with its [`Stamp`].
pub type TreeState = BTreeMap<PathBuf, Stamp>;

/// (inode, mode, size, mtime, ctime) of every entry under `dir`, not following
/// links: any write — a created, removed or renamed entry, a changed file, a
/// chmod — changes some entry's ctime or inode (the directory's, at least).
pub fn tree_state(dir: &Path) -> TreeState {
    use std::os::unix::fs::MetadataExt;
    let mut state = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let m = fs::symlink_metadata(&path).unwrap();
        state.insert(
            path.clone(),
            (
                m.ino(),
                m.mode(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
            ),
        );
        if m.is_dir() {
            for e in fs::read_dir(&path).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    state
}
