//! What a new config changes, and how each change must be applied (docs/design.md#reload-and-restart).
//!
//! Pure, so the core can decide a reload's live part and its restart part before
//! touching anything, and so every row of the table is tested without a UI.
//! Both configs are destructured field by field: a field added to [`Config`] does
//! not compile here until it is classified.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use crate::config::QueueConfig;
use crate::config::instances::InstanceConfig;
use crate::config::supervisor::SupervisorConfig;
use crate::config::{
    Config, ControlConfig, DataConfig, FrontConfig, GpuConfig, KubernetesConfig, RestartConfig,
    UiConfig,
};
use crate::ui::flavor::{Flavor, ModelKind};

/// The classified difference between the running config and a new one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigDiff {
    /// Managed settings whose declared value is new or different: key → new value.
    /// Live: `POST /sdapi/v1/options` for Forge/A1111; for ComfyUI the layout
    /// rewrites its settings file, no restart.
    pub settings_changed: serde_json::Map<String, serde_json::Value>,
    /// Keys no longer managed: the UI keeps their last value, so they are only
    /// reported.
    pub settings_unmanaged: Vec<String>,
    /// Model kinds whose declared files were added, removed or retargeted: live,
    /// by a relayout and the kind's refresh endpoint.
    pub models_changed: BTreeSet<ModelKind>,
    /// Changes the running UI cannot take, as dotted names (`ui.extra_args`,
    /// `extensions`, …): they need a UI restart.
    pub restart_reasons: Vec<String>,
    /// Changes only the supervisor uses (`restart.*`, `control.*`, the UI timeouts,
    /// `data.permissions`): applied to the supervisor, nothing happens to the UI.
    pub supervisor_only: Vec<String>,
    /// Changes the running daemon cannot take (`control.*`: the control plane is
    /// set up once, at start): they take effect when the daemon next starts.
    pub next_start: Vec<String>,
}

impl ConfigDiff {
    /// Nothing changed: the reload is a no-op.
    pub fn is_empty(&self) -> bool {
        self.settings_changed.is_empty()
            && self.settings_unmanaged.is_empty()
            && self.models_changed.is_empty()
            && self.restart_reasons.is_empty()
            && self.supervisor_only.is_empty()
            && self.next_start.is_empty()
    }

    /// Some change can only take effect in a new UI process.
    pub fn needs_restart(&self) -> bool {
        !self.restart_reasons.is_empty()
    }

    /// The live part in words for logs and status: `"settings (2 keys)"`,
    /// `"models.loras"`.
    pub fn live_changes(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self.settings_changed.len() {
            0 => {}
            1 => out.push("settings (1 key)".to_string()),
            n => out.push(format!("settings ({n} keys)")),
        }
        out.extend(self.models_changed.iter().map(|k| format!("models.{k}")));
        out
    }

    /// The refresh endpoints the UI needs after the relayout, each once (VAE and
    /// text encoders share one); none for ComfyUI, which rescans by itself.
    pub fn refresh_endpoints(&self, flavor: Flavor) -> Vec<&'static str> {
        if !flavor.has_options_api() {
            return Vec::new();
        }
        let mut out: Vec<&'static str> = Vec::new();
        for endpoint in self
            .models_changed
            .iter()
            .filter_map(|k| k.refresh_endpoint())
        {
            if !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        out
    }
}

/// One line for the log: `live: settings (1 key); restart: ui.port; …`.
impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no changes");
        }
        let parts = [
            ("live", self.live_changes()),
            ("restart", self.restart_reasons.clone()),
            ("supervisor", self.supervisor_only.clone()),
            ("next start", self.next_start.clone()),
            ("no longer managed", self.settings_unmanaged.clone()),
        ];
        let mut first = true;
        for (label, items) in parts.iter().filter(|(_, items)| !items.is_empty()) {
            if !first {
                f.write_str("; ")?;
            }
            first = false;
            write!(f, "{label}: {}", items.join(", "))?;
        }
        Ok(())
    }
}

/// Classifies every change from `old` to `new`.
///
/// A change of `ui.flavor` or `data.dir` makes settings and models moot: the new UI
/// is laid out from scratch at its start, so only restart and supervisor changes
/// are reported then.
pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let Config {
        ui: old_ui,
        data: old_data,
        models: old_models,
        extensions: old_extensions,
        settings: old_settings,
        restart: old_restart,
        control: old_control,
        front: old_front,
        gpu: old_gpu,
        health: old_health,
        kubernetes: old_kubernetes,
        queue: old_queue,
        supervisor: old_supervisor,
        downloads: old_downloads,
        images: old_images,
        instances: old_instances,
        instance: _,
    } = old;
    let Config {
        ui: new_ui,
        data: new_data,
        models: new_models,
        extensions: new_extensions,
        settings: new_settings,
        restart: new_restart,
        control: new_control,
        front: new_front,
        gpu: new_gpu,
        health: new_health,
        kubernetes: new_kubernetes,
        queue: new_queue,
        supervisor: new_supervisor,
        downloads: new_downloads,
        images: new_images,
        instances: new_instances,
        instance: this_instance,
    } = new;

    let mut d = ConfigDiff::default();
    ui(&mut d, old_ui, new_ui, old_front.enable);
    data(&mut d, old_data, new_data);
    note(
        &mut d.restart_reasons,
        "extensions",
        old_extensions != new_extensions,
    );
    restart(&mut d, old_restart, new_restart);
    control(&mut d, old_control, new_control);
    front(&mut d, old_front, new_front);
    gpu(&mut d, old_gpu, new_gpu);
    kubernetes(&mut d, old_kubernetes, new_kubernetes);
    supervisor(&mut d, old_supervisor, new_supervisor);
    queue(&mut d, old_queue, new_queue);
    // The core reads `[health]` on each probe: live, nothing happens to the UI.
    note(&mut d.supervisor_only, "health", old_health != new_health);
    // A new hash also changes the model's target (its cache file), which the
    // models diff sees; URLs, tokens and the limit are the download manager's.
    note(
        &mut d.supervisor_only,
        "downloads",
        old_downloads != new_downloads,
    );
    // Declared images are rendered by the supervisor through the running UI: the
    // core re-checks their fingerprints after every applied reload.
    note(&mut d.supervisor_only, "images", old_images != new_images);

    // An instance's own config (`Config::for_instance`) carries its changes
    // in `ui`; the file's lists each changed instance.
    if this_instance.is_none() {
        instances(&mut d, old_instances, new_instances);
    }

    let relaid_anyway = old_ui.flavor != new_ui.flavor || old_data.dir != new_data.dir;
    if !relaid_anyway {
        settings(&mut d, old_settings, new_settings);
        d.models_changed = models(old_models, new_models);
    }
    d
}

/// Instances added or removed take effect at the daemon's next start (the set
/// of UIs is fixed while it runs); a changed instance restarts, alone.
fn instances(d: &mut ConfigDiff, old: &[InstanceConfig], new: &[InstanceConfig]) {
    let names = |l: &[InstanceConfig]| l.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
    note(&mut d.next_start, "instances", names(old) != names(new));
    for n in new {
        if let Some(o) = old.iter().find(|o| o.name == n.name) {
            let mut o = o.clone();
            // An unpinned port is the one picked at start (carried over).
            if n.port.is_none() {
                o.port = None;
            }
            note(
                &mut d.restart_reasons,
                &format!("instances.{}", n.name),
                o != *n,
            );
        }
    }
}

/// Pushes `name` when `changed`.
fn note(list: &mut Vec<String>, name: &str, changed: bool) {
    if changed {
        list.push(name.to_string());
    }
}

/// `behind_front`: `ui.port` and `ui.listen` are the front door's listener, set
/// up once at start, not the UI's.
fn ui(d: &mut ConfigDiff, old: &UiConfig, new: &UiConfig, behind_front: bool) {
    let UiConfig {
        flavor,
        command,
        listen,
        port,
        extra_args,
        environment,
        gpus,
        api_auth_file,
        startup_timeout,
        stop_timeout,
    } = new;
    note(&mut d.restart_reasons, "ui.flavor", old.flavor != *flavor);
    note(
        &mut d.restart_reasons,
        "ui.command",
        old.command != *command,
    );
    let address = if behind_front {
        &mut d.next_start
    } else {
        &mut d.restart_reasons
    };
    note(address, "ui.listen", old.listen != *listen);
    note(address, "ui.port", old.port != *port);
    let r = &mut d.restart_reasons;
    note(r, "ui.extra_args", old.extra_args != *extra_args);
    note(r, "ui.environment", old.environment != *environment);
    note(r, "ui.gpus", old.gpus != *gpus);
    note(r, "ui.api_auth_file", old.api_auth_file != *api_auth_file);
    let s = &mut d.supervisor_only;
    note(
        s,
        "ui.startup_timeout",
        old.startup_timeout != *startup_timeout,
    );
    note(s, "ui.stop_timeout", old.stop_timeout != *stop_timeout);
}

fn data(d: &mut ConfigDiff, old: &DataConfig, new: &DataConfig) {
    let DataConfig { dir, permissions } = new;
    note(&mut d.restart_reasons, "data.dir", old.dir != *dir);
    // The mode only applies to directories the next layout creates.
    note(
        &mut d.supervisor_only,
        "data.permissions",
        old.permissions != *permissions,
    );
}

fn restart(d: &mut ConfigDiff, old: &RestartConfig, new: &RestartConfig) {
    let RestartConfig {
        policy,
        idle_grace,
        deadline,
        poll_interval,
    } = new;
    let s = &mut d.supervisor_only;
    note(s, "restart.policy", old.policy != *policy);
    note(s, "restart.idle_grace", old.idle_grace != *idle_grace);
    note(s, "restart.deadline", old.deadline != *deadline);
    note(
        s,
        "restart.poll_interval",
        old.poll_interval != *poll_interval,
    );
}

/// The whole of `[front]` is set up once, at start (like `[control]`); the
/// config in force keeps the running values (see [`FrontConfig::carry_over`]).
fn front(d: &mut ConfigDiff, old: &FrontConfig, new: &FrontConfig) {
    let FrontConfig {
        enable,
        hold_timeout,
        max_held,
        max_connections,
        auth_file,
        ui_port,
    } = new;
    let s = &mut d.next_start;
    note(s, "front.enable", old.enable != *enable);
    note(s, "front.hold_timeout", old.hold_timeout != *hold_timeout);
    note(s, "front.max_held", old.max_held != *max_held);
    note(
        s,
        "front.max_connections",
        old.max_connections != *max_connections,
    );
    note(s, "front.auth_file", old.auth_file != *auth_file);
    // A picked port is pinned in the config in force; the file saying nothing
    // is no change.
    note(
        s,
        "front.ui_port",
        ui_port.is_some() && old.ui_port != *ui_port,
    );
}

/// `[queue]` is set up when the supervisor starts (the journal and the front
/// door's tap): the next start.
fn queue(d: &mut ConfigDiff, old: &QueueConfig, new: &QueueConfig) {
    let QueueConfig { keep, history } = new;
    note(&mut d.next_start, "queue.keep", old.keep != *keep);
    note(&mut d.next_start, "queue.history", old.history != *history);
}

/// `[gpu]` is the supervisor's own business and applies live: the sleep
/// inhibitor reads `inhibit_sleep` from the core's next snapshot.
fn gpu(d: &mut ConfigDiff, old: &GpuConfig, new: &GpuConfig) {
    let GpuConfig {
        inhibit_sleep,
        unload_after,
    } = new;
    note(
        &mut d.supervisor_only,
        "gpu.inhibit_sleep",
        old.inhibit_sleep != *inhibit_sleep,
    );
    // The core reads it on each queue reading: live.
    note(
        &mut d.supervisor_only,
        "gpu.unload_after",
        old.unload_after != *unload_after,
    );
}

/// `[kubernetes]` is set up once, at start: the Pod, its token and the API
/// server are what the daemon found then (a Pod's spec, which grants them,
/// changes only with a new Pod anyway).
fn kubernetes(d: &mut ConfigDiff, old: &KubernetesConfig, new: &KubernetesConfig) {
    let KubernetesConfig { pod_deletion_cost } = new;
    note(
        &mut d.next_start,
        "kubernetes.pod_deletion_cost",
        old.pod_deletion_cost != *pod_deletion_cost,
    );
}

fn control(d: &mut ConfigDiff, old: &ControlConfig, new: &ControlConfig) {
    let ControlConfig {
        socket,
        dbus,
        http_listen,
        token_file,
        max_connections,
    } = new;
    let s = &mut d.next_start;
    note(s, "control.socket", old.socket != *socket);
    note(s, "control.dbus", old.dbus != *dbus);
    note(s, "control.http_listen", old.http_listen != *http_listen);
    note(s, "control.token_file", old.token_file != *token_file);
    note(
        s,
        "control.max_connections",
        old.max_connections != *max_connections,
    );
}

/// The supervisor applies these to itself (a handoff, a service restart); the
/// UI is untouched by the change as such.
fn supervisor(d: &mut ConfigDiff, old: &SupervisorConfig, new: &SupervisorConfig) {
    let SupervisorConfig {
        executable,
        unit_fingerprint,
    } = new;
    let s = &mut d.supervisor_only;
    note(s, "supervisor.executable", old.executable != *executable);
    note(
        s,
        "supervisor.unit_fingerprint",
        old.unit_fingerprint != *unit_fingerprint,
    );
}

fn settings(
    d: &mut ConfigDiff,
    old: &serde_json::Map<String, serde_json::Value>,
    new: &serde_json::Map<String, serde_json::Value>,
) {
    for (key, value) in new {
        if !old
            .get(key)
            .is_some_and(|o| crate::ui::settings_sync::same(o, value))
        {
            d.settings_changed.insert(key.clone(), value.clone());
        }
    }
    d.settings_unmanaged = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
}

/// Kinds whose file tables differ; an empty `[models.<kind>]` table declares the
/// same (no files) as a missing one.
fn models(
    old: &BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
    new: &BTreeMap<ModelKind, BTreeMap<String, PathBuf>>,
) -> BTreeSet<ModelKind> {
    let none = BTreeMap::new();
    old.keys()
        .chain(new.keys())
        .filter(|k| old.get(*k).unwrap_or(&none) != new.get(*k).unwrap_or(&none))
        .copied()
        .collect()
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
