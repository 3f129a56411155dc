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

/// `[ui]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUi {
    pub flavor: Option<String>,
    pub command: Option<Vec<String>>,
    pub listen: Option<bool>,
    pub port: Option<i64>,
    pub extra_args: Option<Vec<String>>,
    pub environment: Option<BTreeMap<String, String>>,
    pub gpus: Option<Vec<i64>>,
    pub api_auth_file: Option<String>,
    pub startup_timeout: Option<String>,
    pub stop_timeout: Option<String>,
}

/// `[data]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawData {
    pub dir: Option<String>,
    pub permissions: Option<String>,
}

/// `[restart]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRestart {
    pub policy: Option<String>,
    pub idle_grace: Option<String>,
    pub deadline: Option<String>,
    pub poll_interval: Option<String>,
}

/// `[control]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawControl {
    pub socket: Option<String>,
    pub dbus: Option<String>,
    pub http_listen: Option<String>,
    pub token_file: Option<String>,
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
    pub downloads: RawDownloads,
}

/// Keys allowed in each fixed-shape section (the others are free-form maps).
const SECTIONS: &[(&str, &[&str])] = &[
    (
        "ui",
        &[
            "flavor",
            "command",
            "listen",
            "port",
            "extra_args",
            "environment",
            "gpus",
            "api_auth_file",
            "startup_timeout",
            "stop_timeout",
        ],
    ),
    ("data", &["dir", "permissions"]),
    ("models", &[]),
    ("extensions", &[]),
    ("settings", &[]),
    (
        "restart",
        &["policy", "idle_grace", "deadline", "poll_interval"],
    ),
    ("control", &["socket", "dbus", "http_listen", "token_file"]),
    ("downloads", DOWNLOADS_KEYS),
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
        let Some((_, fields)) = SECTIONS.iter().find(|(s, _)| *s == name) else {
            let known: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
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
        let value = without_unknown_keys(name, fields, value.clone(), problems);
        let span = value.span();
        let de = ValueDeserializer::from(value);
        let parsed: Result<(), toml::de::Error> = match name {
            "ui" => RawUi::deserialize(de).map(|v| raw.ui = Some(v)),
            "data" => RawData::deserialize(de).map(|v| raw.data = Some(v)),
            "models" => Deserialize::deserialize(de).map(|v| raw.models = v),
            "extensions" => Deserialize::deserialize(de).map(|v| raw.extensions = v),
            "settings" => Deserialize::deserialize(de).map(|v| raw.settings = v),
            "restart" => RawRestart::deserialize(de).map(|v| raw.restart = v),
            "downloads" => RawDownloads::deserialize(de).map(|v| raw.downloads = v),
            _ => RawControl::deserialize(de).map(|v| raw.control = v),
        };
        if let Err(e) = parsed {
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
