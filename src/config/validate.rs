//! Second step of loading: raw sections → typed [`Config`], collecting every
//! semantic problem (names, paths, ranges, durations, cross-key rules).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::diagnostics::{At, Problem, Seg};
use super::download::{self, Download, RawModel};
use super::limits::{self, DurationLimit};
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

    fn duration(
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
    fn checked_duration(
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

    fn absolute(&mut self, path: &[Seg], raw: &str) -> PathBuf {
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
    fn arg(&mut self, path: Vec<Seg>, s: &str) {
        if let Some(why) = limits::arg(s) {
            self.value(path, why);
        }
    }

    /// File and extension names become single path components under the data dir.
    /// False when the name was reported.
    fn plain_name(&mut self, path: &[Seg], name: &str) -> bool {
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
    fn link_fits(&mut self, path: &[Seg], data_dir: Option<&str>, folder: &str, name: &str) {
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
        Some(Some(p)) if p.starts_with('/') && !p.contains('\0') => {
            if let Some(why) = limits::path(p) {
                c.value([Seg::from("ui"), "command".into(), 0.into()], why);
            }
        }
        Some(Some(_)) => {}
    }
    let command = raw.command.unwrap_or_default();
    let extra_args = raw.extra_args.unwrap_or_default();
    for (key, list) in [("command", &command), ("extra_args", &extra_args)] {
        for (i, arg) in list.iter().enumerate() {
            c.arg(vec!["ui".into(), key.into(), i.into()], arg);
        }
    }
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
        if let Some(why) = limits::env_name(k) {
            c.at(["ui", "environment", k.as_str()], At::Key, why);
        }
        if v.contains('\0') {
            c.value(
                ["ui", "environment", k.as_str()],
                "value contains a NUL byte",
            );
        } else if let Some(why) = limits::arg(&format!("{k}={v}")) {
            c.value(
                ["ui", "environment", k.as_str()],
                format!("NAME=value {why}"),
            );
        }
    }
    let exec_bytes: usize = command
        .iter()
        .chain(&extra_args)
        .map(|a| a.len() + 1)
        .chain(environment.iter().map(|(k, v)| k.len() + v.len() + 2))
        .sum();
    if exec_bytes > limits::EXEC_BYTES_MAX {
        c.value(
            ["ui", "extra_args"],
            format!(
                "ui.command, ui.extra_args and ui.environment add up to {exec_bytes} bytes; \
                 the UI's exec allows the config at most {}",
                limits::EXEC_BYTES_MAX
            ),
        );
    }
    if raw.gpus.as_ref().is_some_and(Vec::is_empty) {
        c.value(
            ["ui", "gpus"],
            "is empty; omit it to inherit CUDA_VISIBLE_DEVICES",
        );
    }
    let gpus = raw.gpus.map(|ids| gpu_list(c, ids));
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
        limits::STARTUP_TIMEOUT,
    );
    let stop_timeout = c.duration(
        "ui",
        "stop_timeout",
        raw.stop_timeout.as_deref(),
        "30s",
        limits::STOP_TIMEOUT,
    );
    Some(UiConfig {
        flavor: flavor?,
        command,
        listen: raw.listen.unwrap_or(false),
        port,
        extra_args,
        environment,
        gpus,
        api_auth_file,
        startup_timeout,
        stop_timeout,
    })
}

/// GPU indices: each duplicate reported once (with how often it appears), however
/// long the list.
fn gpu_list(c: &mut Checker<'_>, ids: Vec<i64>) -> Vec<u32> {
    // id → (how often, index of its second appearance)
    let mut seen: BTreeMap<i64, (usize, Option<usize>)> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        if !(0..=i64::from(u32::MAX)).contains(&id) {
            c.value(
                [Seg::from("ui"), "gpus".into(), i.into()],
                format!("{id} is not a GPU index"),
            );
            continue;
        }
        let entry = seen.entry(id).or_insert((0, None));
        entry.0 += 1;
        match entry.0 {
            1 => out.push(id as u32),
            2 => entry.1 = Some(i),
            _ => {}
        }
    }
    for (id, (count, second)) in seen {
        if let Some(i) = second {
            let times = if count == 2 {
                "twice".to_string()
            } else {
                format!("{count} times")
            };
            c.value(
                [Seg::from("ui"), "gpus".into(), i.into()],
                format!("GPU {id} is listed {times}"),
            );
        }
    }
    if out.len() > limits::GPUS_MAX {
        c.value(
            ["ui", "gpus"],
            format!("lists {} GPUs; at most {}", out.len(), limits::GPUS_MAX),
        );
    }
    out
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
    ControlConfig {
        socket,
        dbus,
        http_listen,
        token_file,
    }
}
