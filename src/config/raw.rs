//! First step of loading: TOML text → lenient section structs.
//!
//! Leaves that need semantic checks (durations, modes, ports, enums) are read as
//! plain strings or integers here, so that a wrong value is reported by
//! [`super::validate`] with a precise message, and one bad key never hides another.
//! Each top-level section is deserialized on its own, so a type error in `[ui]`
//! does not hide one in `[restart]`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::diagnostics::{At, Problem};
use super::download::{DOWNLOADS_KEYS, RawDownloads, RawModel};

/// The parsed document, kept to locate problems by key path.
pub type Doc<'a> = Spanned<DeTable<'a>>;

/// Declares a fixed-shape section struct and, from the same field list, its
/// `KEYS`: the one place a key is declared (the unknown-key check, its message,
/// [`super::sections`] and the tests all read `KEYS`).
macro_rules! section {
    ($(#[$meta:meta])* $name:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            $(pub $field: Option<$ty>,)*
        }

        impl $name {
            /// The section's keys, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
        }
    };
}

section! {
    /// `[ui]` as written.
    RawUi {
        flavor: String,
        command: Vec<String>,
        listen: bool,
        port: i64,
        extra_args: Vec<String>,
        environment: BTreeMap<String, String>,
        gpus: Vec<i64>,
        api_auth_file: String,
        startup_timeout: String,
        stop_timeout: String,
    }
}

section! {
    /// `[data]` as written.
    RawData {
        dir: String,
        permissions: String,
    }
}

section! {
    /// `[restart]` as written.
    RawRestart {
        policy: String,
        idle_grace: String,
        deadline: String,
        poll_interval: String,
    }
}

section! {
    /// `[control]` as written.
    RawControl {
        socket: String,
        dbus: String,
        http_listen: String,
        token_file: String,
        max_connections: i64,
    }
}

/// The whole file as written; `None` fields were absent (or unreadable, with a problem).
#[derive(Debug, Default)]
pub struct RawConfig {
    /// Sections present in the file, even when unreadable (so they are not
    /// also reported as missing).
    pub present: Vec<String>,
    pub ui: Option<RawUi>,
    pub data: Option<RawData>,
    pub models: BTreeMap<String, BTreeMap<String, RawModel>>,
    pub extensions: BTreeMap<String, String>,
    pub settings: toml::Table,
    pub restart: RawRestart,
    pub control: RawControl,
    pub front: super::front::RawFront,
    pub gpu: super::gpu::RawGpu,
    pub health: super::health::RawHealth,
    pub kubernetes: super::kubernetes::RawKubernetes,
    pub queue: super::queue::RawQueue,
    pub supervisor: super::supervisor::RawSupervisor,
    pub downloads: RawDownloads,
    /// `[images.<name>]`, read image by image.
    pub images: BTreeMap<String, super::images::RawImage>,
    /// `[instances.<name>]`.
    pub instances: BTreeMap<String, super::instances::RawInstance>,
}

/// Reads one section's value into its place in [`RawConfig`].
type Reader = fn(ValueDeserializer<'_>, &mut RawConfig) -> Result<(), toml::de::Error>;

/// One top-level section: its name, its keys (empty: a free-form map) and how it
/// is read. The only list of sections.
pub struct Section {
    /// The section's name in the file.
    pub name: &'static str,
    /// The keys a fixed-shape section allows; empty for free-form maps.
    pub keys: &'static [&'static str],
    read: Reader,
}

/// Every section, in the order the file documents them.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "ui",
        keys: RawUi::KEYS,
        read: |de, raw| RawUi::deserialize(de).map(|v| raw.ui = Some(v)),
    },
    Section {
        name: "data",
        keys: RawData::KEYS,
        read: |de, raw| RawData::deserialize(de).map(|v| raw.data = Some(v)),
    },
    Section {
        name: "models",
        keys: &[],
        read: |de, raw| Deserialize::deserialize(de).map(|v| raw.models = v),
    },
    Section {
        name: "extensions",
        keys: &[],
        read: |de, raw| Deserialize::deserialize(de).map(|v| raw.extensions = v),
    },
    Section {
        name: "settings",
        keys: &[],
        read: |de, raw| Deserialize::deserialize(de).map(|v| raw.settings = v),
    },
    Section {
        name: "restart",
        keys: RawRestart::KEYS,
        read: |de, raw| RawRestart::deserialize(de).map(|v| raw.restart = v),
    },
    Section {
        name: "control",
        keys: RawControl::KEYS,
        read: |de, raw| RawControl::deserialize(de).map(|v| raw.control = v),
    },
    Section {
        name: "front",
        keys: super::front::RawFront::KEYS,
        read: |de, raw| super::front::RawFront::deserialize(de).map(|v| raw.front = v),
    },
    Section {
        name: "gpu",
        keys: super::gpu::RawGpu::KEYS,
        read: |de, raw| super::gpu::RawGpu::deserialize(de).map(|v| raw.gpu = v),
    },
    Section {
        name: "health",
        keys: super::health::RawHealth::KEYS,
        read: |de, raw| super::health::RawHealth::deserialize(de).map(|v| raw.health = v),
    },
    Section {
        name: "kubernetes",
        keys: super::kubernetes::RawKubernetes::KEYS,
        read: |de, raw| {
            super::kubernetes::RawKubernetes::deserialize(de).map(|v| raw.kubernetes = v)
        },
    },
    Section {
        name: "queue",
        keys: super::queue::RawQueue::KEYS,
        read: |de, raw| super::queue::RawQueue::deserialize(de).map(|v| raw.queue = v),
    },
    Section {
        name: "supervisor",
        keys: super::supervisor::RawSupervisor::KEYS,
        read: |de, raw| {
            super::supervisor::RawSupervisor::deserialize(de).map(|v| raw.supervisor = v)
        },
    },
    Section {
        name: "downloads",
        keys: DOWNLOADS_KEYS,
        read: |de, raw| RawDownloads::deserialize(de).map(|v| raw.downloads = v),
    },
    Section {
        name: "instances",
        keys: &[],
        read: |de, raw| Deserialize::deserialize(de).map(|v| raw.instances = v),
    },
    // Read image by image in `parse` (one bad image must not hide the next).
    Section {
        name: "images",
        keys: &[],
        read: |_, _| Ok(()),
    },
];

/// Parses the text; syntax, unknown-key and type problems go to `problems`.
/// Returns the document (for locating problems) and the raw config when the
/// syntax was readable.
pub fn parse<'a>(
    text: &'a str,
    problems: &mut Vec<Problem>,
) -> (Option<Doc<'a>>, Option<RawConfig>) {
    let (doc, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        for e in errors {
            problems.push(Problem::syntax(e.message(), e.span()));
        }
        return (Some(doc), None);
    }
    let mut raw = RawConfig::default();
    for (key, value) in doc.get_ref().iter() {
        let name = key.get_ref().as_ref();
        let Some(section) = SECTIONS.iter().find(|s| s.name == name) else {
            let known: Vec<&str> = SECTIONS.iter().map(|s| s.name).collect();
            problems.push(Problem::new(
                [name],
                At::Key,
                format!("unknown section (expected one of: {})", known.join(", ")),
            ));
            continue;
        };
        raw.present.push(name.to_string());
        if !value.get_ref().is_table() {
            let ty = value.get_ref().type_str();
            let article = if ty.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            problems.push(Problem::new(
                [name],
                At::Value,
                format!("must be a table, not {article} {ty}"),
            ));
            continue;
        }
        if name == "images" {
            raw.images = super::images::parse_raw(value.clone(), problems);
            continue;
        }
        let value = without_unknown_keys(name, section.keys, value.clone(), problems);
        let span = value.span();
        if let Err(e) = (section.read)(ValueDeserializer::from(value), &mut raw) {
            problems.push(Problem::serde(name, e.message(), e.span().or(Some(span))));
        }
    }
    (Some(doc), Some(raw))
}

/// Reports and drops keys a fixed-shape section does not know, so that serde then
/// checks the types of the keys it does know.
fn without_unknown_keys<'a>(
    section: &str,
    fields: &[&str],
    mut value: Spanned<DeValue<'a>>,
    problems: &mut Vec<Problem>,
) -> Spanned<DeValue<'a>> {
    if fields.is_empty() {
        return value;
    }
    if let DeValue::Table(table) = value.get_mut() {
        let mut kept = DeTable::new();
        for (k, v) in std::mem::take(table) {
            if fields.contains(&k.get_ref().as_ref()) {
                kept.insert(k, v);
            } else {
                problems.push(Problem::new(
                    [section, k.get_ref().as_ref()],
                    At::Key,
                    format!("unknown key (expected one of: {})", fields.join(", ")),
                ));
            }
        }
        *table = kept;
    }
    value
}
