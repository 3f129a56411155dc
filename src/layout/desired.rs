//! What the config asks the data dir to contain, in the planner's terms: folders,
//! links by path relative to the data dir, and the managed settings file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::manifest::STATE_DIR;
use super::report::Wanted;
use crate::config::Config;
use crate::ui::flavor::ModelKind;

/// One declared link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Want<'c> {
    /// Absolute target from the config (borrowed: 10,000 copies of it would be
    /// made and freed by every relayout).
    pub target: &'c Path,
    /// The model kind of a model link; `None` for an extension.
    pub kind: Option<ModelKind>,
}

/// The declaration behind a link at `rel` of this kind (`None`: an extension),
/// for messages and the refresh decision. Derived rather than stored: only a
/// link that changes needs it.
pub(crate) fn wanted(rel: &str, kind: Option<ModelKind>) -> Wanted {
    let name = name(rel).to_string();
    match kind {
        Some(kind) => Wanted::Model { kind, name },
        None => Wanted::Extension { name },
    }
}

/// A path relative to the data dir, `/`-separated, made of plain names.
///
/// A string rather than a `PathBuf`: every name in it comes from the config
/// (UTF-8), and the planner compares tens of thousands of these, where byte
/// comparison is several times cheaper than `Path`'s component-wise one.
pub(crate) type Rel = String;

/// The folder part of a [`Rel`] (`""` for the data dir itself).
pub(crate) fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// The last name of a [`Rel`].
pub(crate) fn name(rel: &str) -> &str {
    rel.rsplit_once('/').map_or(rel, |(_, name)| name)
}

/// `dir/name`, allocated once.
pub(crate) fn join(dir: &str, name: &str) -> Rel {
    let mut rel = String::with_capacity(dir.len() + 1 + name.len());
    rel.push_str(dir);
    rel.push('/');
    rel.push_str(name);
    rel
}

/// The desired state of one data dir.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Desired<'c> {
    /// Absolute data dir.
    pub data_dir: PathBuf,
    /// Mode of the data dir and of every folder the supervisor creates.
    pub mode: u32,
    /// Folders to exist, each ancestor before its descendants (the supervisor's
    /// state dir included).
    pub dirs: BTreeSet<Rel>,
    /// Folders whose entries are managed links (scanned for leftovers too).
    pub link_dirs: BTreeSet<Rel>,
    /// Declared links.
    pub links: BTreeMap<Rel, Want<'c>>,
    /// Settings file and its managed keys; `None` when nothing is managed.
    pub settings: Option<(Rel, serde_json::Map<String, serde_json::Value>)>,
}

impl<'c> Desired<'c> {
    /// Derives the desired state from a validated config.
    pub(crate) fn from_config(config: &'c Config) -> Desired<'c> {
        let flavor = config.ui.flavor;
        // Validation guarantees every kind has a folder for the flavor.
        let models = config.models.iter().filter_map(|(kind, files)| {
            let dir = flavor.model_dir(*kind)?;
            let downloads = config.downloads.models.get(kind);
            Some(
                files
                    .iter()
                    .filter(move |(name, target)| {
                        // A download not yet finished is not linked at all: the
                        // UI lists only what it can load.
                        downloads.is_none_or(|d| !d.contains_key(*name)) || target.is_file()
                    })
                    .map(move |(name, target)| (join(dir, name), target, Some(*kind))),
            )
        });
        let extensions_dir = flavor.extensions_dir();
        let extensions = config
            .extensions
            .iter()
            .map(|(name, target)| (join(extensions_dir, name), target, None));
        // Collected at once: a bulk build, not 10,000 ordered inserts.
        let links: BTreeMap<Rel, Want> = models
            .flatten()
            .chain(extensions)
            .map(|(rel, target, kind)| (rel, Want { target, kind }))
            .collect();
        let link_dirs: BTreeSet<Rel> = flavor.required_dirs().into_iter().map(Rel::from).collect();
        // An instance's UI keeps its settings and what it writes in its own
        // folder (docs/instances.md); the links are shared.
        let own = config
            .instance
            .as_deref()
            .map(|name| format!("{}/{name}", crate::config::instances::DIR));
        let settings_file = match &own {
            Some(dir) => format!("{dir}/{}", flavor.settings_file()),
            None => flavor.settings_file().to_string(),
        };
        let settings = (!config.settings.is_empty())
            .then(|| (Rel::from(settings_file), config.settings.clone()));
        let mut wanted_dirs = link_dirs.clone();
        wanted_dirs.insert(Rel::from(STATE_DIR));
        if let Some(dir) = &own {
            wanted_dirs.extend(flavor.instance_dirs().iter().map(|d| format!("{dir}/{d}")));
        }
        if let Some((file, _)) = &settings {
            wanted_dirs.insert(parent(file).to_string());
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
}

/// Adds every ancestor of each dir; the set's order puts parents before
/// children (a prefix sorts first).
fn with_ancestors(dirs: BTreeSet<Rel>) -> BTreeSet<Rel> {
    let mut all = BTreeSet::new();
    for dir in dirs {
        let mut d = dir.as_str();
        while !d.is_empty() {
            all.insert(d.to_string());
            d = parent(d);
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ancestors_come_first() {
        let dirs = with_ancestors(["models/Lora".into(), "user/default".into(), "".into()].into());
        let order: Vec<_> = dirs.iter().map(String::as_str).collect();
        assert_eq!(order, ["models", "models/Lora", "user", "user/default"]);
    }
}
