//! The problem collector validation writes into, with the checks every section
//! shares: durations and their bounds, absolute paths, argv strings, plain names
//! and the links the layout will make from them.

use std::path::PathBuf;
use std::time::Duration;

use super::diagnostics::{At, Problem, Seg};
use super::limits::{self, DurationLimit};

/// Collects problems while converting.
pub(super) struct Checker<'p> {
    pub(super) problems: &'p mut Vec<Problem>,
}

impl Checker<'_> {
    pub(super) fn at<S: Into<Seg>>(
        &mut self,
        path: impl IntoIterator<Item = S>,
        at: At,
        msg: impl Into<String>,
    ) {
        self.problems.push(Problem::new(path, at, msg.into()));
    }

    pub(super) fn value<S: Into<Seg>>(
        &mut self,
        path: impl IntoIterator<Item = S>,
        msg: impl Into<String>,
    ) {
        self.at(path, At::Value, msg);
    }

    pub(super) fn missing(&mut self, section: &str, key: &str) {
        self.value([section, key], "required key is missing");
    }

    pub(super) fn duration(
        &mut self,
        section: &str,
        key: &str,
        raw: Option<&str>,
        default: &str,
        limit: DurationLimit,
    ) -> Duration {
        self.checked_duration(section, key, raw, default, limit)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Like [`Checker::duration`], but `None` when the value was reported as invalid,
    /// so that cross-key rules do not compare against a stand-in value.
    pub(super) fn checked_duration(
        &mut self,
        section: &str,
        key: &str,
        raw: Option<&str>,
        default: &str,
        limit: DurationLimit,
    ) -> Option<Duration> {
        let text = raw.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.value([section, key], "must be longer than zero");
                None
            }
            Ok(d) if d > limit.max => {
                let never = if key == "deadline" {
                    "; write \"never\" for no deadline"
                } else {
                    ""
                };
                self.value(
                    [section, key],
                    format!("{text:?} is too long (at most {}){never}", limit.text),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.value(
                    [section, key],
                    format!(
                        "{text:?} is not a duration ({e}); write e.g. \"30s\", \"10m\", \"6h\""
                    ),
                );
                None
            }
        }
    }

    pub(super) fn absolute(&mut self, path: &[Seg], raw: &str) -> PathBuf {
        let p = PathBuf::from(raw);
        if raw.is_empty() {
            self.value(path.to_vec(), "must not be empty");
        } else if raw.contains('\0') {
            self.value(path.to_vec(), "must not contain a NUL byte");
        } else if !p.is_absolute() {
            self.value(path.to_vec(), format!("{raw:?} is not an absolute path"));
        } else if let Some(why) = limits::path(raw) {
            self.value(path.to_vec(), why);
        }
        p
    }

    /// A string that reaches the UI's argv.
    pub(super) fn arg(&mut self, path: Vec<Seg>, s: &str) {
        if let Some(why) = limits::arg(s) {
            self.value(path, why);
        }
    }

    /// File and extension names become single path components under the data dir.
    /// False when the name was reported.
    pub(super) fn plain_name(&mut self, path: &[Seg], name: &str) -> bool {
        let why = if name.is_empty() {
            Some("name is empty")
        } else if name.contains('\0') {
            Some("name contains a NUL byte")
        } else if name.contains('/') {
            Some("name contains '/'; it must be a plain file name")
        } else if name == ".." || name.contains("..") {
            Some("name contains '..'; it must be a plain file name")
        } else if name.starts_with('.') {
            Some("name starts with '.'; hidden names are not allowed")
        } else {
            None
        };
        match why.map(String::from).or_else(|| limits::name(name)) {
            Some(why) => {
                self.at(path.to_vec(), At::Key, why);
                false
            }
            None => true,
        }
    }

    /// The link `<data.dir>/<folder>/<name>` the layout will make must fit in a
    /// path; `folder` is how the message names the data dir's part.
    pub(super) fn link_fits(
        &mut self,
        path: &[Seg],
        data_dir: Option<&str>,
        folder: &str,
        name: &str,
    ) {
        let Some(dir) = data_dir else { return };
        let len = dir.len() + 1 + folder.len() + 1 + name.len();
        if len > limits::PATH_MAX {
            self.at(
                path.to_vec(),
                At::Key,
                format!(
                    "its link (data.dir/{folder}/NAME) would be {len} bytes long; a path holds at most {}",
                    limits::PATH_MAX
                ),
            );
        }
    }
}
