//! Second step of loading: raw sections → typed [`Config`], collecting every
//! semantic problem (names, paths, ranges, durations, cross-key rules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::checker::Checker;
use super::diagnostics::{At, Problem, Seg};
use super::download::{self, Download, RawModel};
use super::limits;
use super::raw::{RawConfig, RawControl, RawData, RawRestart};
use super::validate_ui::ui_config;
use super::{
    Config, ControlConfig, DEFAULT_MAX_CONNECTIONS, DEFAULT_SOCKET, DataConfig, DbusBus,
    DownloadsConfig, MAX_CONNECTIONS_LIMIT, RestartConfig, RestartPolicy, UiConfig,
};
use crate::ui::flavor::{Flavor, ModelKind};

/// Validates the raw config; `None` when a required part is missing or unusable.
pub fn validate(raw: RawConfig, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut c = Checker { problems };
    let ui = match raw.ui {
        Some(ui) => ui_config(&mut c, ui),
        None => {
            if !raw.present.iter().any(|s| s == "ui") {
                c.at(["ui"], At::Value, "required section [ui] is missing");
            }
            None
        }
    };
    let flavor = ui.as_ref().map(|u: &UiConfig| u.flavor);
    let data = match raw.data {
        Some(data) => data_config(&mut c, flavor, data),
        None => {
            if !raw.present.iter().any(|s| s == "data") {
                c.at(["data"], At::Value, "required section [data] is missing");
            }
            None
        }
    };
    // Links are checked only against a data dir that is itself valid.
    let data_dir = data
        .as_ref()
        .and_then(|d| d.dir.to_str())
        .filter(|d| d.starts_with('/') && !d.contains('\0') && limits::path(d).is_none());
    let (mut models, downloads) = models(&mut c, flavor, data_dir, raw.models);
    let max_concurrent = download::downloads_section(&raw.downloads)
        .map_err(|m| c.value(["downloads", "max_concurrent"], m))
        .unwrap_or(download::DEFAULT_MAX_CONCURRENT);
    if let Some(data) = &data {
        for (kind, files) in &downloads {
            let table = models.entry(*kind).or_default();
            for (name, d) in files {
                table.insert(name.clone(), download::cache_path(&data.dir, &d.sha256));
            }
        }
    }
    let extensions_dir = flavor.map(Flavor::extensions_dir);
    let extensions = named_paths(
        &mut c,
        "extensions",
        data_dir.zip(extensions_dir),
        raw.extensions,
    );
    let settings = settings(raw.settings);
    let restart = restart_config(&mut c, raw.restart);
    let control = control_config(&mut c, raw.control);
    if let (Some(ui), Some(addr)) = (&ui, control.http_listen) {
        // The UI binds loopback, or every address with `listen`.
        let overlaps = ui.listen || addr.ip().is_unspecified() || addr.ip().is_loopback();
        if addr.port() == ui.port && overlaps {
            c.value(
                ["control", "http_listen"],
                format!(
                    "port {} is ui.port: the UI and the control API cannot both listen there",
                    ui.port
                ),
            );
        }
    }
    let front = super::front::validate(&mut c, raw.front, ui.as_ref().map(|u| u.port));
    if let (true, Some(addr), Some(port)) = (front.enable, control.http_listen, front.ui_port)
        && addr.port() == port
    {
        c.value(
            ["control", "http_listen"],
            format!(
                "port {port} is front.ui_port: the UI and the control API cannot both listen there"
            ),
        );
    }
    let gpu = super::gpu::validate(&mut c, raw.gpu, ui.as_ref().map(|u| u.flavor));
    let health = super::health::validate(&mut c, raw.health);
    let kubernetes = super::kubernetes::validate(raw.kubernetes);
    let keep_asked = raw.queue.keep;
    let mut queue = super::queue::validate(&mut c, raw.queue);
    let instances = super::instances::validate(&mut c, raw.instances, ui.as_ref().map(|u| u.port));
    if !instances.is_empty() {
        instances_fit(&mut c, ui.as_ref(), &front, keep_asked);
        // Not yet kept across instances: off unless asked for (then refused).
        queue.keep = false;
    }
    let supervisor = super::supervisor::validate(raw.supervisor, c.problems);
    Some(Config {
        ui: ui?,
        data: data?,
        models,
        extensions,
        settings,
        restart,
        control,
        front,
        gpu,
        health,
        kubernetes,
        queue,
        supervisor,
        downloads: DownloadsConfig {
            max_concurrent,
            models: downloads,
        },
        images: BTreeMap::new(),
        instances,
        instance: None,
    })
}

/// What `[instances]` asks of the rest of the file: the front door (it is the
/// one queue in front of them), GPUs named per instance, no `front.ui_port`
/// (each instance has its port), no `queue.keep` yet.
fn instances_fit(
    c: &mut Checker<'_>,
    ui: Option<&UiConfig>,
    front: &super::FrontConfig,
    keep_asked: Option<bool>,
) {
    if !front.enable {
        c.value(
            ["front", "enable"],
            "is false, but [instances] needs the front door: it is the one queue in front of them",
        );
    }
    if front.ui_port.is_some() {
        c.value(
            ["front", "ui_port"],
            "with [instances], each instance has its private port (instances.<name>.port)",
        );
    }
    if ui.is_some_and(|u| u.gpus.is_some()) {
        c.value(
            ["ui", "gpus"],
            "with [instances], each instance names its GPUs (instances.<name>.gpus)",
        );
    }
    if keep_asked == Some(true) {
        c.value(
            ["queue", "keep"],
            "the queue journal does not yet work with [instances]; set it to false",
        );
    }
}

fn data_config(c: &mut Checker<'_>, flavor: Option<Flavor>, raw: RawData) -> Option<DataConfig> {
    let dir = match raw.dir {
        Some(d) => {
            let before = c.problems.len();
            let dir = c.absolute(&["data".into(), "dir".into()], &d);
            // The deepest thing the layout writes: a temporary name in the deepest folder.
            let deepest = flavor.map_or(0, |f| {
                f.required_dirs()
                    .into_iter()
                    .chain([f.settings_file()])
                    .map(str::len)
                    .max()
                    .unwrap_or(0)
            }) + 1
                + limits::TEMP_NAME_ROOM;
            if c.problems.len() == before && d.len() + 1 + deepest > limits::PATH_MAX {
                c.value(
                    ["data", "dir"],
                    format!(
                        "is {} bytes long; with the folders the UI needs under it, paths would exceed {} bytes",
                        d.len(),
                        limits::PATH_MAX
                    ),
                );
            }
            Some(dir)
        }
        None => {
            c.missing("data", "dir");
            None
        }
    };
    let text = raw.permissions.unwrap_or_else(|| "0700".into());
    // from_str_radix alone would also take a sign ("+700").
    let octal = text.bytes().all(|b| (b'0'..=b'7').contains(&b));
    let permissions = match u32::from_str_radix(&text, 8) {
        Ok(mode) if octal && text.len() >= 3 && mode <= 0o7777 => {
            if mode & 0o700 != 0o700 {
                c.value(
                    ["data", "permissions"],
                    format!("{text:?} does not give the owner rwx (0700), which directories need"),
                );
            }
            mode
        }
        _ => {
            c.value(
                ["data", "permissions"],
                format!("{text:?} is not an octal mode like \"0700\" or \"0750\""),
            );
            0o700
        }
    };
    Some(DataConfig {
        dir: dir?,
        permissions,
    })
}

/// Kind → name → target, and kind → name → download for the download form
/// (whose targets are filled in once the data dir is known).
type Models = (
    BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
    BTreeMap<ModelKind, BTreeMap<String, Download>>,
);

fn models(
    c: &mut Checker<'_>,
    flavor: Option<Flavor>,
    data_dir: Option<&str>,
    raw: BTreeMap<String, BTreeMap<String, RawModel>>,
) -> Models {
    let mut out = BTreeMap::new();
    let mut downloads: BTreeMap<ModelKind, BTreeMap<String, Download>> = BTreeMap::new();
    for (kind_name, files) in raw {
        let Some(kind) = ModelKind::parse(&kind_name) else {
            let known: Vec<&str> = ModelKind::ALL.iter().map(|k| k.name()).collect();
            c.at(
                ["models", kind_name.as_str()],
                At::Key,
                format!("unknown model kind (expected one of: {})", known.join(", ")),
            );
            continue;
        };
        if let Some(f) = flavor.filter(|f| f.model_dir(kind).is_none()) {
            let users: Vec<&str> = Flavor::ALL
                .iter()
                .filter(|g| g.model_dir(kind).is_some())
                .map(|g| g.name())
                .collect();
            c.at(
                ["models", kind_name.as_str()],
                At::Key,
                format!(
                    "model kind {kind_name:?} is not used by flavor {:?} (only by: {})",
                    f.name(),
                    users.join(", ")
                ),
            );
            continue;
        }
        let mut table = BTreeMap::new();
        for (name, target) in files {
            let path: Vec<Seg> = vec!["models".into(), (&kind_name).into(), (&name).into()];
            if c.plain_name(&path, &name)
                && let Some(folder) = flavor.and_then(|f| f.model_dir(kind))
            {
                c.link_fits(&path, data_dir, folder, &name);
            }
            match target {
                RawModel::Path(target) => {
                    table.insert(name, c.absolute(&path, &target));
                }
                RawModel::Invalid(msg) => c.value(path, msg),
                RawModel::Download(raw) => match download::download(raw) {
                    Ok(d) => {
                        downloads.entry(kind).or_default().insert(name, d);
                    }
                    Err(problems) => {
                        for (key, msg) in problems {
                            let mut at = path.clone();
                            at.push(key.into());
                            c.value(at, msg);
                        }
                    }
                },
            }
        }
        out.insert(kind, table);
    }
    (out, downloads)
}

/// `(data dir, folder)`: where the links of a named-paths section go.
fn named_paths(
    c: &mut Checker<'_>,
    section: &str,
    links: Option<(&str, &str)>,
    raw: BTreeMap<String, String>,
) -> BTreeMap<String, PathBuf> {
    raw.into_iter()
        .map(|(name, target)| {
            let path: Vec<Seg> = vec![section.into(), (&name).into()];
            if c.plain_name(&path, &name)
                && let Some((dir, folder)) = links
            {
                c.link_fits(&path, Some(dir), folder, &name);
            }
            let target = c.absolute(&path, &target);
            (name, target)
        })
        .collect()
}

fn settings(raw: toml::Table) -> serde_json::Map<String, serde_json::Value> {
    raw.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()
}

/// TOML values as the JSON the UIs store (datetimes become strings).
pub(super) fn toml_to_json(v: toml::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        toml::Value::String(s) => J::String(s),
        toml::Value::Integer(i) => J::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        toml::Value::Boolean(b) => J::Bool(b),
        toml::Value::Datetime(d) => J::String(d.to_string()),
        toml::Value::Array(a) => J::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            J::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

fn restart_config(c: &mut Checker<'_>, raw: RawRestart) -> RestartConfig {
    let policy = match raw.policy.as_deref().unwrap_or("when-idle") {
        "when-idle" => RestartPolicy::WhenIdle,
        "immediately" => RestartPolicy::Immediately,
        "manual" => RestartPolicy::Manual,
        other => {
            c.value(
                ["restart", "policy"],
                format!(
                    "unknown policy {other:?} (expected one of: when-idle, immediately, manual)"
                ),
            );
            RestartPolicy::WhenIdle
        }
    };
    let idle_grace = c.checked_duration(
        "restart",
        "idle_grace",
        raw.idle_grace.as_deref(),
        "10s",
        limits::IDLE_GRACE,
    );
    // `None` inside: "never"; `None` outside: invalid, already reported.
    let deadline = match raw.deadline.as_deref() {
        Some("never") => Some(None),
        other => c
            .checked_duration("restart", "deadline", other, "6h", limits::DEADLINE)
            .map(Some),
    };
    if let (Some(Some(deadline)), Some(idle_grace)) = (deadline, idle_grace)
        && deadline <= idle_grace
    {
        c.value(
            ["restart", "deadline"],
            format!(
                "must be longer than restart.idle_grace ({} <= {})",
                humantime::format_duration(deadline),
                humantime::format_duration(idle_grace)
            ),
        );
    }
    let poll_interval = c.duration(
        "restart",
        "poll_interval",
        raw.poll_interval.as_deref(),
        "2s",
        limits::POLL_INTERVAL,
    );
    RestartConfig {
        policy,
        idle_grace: idle_grace.unwrap_or(Duration::from_secs(1)),
        deadline: deadline.flatten(),
        poll_interval,
    }
}

fn control_config(c: &mut Checker<'_>, raw: RawControl) -> ControlConfig {
    let socket_text = raw.socket.as_deref().unwrap_or(DEFAULT_SOCKET);
    let socket = c.absolute(&["control".into(), "socket".into()], socket_text);
    if let Some(why) = limits::socket_path(socket_text) {
        c.value(["control", "socket"], why);
    }
    let dbus = match raw.dbus.as_deref().unwrap_or("off") {
        "system" => DbusBus::System,
        "session" => DbusBus::Session,
        "off" => DbusBus::Off,
        other => {
            c.value(
                ["control", "dbus"],
                format!("unknown bus {other:?} (expected one of: system, session, off)"),
            );
            DbusBus::Off
        }
    };
    let http_listen = raw.http_listen.and_then(|a| match a.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            c.value(
                ["control", "http_listen"],
                format!("{a:?} is not an address like \"127.0.0.1:7870\""),
            );
            None
        }
    });
    let token_file = raw
        .token_file
        .map(|p| c.absolute(&["control".into(), "token_file".into()], &p));
    if http_listen.is_some() && token_file.is_none() {
        c.value(
            ["control", "http_listen"],
            "needs control.token_file: the TCP listener requires a bearer token",
        );
    }
    let max_connections = match raw.max_connections {
        None => DEFAULT_MAX_CONNECTIONS,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=MAX_CONNECTIONS_LIMIT).contains(&n) => n,
            _ => {
                c.value(
                    ["control", "max_connections"],
                    format!("{n} is out of range (1 to {MAX_CONNECTIONS_LIMIT})"),
                );
                DEFAULT_MAX_CONNECTIONS
            }
        },
    };
    ControlConfig {
        socket,
        dbus,
        http_listen,
        token_file,
        max_connections,
    }
}
