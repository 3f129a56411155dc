//! What the config asks the data dir to contain, in the planner's terms: folders,
//! links by path relative to the data dir, and the managed settings file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::manifest::STATE_DIR;
use super::report::Wanted;
use crate::config::Config;
use crate::flavor::ModelKind;

/// One declared link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want {
    /// Absolute target from the config.
    pub target: PathBuf,
    /// The declaration, for messages and the refresh decision.
    pub wanted: Wanted,
}

impl Want {
    /// The model kind of a model link; `None` for an extension.
    pub(crate) fn kind(&self) -> Option<ModelKind> {
        match &self.wanted {
            Wanted::Model { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// The desired state of one data dir.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desired {
    /// Absolute data dir.
    pub data_dir: PathBuf,
    /// Mode of the data dir and of every folder the supervisor creates.
    pub mode: u32,
    /// Folders to exist, relative, each ancestor before its descendants (the
    /// supervisor's state dir included).
    pub dirs: BTreeSet<PathBuf>,
    /// Folders whose entries are managed links (scanned for leftovers too).
    pub link_dirs: BTreeSet<PathBuf>,
    /// Declared links by relative path.
    pub links: BTreeMap<PathBuf, Want>,
    /// Settings file (relative) and its managed keys; `None` when nothing is managed.
    pub settings: Option<(PathBuf, serde_json::Map<String, serde_json::Value>)>,
}

impl Desired {
    /// Derives the desired state from a validated config.
    pub(crate) fn from_config(config: &Config) -> Desired {
        let flavor = config.ui.flavor;
        let mut links = BTreeMap::new();
        // Validation guarantees every kind has a folder for the flavor.
        for (kind, files) in &config.models {
            let Some(dir) = flavor.model_dir(*kind) else {
                continue;
            };
            for (name, target) in files {
                let wanted = Wanted::Model {
                    kind: *kind,
                    name: name.clone(),
                };
                let want = Want {
                    target: target.clone(),
                    wanted,
                };
                links.insert(Path::new(dir).join(name), want);
            }
        }
        for (name, target) in &config.extensions {
            let wanted = Wanted::Extension { name: name.clone() };
            let want = Want {
                target: target.clone(),
                wanted,
            };
            links.insert(Path::new(flavor.extensions_dir()).join(name), want);
        }
        let link_dirs: BTreeSet<PathBuf> = flavor
            .required_dirs()
            .into_iter()
            .map(PathBuf::from)
            .collect();
        let settings = (!config.settings.is_empty()).then(|| {
            (
                PathBuf::from(flavor.settings_file()),
                config.settings.clone(),
            )
        });
        let mut wanted_dirs = link_dirs.clone();
        wanted_dirs.insert(PathBuf::from(STATE_DIR));
        if let Some(parent) = settings.as_ref().and_then(|(p, _)| p.parent()) {
            wanted_dirs.insert(parent.to_path_buf());
        }
        Desired {
            data_dir: config.data.dir.clone(),
            mode: config.data.permissions,
            dirs: with_ancestors(wanted_dirs),
            link_dirs,
            links,
            settings,
        }
    }

    /// The supervisor's state dir (absolute).
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.data_dir.join(STATE_DIR)
    }
}

/// Adds every ancestor of each relative dir; the set's order (component-wise)
/// puts parents before children.
fn with_ancestors(dirs: BTreeSet<PathBuf>) -> BTreeSet<PathBuf> {
    dirs.iter()
        .flat_map(|d| d.ancestors())
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_come_first() {
        let dirs = with_ancestors(["models/Lora".into(), "user/default".into()].into());
        let order: Vec<_> = dirs.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(order, ["models", "models/Lora", "user", "user/default"]);
    }
}
