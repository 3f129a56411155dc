//! Second step of loading: raw sections → typed [`Config`], collecting every
//! semantic problem (names, paths, ranges, durations, cross-key rules).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use super::diagnostics::{At, Problem, Seg};
use super::download::{self, Download, RawModel};
use super::raw::{RawConfig, RawControl, RawData, RawRestart, RawUi};
use super::{
    Config, ControlConfig, DEFAULT_SOCKET, DataConfig, DbusBus, DownloadsConfig, RestartConfig,
    RestartPolicy, UiConfig,
};
use crate::ui::flavor::{Flavor, ModelKind};

/// Collects problems while converting.
struct Checker<'p> {
    problems: &'p mut Vec<Problem>,
}

impl Checker<'_> {
    fn at<S: Into<Seg>>(
        &mut self,
        path: impl IntoIterator<Item = S>,
        at: At,
        msg: impl Into<String>,
    ) {
        self.problems.push(Problem::new(path, at, msg.into()));
    }

    fn value<S: Into<Seg>>(&mut self, path: impl IntoIterator<Item = S>, msg: impl Into<String>) {
        self.at(path, At::Value, msg);
    }

    fn missing(&mut self, section: &str, key: &str) {
        self.value([section, key], "required key is missing");
    }

    fn duration(&mut self, section: &str, key: &str, raw: Option<&str>, default: &str) -> Duration {
        self.checked_duration(section, key, raw, default)
            .unwrap_or(Duration::from_secs(1))
    }

    /// Like [`Checker::duration`], but `None` when the value was reported as invalid,
    /// so that cross-key rules do not compare against a stand-in value.
    fn checked_duration(
        &mut self,
        section: &str,
        key: &str,
        raw: Option<&str>,
        default: &str,
    ) -> Option<Duration> {
        let text = raw.unwrap_or(default);
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => {
                self.value([section, key], "must be longer than zero");
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

    fn absolute(&mut self, path: &[Seg], raw: &str) -> PathBuf {
        let p = PathBuf::from(raw);
        if raw.is_empty() {
            self.value(path.to_vec(), "must not be empty");
        } else if raw.contains('\0') {
            self.value(path.to_vec(), "must not contain a NUL byte");
        } else if !p.is_absolute() {
            self.value(path.to_vec(), format!("{raw:?} is not an absolute path"));
        }
        p
    }

    /// File and extension names become single path components under the data dir.
    fn plain_name(&mut self, path: &[Seg], name: &str) {
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
        if let Some(why) = why {
            self.at(path.to_vec(), At::Key, why);
        }
    }
}

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
    let data = match raw.data {
        Some(data) => data_config(&mut c, data),
        None => {
            if !raw.present.iter().any(|s| s == "data") {
                c.at(["data"], At::Value, "required section [data] is missing");
            }
            None
        }
    };
    let flavor = ui.as_ref().map(|u: &UiConfig| u.flavor);
    let (mut models, downloads) = models(&mut c, flavor, raw.models);
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
    let extensions = named_paths(&mut c, "extensions", raw.extensions);
    let settings = settings(raw.settings);
    let restart = restart_config(&mut c, raw.restart);
    let control = control_config(&mut c, raw.control);
    Some(Config {
        ui: ui?,
        data: data?,
        models,
        extensions,
        settings,
        restart,
        control,
        downloads: DownloadsConfig {
            max_concurrent,
            models: downloads,
        },
    })
}

fn ui_config(c: &mut Checker<'_>, raw: RawUi) -> Option<UiConfig> {
    let flavor = match raw.flavor.as_deref() {
        None => {
            c.missing("ui", "flavor");
            None
        }
        Some(name) => {
            let f = Flavor::parse(name);
            if f.is_none() {
                c.value(
                    ["ui", "flavor"],
                    format!("unknown flavor {name:?} (expected one of: forge, a1111, comfyui)"),
                );
            }
            f
        }
    };
    match raw.command.as_deref().map(<[String]>::first) {
        None => c.missing("ui", "command"),
        Some(None) => c.value(
            ["ui", "command"],
            "must name the program to run (a non-empty list)",
        ),
        Some(Some(p)) if p.is_empty() => {
            c.value(["ui", "command"], "the program (first element) is empty")
        }
        Some(Some(p)) if p.contains('/') && !p.starts_with('/') => c.value(
            ["ui", "command"],
            format!("the program {p:?} must be an absolute path or a bare name found on PATH"),
        ),
        Some(Some(_)) => {}
    }
    let command = raw.command.unwrap_or_default();
    let port = match raw.port {
        None => flavor.map_or(7860, Flavor::default_port),
        Some(p) if (1..=65535).contains(&p) => p as u16,
        Some(p) => {
            c.value(["ui", "port"], format!("{p} is out of range (1–65535)"));
            1
        }
    };
    let environment = raw.environment.unwrap_or_default();
    for (k, v) in &environment {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            c.at(
                ["ui", "environment", k.as_str()],
                At::Key,
                "not a valid environment variable name",
            );
        }
        if v.contains('\0') {
            c.value(
                ["ui", "environment", k.as_str()],
                "value contains a NUL byte",
            );
        }
    }
    if raw.gpus.as_ref().is_some_and(Vec::is_empty) {
        c.value(
            ["ui", "gpus"],
            "is empty; omit it to inherit CUDA_VISIBLE_DEVICES",
        );
    }
    let gpus = raw.gpus.map(|ids| {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            if !(0..=u32::MAX as i64).contains(&id) {
                c.value(
                    [Seg::from("ui"), "gpus".into(), i.into()],
                    format!("{id} is not a GPU index"),
                );
            } else if !seen.insert(id) {
                c.value(
                    [Seg::from("ui"), "gpus".into(), i.into()],
                    format!("GPU {id} is listed twice"),
                );
            } else {
                out.push(id as u32);
            }
        }
        out
    });
    if gpus.is_some() && environment.contains_key("CUDA_VISIBLE_DEVICES") {
        c.at(
            ["ui", "environment", "CUDA_VISIBLE_DEVICES"],
            At::Key,
            "conflicts with ui.gpus, which sets CUDA_VISIBLE_DEVICES; remove one of them",
        );
    }
    let api_auth_file = raw.api_auth_file.map(|p| {
        let path = c.absolute(&["ui".into(), "api_auth_file".into()], &p);
        if flavor == Some(Flavor::Comfyui) {
            c.value(
                ["ui", "api_auth_file"],
                "ComfyUI has no API authentication (--api-auth is Forge/A1111 only)",
            );
        }
        path
    });
    let startup_timeout = c.duration(
        "ui",
        "startup_timeout",
        raw.startup_timeout.as_deref(),
        "15m",
    );
    let stop_timeout = c.duration("ui", "stop_timeout", raw.stop_timeout.as_deref(), "30s");
    Some(UiConfig {
        flavor: flavor?,
        command,
        listen: raw.listen.unwrap_or(false),
        port,
        extra_args: raw.extra_args.unwrap_or_default(),
        environment,
        gpus,
        api_auth_file,
        startup_timeout,
        stop_timeout,
    })
}

fn data_config(c: &mut Checker<'_>, raw: RawData) -> Option<DataConfig> {
    let dir = match raw.dir {
        Some(d) => Some(c.absolute(&["data".into(), "dir".into()], &d)),
        None => {
            c.missing("data", "dir");
            None
        }
    };
    let text = raw.permissions.unwrap_or_else(|| "0700".into());
    let permissions = match u32::from_str_radix(&text, 8) {
        Ok(mode) if text.len() >= 3 && mode <= 0o7777 => {
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
            c.plain_name(&path, &name);
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

fn named_paths(
    c: &mut Checker<'_>,
    section: &str,
    raw: BTreeMap<String, String>,
) -> BTreeMap<String, PathBuf> {
    raw.into_iter()
        .map(|(name, target)| {
            let path: Vec<Seg> = vec![section.into(), (&name).into()];
            c.plain_name(&path, &name);
            let target = c.absolute(&path, &target);
            (name, target)
        })
        .collect()
}

fn settings(raw: toml::Table) -> serde_json::Map<String, serde_json::Value> {
    raw.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()
}

/// TOML values as the JSON the UIs store (datetimes become strings).
fn toml_to_json(v: toml::Value) -> serde_json::Value {
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
    let idle_grace = c.checked_duration("restart", "idle_grace", raw.idle_grace.as_deref(), "10s");
    // `None` inside: "never"; `None` outside: invalid, already reported.
    let deadline = match raw.deadline.as_deref() {
        Some("never") => Some(None),
        other => c
            .checked_duration("restart", "deadline", other, "6h")
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
    );
    RestartConfig {
        policy,
        idle_grace: idle_grace.unwrap_or(Duration::from_secs(1)),
        deadline: deadline.flatten(),
        poll_interval,
    }
}

fn control_config(c: &mut Checker<'_>, raw: RawControl) -> ControlConfig {
    let socket = c.absolute(
        &["control".into(), "socket".into()],
        raw.socket.as_deref().unwrap_or(DEFAULT_SOCKET),
    );
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
    ControlConfig {
        socket,
        dbus,
        http_listen,
        token_file,
    }
}
