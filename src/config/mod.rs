//! The config file (docs/design.md#the-config-file): the contract with `module.nix`.
//!
//! Loading is three steps, so that `check-config` can report *every* problem with its
//! line and column instead of stopping at the first: [`raw`] parses the TOML into
//! lenient structs section by section (unknown keys are collected, not fatal),
//! [`validate`] turns them into the typed [`Config`] while collecting semantic
//! problems, and [`diagnostics`] maps each problem's key path back to a position.

mod checker;
mod diagnostics;
pub mod diff;
pub mod download;
pub mod front;
pub mod gpu;
pub mod health;
mod images;
pub mod instances;
pub mod kubernetes;
pub mod limits;
pub mod queue;
mod raw;
pub mod supervisor;
mod validate;
mod validate_ui;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use diagnostics::{ConfigError, Problem};
pub use front::FrontConfig;
pub use gpu::GpuConfig;
pub use health::HealthConfig;
pub use kubernetes::KubernetesConfig;
pub use queue::QueueConfig;

/// The names of the config file's top-level sections, in the order the file
/// documents them (the docs are checked against this list).
pub fn section_names() -> impl Iterator<Item = &'static str> {
    raw::SECTIONS.iter().map(|s| s.name)
}
pub use images::{ImageConfig, Txt2img, Workflow};

use crate::ui::flavor::{Flavor, ModelKind};

/// The whole, validated configuration of one supervised UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// How to run the UI process.
    pub ui: UiConfig,
    /// Where the UI keeps its data.
    pub data: DataConfig,
    /// Model files to link into the data dir: kind → file name → target.
    pub models: BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
    /// Extensions (Forge/A1111) or custom nodes (ComfyUI): name → directory.
    pub extensions: BTreeMap<String, PathBuf>,
    /// Managed UI settings, as JSON values.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// When a config change that needs a UI restart is carried out.
    pub restart: RestartConfig,
    /// The control plane: socket, D-Bus, optional TCP.
    pub control: ControlConfig,
    /// The front door: the supervisor's listener on `ui.port` in front of the UI.
    pub front: FrontConfig,
    /// What the supervisor does for the machine while the UI works on its GPUs
    /// (the sleep inhibitor).
    pub gpu: GpuConfig,
    /// What is done about a UI that answers but no longer works.
    pub health: HealthConfig,
    /// What the supervisor tells the Kubernetes API about its Pod (the
    /// deletion cost a scale-in reads).
    pub kubernetes: KubernetesConfig,
    /// The journal of ComfyUI prompts.
    pub queue: QueueConfig,
    /// Self-upgrade: the binary to run and the unit's fingerprint.
    pub supervisor: supervisor::SupervisorConfig,
    /// Declared images (`[images.<name>]`), rendered by the running UI.
    pub images: BTreeMap<String, ImageConfig>,
    /// Models fetched at run time (their `models` entry targets the cache file).
    pub downloads: DownloadsConfig,
    /// `[instances.<name>]`: one UI per GPU behind the front door; empty: one UI.
    pub instances: Vec<instances::InstanceConfig>,
    /// Which instance this config is the UI of ([`Config::for_instance`]);
    /// `None` in the config as read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

/// `[downloads]` and the download form of model entries.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadsConfig {
    /// At most this many downloads run at once.
    pub max_concurrent: usize,
    /// kind → file name → what to fetch; each also has a `models` entry whose
    /// target is its cache file, so the layout links it like a store model.
    pub models: BTreeMap<ModelKind, BTreeMap<String, download::Download>>,
}

impl Default for DownloadsConfig {
    fn default() -> Self {
        DownloadsConfig {
            max_concurrent: download::DEFAULT_MAX_CONCURRENT,
            models: BTreeMap::new(),
        }
    }
}

/// `[ui]`: the UI process.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UiConfig {
    /// Which UI this is.
    pub flavor: Flavor,
    /// Program and its first arguments.
    pub command: Vec<String>,
    /// Bind all interfaces instead of loopback.
    pub listen: bool,
    /// The UI's HTTP port.
    pub port: u16,
    /// Appended after the supervisor's own arguments, so the user wins.
    pub extra_args: Vec<String>,
    /// Extra environment for the UI.
    pub environment: BTreeMap<String, String>,
    /// GPU indices for `CUDA_VISIBLE_DEVICES`; `None` inherits.
    pub gpus: Option<Vec<u32>>,
    /// File holding `user:pass` for `--api-auth`.
    pub api_auth_file: Option<PathBuf>,
    /// Longest time from exec to the first successful readiness probe.
    #[serde(with = "humantime_serde_compat")]
    pub startup_timeout: Duration,
    /// Grace between SIGINT and SIGKILL when stopping the UI.
    #[serde(with = "humantime_serde_compat")]
    pub stop_timeout: Duration,
}

/// `[data]`: the data directory.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DataConfig {
    /// Absolute path of the data directory.
    pub dir: PathBuf,
    /// Mode for the directories the supervisor creates.
    pub permissions: u32,
}

/// What to do with a change that needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Wait until the queue has been empty for `idle_grace` (or the deadline).
    WhenIdle,
    /// Restart at once, interrupting whatever runs.
    Immediately,
    /// Only report that a restart is needed.
    Manual,
}

impl std::fmt::Display for RestartPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl RestartPolicy {
    /// The config file spelling.
    pub fn name(self) -> &'static str {
        match self {
            RestartPolicy::WhenIdle => "when-idle",
            RestartPolicy::Immediately => "immediately",
            RestartPolicy::Manual => "manual",
        }
    }
}

/// `[restart]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestartConfig {
    /// The policy.
    pub policy: RestartPolicy,
    /// How long the queue must stay empty before a pending restart happens.
    #[serde(with = "humantime_serde_compat")]
    pub idle_grace: Duration,
    /// Restart anyway this long after the first pending change; `None` = never.
    #[serde(with = "humantime_serde_compat::option")]
    pub deadline: Option<Duration>,
    /// Busy-probe period while a restart is pending.
    #[serde(with = "humantime_serde_compat")]
    pub poll_interval: Duration,
}

/// Which D-Bus bus the supervisor serves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DbusBus {
    /// The system bus (needs the shipped policy file).
    System,
    /// The user's session bus.
    Session,
    /// No D-Bus at all.
    Off,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlConfig {
    /// Unix socket of the HTTP control API.
    pub socket: PathBuf,
    /// Bus for the D-Bus interface.
    pub dbus: DbusBus,
    /// Optional TCP listener for the same API.
    pub http_listen: Option<SocketAddr>,
    /// Bearer token file, required with `http_listen`.
    pub token_file: Option<PathBuf>,
    /// Most connections each control listener serves at once; more are closed at
    /// once, so a flood of idle connections cannot use up the daemon's fds.
    pub max_connections: usize,
}

/// `control.max_connections` when the config does not say.
pub const DEFAULT_MAX_CONNECTIONS: usize = 128;
/// Largest accepted `control.max_connections`.
pub const MAX_CONNECTIONS_LIMIT: usize = 65_536;

/// Every section of the file with its keys (empty for the free-form maps
/// `models`, `extensions`, `settings`), read from the structs that parse them, so
/// docs and tests check against the same list the loader enforces.
pub fn sections() -> impl Iterator<Item = (&'static str, &'static [&'static str])> {
    raw::SECTIONS.iter().map(|s| (s.name, s.keys))
}

/// Where client commands look for the daemon when neither `--socket` nor
/// `--config` says.
pub const DEFAULT_SOCKET: &str = "/run/sd-webui-forge/control.sock";

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::read(path, e))?;
        Config::from_bytes(path, &bytes)
    }

    /// Validates a config file's bytes, read strictly as UTF-8: `check-config`,
    /// the daemon's start and every reload go through here, so a file is never
    /// accepted at one and mangled (read lossily) at another. `path` only names
    /// the file in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        let text = std::str::from_utf8(bytes).map_err(|e| ConfigError::encoding(path, bytes, e))?;
        Config::parse(path, text)
    }

    /// Validates config text; `path` only names the file in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let (doc, raw) = raw::parse(text, &mut problems);
        let config = raw.and_then(|mut raw| {
            let images = std::mem::take(&mut raw.images);
            let mut config = validate::validate(raw, &mut problems)?;
            config.images =
                images::validate(images, config.ui.flavor, &config.models, &mut problems);
            Some(config)
        });
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::new(path, text, doc.as_ref(), problems)),
        }
    }

    /// The port the UI process itself listens on: its private loopback port
    /// behind the front door (`ui.port` until one is pinned), else `ui.port`.
    pub fn ui_own_port(&self) -> u16 {
        match (self.front.enable, self.front.ui_port) {
            (true, Some(port)) => port,
            _ => self.ui.port,
        }
    }

    /// Whether the UI process binds every address: never behind the front door,
    /// which alone faces the network.
    pub fn ui_own_listen(&self) -> bool {
        self.ui.listen && !self.front.enable
    }

    /// The config of instance `i`'s UI: the file's, with the instance's GPUs,
    /// port (as `front.ui_port`, the UI's private port), arguments after
    /// `ui.extra_args` and environment over `ui.environment`. `None` when
    /// there is no such instance.
    pub fn for_instance(&self, i: usize) -> Option<Config> {
        let inst = self.instances.get(i)?;
        let mut c = self.clone();
        c.ui.gpus = inst.gpus.clone();
        c.ui.extra_args.extend(inst.extra_args.iter().cloned());
        c.ui.environment.extend(inst.environment.clone());
        c.front.ui_port = inst.port;
        c.instance = Some(inst.name.clone());
        if let Some(own) = c
            .instance_dir()
            .filter(|_| c.ui.flavor != crate::ui::flavor::Flavor::Comfyui)
        {
            // Forge and A1111 number their images from the folder's listing:
            // each instance saves into its own (unless the file says where).
            let out = own.join("outputs");
            for (key, sub) in [
                ("outdir_samples", "samples"),
                ("outdir_grids", "grids"),
                ("outdir_save", "saved"),
                ("outdir_init_images", "init-images"),
            ] {
                c.settings
                    .entry(key)
                    .or_insert_with(|| out.join(sub).display().to_string().into());
            }
        }
        Some(c)
    }

    /// The folder of what this instance's UI writes (docs/instances.md);
    /// `None` for the config as read.
    pub fn instance_dir(&self) -> Option<PathBuf> {
        let name = self.instance.as_deref()?;
        Some(self.data.dir.join(instances::DIR).join(name))
    }

    /// Full argv of the UI: command, managed flavor arguments, then `extra_args`.
    pub fn ui_argv(&self) -> Vec<String> {
        let mut argv = self.ui.command.clone();
        argv.extend(self.ui.flavor.managed_args(
            &self.data.dir,
            self.ui_own_port(),
            self.ui_own_listen(),
        ));
        if let Some(dir) = self.instance_dir() {
            argv.extend(self.ui.flavor.instance_args(&dir));
        }
        argv.extend(self.ui.extra_args.iter().cloned());
        argv
    }
}

/// Serde helpers that print durations the way the config file spells them.
pub(crate) mod humantime_serde_compat {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub mod option {
        use std::time::Duration;

        pub fn serialize<S: serde::Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_str("never"),
            }
        }
    }
}
