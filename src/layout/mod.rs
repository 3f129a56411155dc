//! Interim data-dir layout: creates the folders the flavor needs. Replaced by the
//! full planner/executor (manifest, links, settings) of issue 3.

use std::collections::BTreeSet;
use std::fmt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use crate::config::Config;
use crate::flavor::ModelKind;

/// A user file where a managed link should go.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    /// Where.
    pub path: PathBuf,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: user file kept", self.path.display())
    }
}

/// What a layout did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LayoutReport {
    /// Filesystem writes.
    pub actions_applied: usize,
    /// Conflicts.
    pub conflicts: Vec<Conflict>,
    /// Missing targets.
    pub dangling: Vec<PathBuf>,
    /// Model kinds whose links changed.
    pub changed_kinds: BTreeSet<ModelKind>,
}

/// Layout failure.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct LayoutError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Creates the data dir and the flavor's folders.
pub fn apply(config: &Config) -> Result<LayoutReport, LayoutError> {
    let mut report = LayoutReport::default();
    let mode = config.data.permissions;
    let mut dirs = vec![config.data.dir.clone()];
    dirs.extend(
        config
            .ui
            .flavor
            .required_dirs()
            .iter()
            .map(|d| config.data.dir.join(d)),
    );
    for d in dirs {
        if !d.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&d)
                .map_err(|source| LayoutError {
                    path: d.display().to_string(),
                    source,
                })?;
            let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode));
            report.actions_applied += 1;
        }
    }
    Ok(report)
}
