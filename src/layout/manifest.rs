//! The ownership record: which links under the data dir the supervisor made.
//!
//! Only links recorded here (with the exact target recorded) are ever replaced or
//! removed, so nothing a user made is touched. `pending` is the intent half of a
//! two-phase protocol: before creating or replacing links the executor records
//! them as pending; a run killed before the final manifest is written leaves links
//! that the next run recognises as its own *only* because they point exactly where
//! the pending record says.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::LayoutError;
use super::desired::Rel;
use super::fsio;
use crate::ui::flavor::ModelKind;

/// The supervisor's own folder under the data dir (manifest and lock).
pub(crate) const STATE_DIR: &str = ".sd-webui-supervisor";
/// The manifest's file name inside [`STATE_DIR`].
const FILE: &str = "manifest.json";
/// Format version; a manifest from a newer supervisor is refused, not guessed at.
const VERSION: u32 = 1;

/// One link the supervisor made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owned {
    /// The target written into the link.
    pub target: PathBuf,
    /// The model kind, so removing the link later names the folder to rescan;
    /// absent for extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ModelKind>,
}

/// Links by path relative to the data dir.
pub(crate) type Links = BTreeMap<Rel, Owned>;

/// The manifest file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Links the supervisor made and still owns.
    pub links: Links,
    /// Links about to be created or replaced by a layout in progress.
    pub pending: Links,
}

/// The file as read.
#[derive(Deserialize)]
struct OnDisk {
    version: u32,
    #[serde(deserialize_with = "bulk")]
    links: Links,
    #[serde(default, deserialize_with = "bulk")]
    pending: Links,
}

/// Reads a JSON object of links into a `Links` by one bulk build (the file is
/// sorted) instead of one ordered insert per link.
fn bulk<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Links, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Links;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an object of links")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Links, A::Error> {
            let mut links = Vec::with_capacity(map.size_hint().unwrap_or(0));
            while let Some(entry) = map.next_entry::<Rel, Owned>()? {
                links.push(entry);
            }
            Ok(links.into_iter().collect())
        }
    }
    d.deserialize_map(V)
}

/// The file as written (borrowing, so a 10,000-link manifest is not copied).
#[derive(Serialize)]
struct OnDiskRef<'a> {
    version: u32,
    links: &'a Links,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pending: &'a Links,
}

/// The manifest being read elsewhere: call it to wait for it (`None`: none yet).
pub(crate) type Reading<'a> = Box<dyn FnOnce() -> Result<Option<Manifest>, LayoutError> + 'a>;

/// The supervisor's own folder in a data dir.
pub(crate) fn state_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(STATE_DIR)
}

/// Where the manifest of a data dir lives.
pub(crate) fn path(data_dir: &Path) -> PathBuf {
    state_dir(data_dir).join(FILE)
}

/// Reads the manifest; `None` when there is none yet.
///
/// An unreadable manifest is an error rather than "own nothing": guessing could
/// make the supervisor's own links look like the user's, or worse.
pub(crate) fn read(data_dir: &Path) -> Result<Option<Manifest>, LayoutError> {
    let path = path(data_dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LayoutError::io("read", &path, e)),
    };
    let bad = |reason: String| LayoutError::Manifest {
        path: path.clone(),
        reason,
    };
    let on_disk: OnDisk = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if on_disk.version != VERSION {
        return Err(bad(format!(
            "format version {} is not {VERSION}",
            on_disk.version
        )));
    }
    let m = Manifest {
        links: on_disk.links,
        pending: on_disk.pending,
    };
    if let Some(p) = m
        .links
        .keys()
        .chain(m.pending.keys())
        .find(|p| !is_inside(p))
    {
        return Err(bad(format!("{p:?} is not a path inside the data dir")));
    }
    Ok(Some(m))
}

/// Writes the manifest atomically (temp, fsync, rename, fsync dir). Compact JSON:
/// at 10,000 links it is written twice per layout that changes links.
pub(crate) fn write(data_dir: &Path, links: &Links, pending: &Links) -> Result<(), LayoutError> {
    let path = path(data_dir);
    let on_disk = OnDiskRef {
        version: VERSION,
        links,
        pending,
    };
    let bytes = serde_json::to_vec(&on_disk).map_err(|e| LayoutError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    fsio::write_atomic(&path, &bytes, None).map_err(|e| LayoutError::io("write", &path, e))
}

/// A relative path made only of plain names: a tampered manifest must not make the
/// supervisor look outside the data dir.
fn is_inside(p: &str) -> bool {
    p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(STATE_DIR)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let mut m = Manifest::default();
        m.links.insert(
            "models/Lora/a.safetensors".into(),
            Owned {
                target: "/nix/store/a".into(),
                kind: Some(ModelKind::Loras),
            },
        );
        write(dir.path(), &m.links, &m.pending).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(m));

        let evil = r#"{"version":1,"links":{"../etc/passwd":{"target":"/x"}}}"#;
        std::fs::write(path(dir.path()), evil).unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(LayoutError::Manifest { .. })
        ));
        std::fs::write(path(dir.path()), "{").unwrap();
        assert!(matches!(
            read(dir.path()),
            Err(LayoutError::Manifest { .. })
        ));
    }
}
