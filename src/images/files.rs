//! The files of a declared image: `<data.dir>/outputs/declared/<name>.png` and the
//! sidecar `<name>.json`. Both are written atomically (temporary file, fsync,
//! rename), PNG first: the sidecar is the record that the PNG beside it matches
//! its fingerprint, so a crash between the two only causes one more render.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What the sidecar holds: enough to know what the picture is and redo it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The image's name in the config.
    pub name: String,
    /// See [`super::fingerprint`].
    pub fingerprint: String,
    /// The declaration as rendered (txt2img parameters or the workflow graph).
    pub declaration: Value,
    /// Models used: `kind/name` → target.
    pub models: BTreeMap<String, PathBuf>,
    /// The UI flavor that rendered it.
    pub flavor: String,
    /// The seed the UI used, when it says.
    pub seed: Option<i64>,
    /// The UI's own account of the render (Forge's `info`, ComfyUI's history entry).
    pub info: Value,
    /// Unix seconds when it was written.
    pub rendered_at_unix: u64,
}

/// The declared-images folder of one data dir.
#[derive(Debug, Clone)]
pub struct Outputs {
    dir: PathBuf,
    mode: u32,
}

impl Outputs {
    /// The folder under `data_dir`; `mode` is used when creating it.
    pub fn new(data_dir: &Path, mode: u32) -> Outputs {
        Outputs {
            dir: data_dir.join("outputs").join("declared"),
            mode,
        }
    }

    /// Where the picture of `name` lives.
    pub fn png(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.png"))
    }

    /// Where the sidecar of `name` lives.
    pub fn sidecar(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// The fingerprint recorded for `name`, when both files are there.
    pub fn recorded(&self, name: &str) -> Option<String> {
        if !self.png(name).is_file() {
            return None;
        }
        let text = fs::read(self.sidecar(name)).ok()?;
        let sidecar: Sidecar = serde_json::from_slice(&text).ok()?;
        Some(sidecar.fingerprint)
    }

    /// Writes the picture and then its sidecar, each atomically; returns the PNG path.
    pub fn write(&self, png: &[u8], sidecar: &Sidecar) -> io::Result<PathBuf> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(self.mode)
            .create(&self.dir)?;
        let path = self.png(&sidecar.name);
        replace(&path, png)?;
        let mut json = serde_json::to_vec_pretty(sidecar).map_err(io::Error::other)?;
        json.push(b'\n');
        replace(&self.sidecar(&sidecar.name), &json)?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it over `path`.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_record_their_fingerprint() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Outputs::new(dir.path(), 0o700);
        assert_eq!(out.recorded("cat"), None);
        let sidecar = Sidecar {
            name: "cat".into(),
            fingerprint: "abc".into(),
            declaration: Value::Null,
            models: BTreeMap::new(),
            flavor: "forge".into(),
            seed: Some(3),
            info: Value::Null,
            rendered_at_unix: 1,
        };
        let png = out.write(b"\x89PNG", &sidecar).expect("write");
        assert_eq!(png, dir.path().join("outputs/declared/cat.png"));
        assert_eq!(out.recorded("cat").as_deref(), Some("abc"));
        fs::remove_file(&png).expect("rm");
        assert_eq!(
            out.recorded("cat"),
            None,
            "a sidecar without its PNG is stale"
        );
    }
}
