//! The one config writer: the parts of a config file the tests change, rendered
//! as TOML (so names and paths are always quoted right).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::env::{free_port, python3, stand_in};

/// A config for one daemon; fields left `None` are not written (the daemon's
/// default applies).
#[derive(Debug, Clone)]
pub struct Conf {
    /// `forge`, `a1111` or `comfyui` (also the stand-in's `STANDIN_FLAVOR`, unless
    /// [`Conf::env`] sets that).
    pub flavor: String,
    /// `ui.command`: program and script.
    pub command: Vec<String>,
    /// `ui.port`.
    pub port: u16,
    /// `ui.extra_args`.
    pub extra_args: Vec<String>,
    /// `ui.environment`, besides `STANDIN_FLAVOR` and `STANDIN_RECORD`.
    pub env: BTreeMap<String, String>,
    /// `ui.gpus`.
    pub gpus: Option<Vec<u32>>,
    /// `ui.startup_timeout`.
    pub startup_timeout: String,
    /// `ui.stop_timeout`.
    pub stop_timeout: String,
    /// `data.dir`.
    pub data_dir: PathBuf,
    /// `data.permissions`.
    pub permissions: Option<String>,
    /// The stand-in's record file (`STANDIN_RECORD`).
    pub record: PathBuf,
    /// `control.socket`.
    pub socket: PathBuf,
    /// `control.dbus`: `off` unless a test needs the bus.
    pub dbus: String,
    /// `[models.<kind>]`: file name → target.
    pub models: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// `[extensions]`: folder name → target.
    pub extensions: BTreeMap<String, PathBuf>,
    /// `[settings]`.
    pub settings: toml::Table,
    /// `restart.policy`.
    pub policy: String,
    /// `restart.idle_grace`.
    pub idle_grace: Option<String>,
    /// `restart.deadline`.
    pub deadline: Option<String>,
    /// `restart.poll_interval`.
    pub poll_interval: Option<String>,
    /// More `[ui]` keys, written as given (e.g. `api_auth_file`).
    pub ui_extra: toml::Table,
    /// More `[control]` keys, written as given (e.g. `http_listen`).
    pub control_extra: toml::Table,
    /// `[front]` keys, written as given (none: the daemon's defaults, the front
    /// door on).
    pub front: toml::Table,
    /// `[gpu]` keys, written as given (none: the daemon's defaults).
    pub gpu: toml::Table,
    /// More sections, each written as given (`health` → its keys).
    pub sections: BTreeMap<String, toml::Table>,
    /// `[supervisor] executable` (self-upgrade), if set.
    pub executable: Option<PathBuf>,
    /// `[supervisor] unit_fingerprint`, if set.
    pub unit_fingerprint: Option<String>,
    /// Models fetched at run time: kind → name → `{ url, sha256, … }`, merged
    /// into `[models]` beside the path models.
    pub downloads: toml::Table,
}

impl Conf {
    /// A config for the stand-in whose files live in `dir`: Forge, restart
    /// `immediately`, nothing else set beyond what the stand-in needs.
    pub fn plain(dir: &Path) -> Conf {
        Conf {
            flavor: "forge".into(),
            command: vec![
                python3().display().to_string(),
                stand_in().display().to_string(),
            ],
            port: free_port(),
            extra_args: Vec::new(),
            env: BTreeMap::new(),
            gpus: None,
            startup_timeout: "60s".into(),
            stop_timeout: "10s".into(),
            data_dir: dir.join("data"),
            permissions: None,
            record: dir.join("record.jsonl"),
            socket: dir.join("control.sock"),
            dbus: "off".into(),
            models: BTreeMap::new(),
            extensions: BTreeMap::new(),
            settings: toml::Table::new(),
            policy: "immediately".into(),
            idle_grace: None,
            deadline: None,
            poll_interval: None,
            ui_extra: toml::Table::new(),
            control_extra: toml::Table::new(),
            front: toml::Table::new(),
            gpu: toml::Table::new(),
            sections: BTreeMap::new(),
            executable: None,
            unit_fingerprint: None,
            downloads: toml::Table::new(),
        }
    }

    /// The reload tests' config: `flavor`, two settings (not for ComfyUI),
    /// restart `when-idle` with a 1 s grace polled every 100 ms, a deadline far away.
    pub fn new(flavor: &str, dir: &Path) -> Conf {
        let mut settings = toml::Table::new();
        if flavor != "comfyui" {
            settings.insert("CLIP_stop_at_last_layers".into(), 2.into());
            settings.insert("samples_format".into(), "png".into());
        }
        Conf {
            flavor: flavor.into(),
            settings,
            policy: "when-idle".into(),
            idle_grace: Some("1s".into()),
            deadline: Some("1h".into()),
            poll_interval: Some("100ms".into()),
            ui_extra: toml::Table::new(),
            control_extra: toml::Table::new(),
            ..Conf::plain(dir)
        }
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        use toml::{Table, Value as T};
        fn strings(v: &[String]) -> T {
            T::Array(v.iter().cloned().map(T::String).collect())
        }
        fn paths<'a>(m: impl Iterator<Item = (&'a String, &'a PathBuf)>) -> T {
            T::Table(
                m.map(|(k, p)| (k.clone(), T::String(p.display().to_string())))
                    .collect(),
            )
        }
        let mut env = self.env.clone();
        env.entry("STANDIN_FLAVOR".into())
            .or_insert_with(|| self.flavor.clone());
        env.insert("STANDIN_RECORD".into(), self.record.display().to_string());
        let mut ui = Table::new();
        ui.insert("flavor".into(), T::String(self.flavor.clone()));
        ui.insert("command".into(), strings(&self.command));
        ui.insert("port".into(), T::Integer(i64::from(self.port)));
        ui.insert("extra_args".into(), strings(&self.extra_args));
        ui.insert(
            "environment".into(),
            T::Table(env.into_iter().map(|(k, v)| (k, T::String(v))).collect()),
        );
        if let Some(gpus) = &self.gpus {
            ui.insert(
                "gpus".into(),
                T::Array(gpus.iter().map(|g| T::Integer(i64::from(*g))).collect()),
            );
        }
        ui.insert(
            "startup_timeout".into(),
            T::String(self.startup_timeout.clone()),
        );
        ui.insert("stop_timeout".into(), T::String(self.stop_timeout.clone()));
        ui.extend(self.ui_extra.clone());
        let mut data = Table::new();
        data.insert("dir".into(), T::String(self.data_dir.display().to_string()));
        if let Some(p) = &self.permissions {
            data.insert("permissions".into(), T::String(p.clone()));
        }
        let mut restart = Table::new();
        restart.insert("policy".into(), T::String(self.policy.clone()));
        for (key, value) in [
            ("idle_grace", &self.idle_grace),
            ("deadline", &self.deadline),
            ("poll_interval", &self.poll_interval),
        ] {
            if let Some(v) = value {
                restart.insert(key.into(), T::String(v.clone()));
            }
        }
        let mut control = Table::new();
        control.insert(
            "socket".into(),
            T::String(self.socket.display().to_string()),
        );
        control.insert("dbus".into(), T::String(self.dbus.clone()));
        control.extend(self.control_extra.clone());
        let mut doc = Table::new();
        doc.insert("ui".into(), T::Table(ui));
        doc.insert("data".into(), T::Table(data));
        let mut models: Table = self
            .models
            .iter()
            .map(|(kind, files)| (kind.clone(), paths(files.iter())))
            .collect();
        for (kind, files) in &self.downloads {
            if let (Some(T::Table(all)), T::Table(more)) = (models.get_mut(kind), files) {
                all.extend(more.clone());
            } else {
                models.insert(kind.clone(), files.clone());
            }
        }
        if !models.is_empty() {
            doc.insert("models".into(), T::Table(models));
        }
        if !self.extensions.is_empty() {
            doc.insert("extensions".into(), paths(self.extensions.iter()));
        }
        if !self.settings.is_empty() {
            doc.insert("settings".into(), T::Table(self.settings.clone()));
        }
        doc.insert("restart".into(), T::Table(restart));
        doc.insert("control".into(), T::Table(control));
        for (name, keys) in &self.sections {
            doc.insert(name.clone(), T::Table(keys.clone()));
        }
        if !self.front.is_empty() {
            doc.insert("front".into(), T::Table(self.front.clone()));
        }
        if !self.gpu.is_empty() {
            doc.insert("gpu".into(), T::Table(self.gpu.clone()));
        }
        let mut supervisor = Table::new();
        if let Some(exe) = &self.executable {
            supervisor.insert("executable".into(), T::String(exe.display().to_string()));
        }
        if let Some(fp) = &self.unit_fingerprint {
            supervisor.insert("unit_fingerprint".into(), T::String(fp.clone()));
        }
        if !supervisor.is_empty() {
            doc.insert("supervisor".into(), T::Table(supervisor));
        }
        toml::to_string(&doc).expect("the config renders as TOML")
    }

    /// The settings as the JSON values the UI should hold.
    pub fn settings_json(&self) -> serde_json::Map<String, Value> {
        self.settings
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::to_value(v).expect("a TOML value is JSON"),
                )
            })
            .collect()
    }
}

/// Writes `text` to `path` atomically (temp file in the same dir, then rename), the
/// way NixOS activation and most editors replace a file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write the temp config");
    std::fs::rename(&tmp, path).expect("rename the config into place");
}

/// Rewrites `path` in place (truncate and write), like `echo > file`.
pub fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the config in place");
}
