//! Tests of [`super::diff`]: one per row of the docs/design.md#reload-and-restart table, then properties
//! over configs drawn from small pools (so that equal fields are common).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::select;
use serde_json::json;

use super::*;
use crate::config::{Config, DbusBus, RestartPolicy};

const BASE: &str = r#"
[ui]
flavor = "forge"
command = ["/opt/forge/webui.sh"]
extra_args = ["--xformers"]

[data]
dir = "/var/lib/forge"

[models.checkpoints]
"sdxl.safetensors" = "/models/sdxl.safetensors"

[models.loras]
"detail.safetensors" = "/models/detail.safetensors"

[extensions]
controlnet = "/ext/controlnet"

[settings]
CLIP_stop_at_last_layers = 2
sd_vae = "Automatic"

# The rows below are those of a UI that binds ui.port itself; the front door's
# have tests of their own at the end.
[front]
enable = false
"#;

fn base() -> Config {
    match Config::parse(Path::new("test.toml"), BASE) {
        Ok(c) => c,
        Err(e) => panic!("test config invalid: {e}"),
    }
}

fn comfy() -> Config {
    let mut c = base();
    c.ui.flavor = Flavor::Comfyui;
    c.ui.port = 8188;
    c
}

#[test]
fn identical_configs_give_an_empty_diff() {
    let d = diff(&base(), &base());
    assert!(d.is_empty());
    assert!(!d.needs_restart());
    assert_eq!(d.to_string(), "no changes");
}

#[test]
fn settings_are_live_for_every_flavor() {
    for old in [base(), comfy()] {
        let mut new = old.clone();
        new.settings
            .insert("sd_vae".into(), json!("sdxl_vae.safetensors"));
        new.settings.insert("new_key".into(), json!(true));
        let d = diff(&old, &new);
        assert_eq!(d.settings_changed.len(), 2);
        assert_eq!(d.settings_changed["sd_vae"], json!("sdxl_vae.safetensors"));
        assert!(!d.needs_restart(), "{d}");
        assert!(d.supervisor_only.is_empty() && d.models_changed.is_empty());
        assert_eq!(d.live_changes(), ["settings (2 keys)"]);
    }
}

#[test]
fn removed_settings_are_only_reported() {
    let mut new = base();
    new.settings.remove("sd_vae");
    let d = diff(&base(), &new);
    assert_eq!(d.settings_unmanaged, ["sd_vae"]);
    assert!(d.settings_changed.is_empty());
    assert!(d.live_changes().is_empty());
    assert!(!d.is_empty());
    assert_eq!(d.to_string(), "no longer managed: sd_vae");
}

#[test]
fn models_are_live_with_the_matching_refresh() {
    let mut new = base();
    let loras = new.models.entry(ModelKind::Loras).or_default();
    loras.insert(
        "detail.safetensors".into(),
        "/models/other.safetensors".into(),
    );
    new.models
        .entry(ModelKind::Vae)
        .or_default()
        .insert("x.vae".into(), "/m/x.vae".into());
    new.models.remove(&ModelKind::Checkpoints);
    let d = diff(&base(), &new);
    assert_eq!(
        d.models_changed,
        BTreeSet::from([ModelKind::Checkpoints, ModelKind::Loras, ModelKind::Vae])
    );
    assert!(!d.needs_restart());
    assert_eq!(
        d.live_changes(),
        ["models.checkpoints", "models.loras", "models.vae"]
    );
    assert_eq!(
        d.refresh_endpoints(Flavor::Forge),
        [
            "/sdapi/v1/refresh-checkpoints",
            "/sdapi/v1/refresh-loras",
            "/sdapi/v1/refresh-vae"
        ]
    );
    assert!(d.refresh_endpoints(Flavor::Comfyui).is_empty());
}

#[test]
fn vae_and_text_encoders_share_one_refresh() {
    let d = ConfigDiff {
        models_changed: BTreeSet::from([ModelKind::Vae, ModelKind::TextEncoders]),
        ..ConfigDiff::default()
    };
    assert_eq!(
        d.refresh_endpoints(Flavor::Forge),
        ["/sdapi/v1/refresh-vae"]
    );
}

#[test]
fn an_empty_model_table_is_no_table() {
    let mut new = base();
    new.models.insert(ModelKind::Upscalers, BTreeMap::new());
    assert!(diff(&base(), &new).is_empty());
    assert!(diff(&new, &base()).is_empty());
}

#[test]
fn extensions_need_a_restart() {
    for old in [base(), comfy()] {
        let mut new = old.clone();
        new.extensions
            .insert("adetailer".into(), "/ext/adetailer".into());
        let d = diff(&old, &new);
        assert_eq!(d.restart_reasons, ["extensions"]);
        assert!(d.needs_restart());
    }
}

#[test]
fn ui_process_fields_need_a_restart() {
    let old = base();
    let mut new = old.clone();
    new.ui.command = vec!["/other/webui.sh".into()];
    new.ui.listen = true;
    new.ui.port = 7861;
    new.ui.extra_args.push("--medvram".into());
    new.ui.environment.insert("HF_HOME".into(), "/hf".into());
    new.ui.gpus = Some(vec![1]);
    new.ui.api_auth_file = Some("/run/secrets/auth".into());
    let d = diff(&old, &new);
    assert_eq!(
        d.restart_reasons,
        [
            "ui.command",
            "ui.listen",
            "ui.port",
            "ui.extra_args",
            "ui.environment",
            "ui.gpus",
            "ui.api_auth_file"
        ]
    );
    assert!(d.supervisor_only.is_empty());
}

#[test]
fn timeouts_permissions_restart_and_control_are_supervisor_only() {
    let old = base();
    let mut new = old.clone();
    new.ui.startup_timeout = Duration::from_secs(1);
    new.ui.stop_timeout = Duration::from_secs(2);
    new.data.permissions = 0o750;
    new.restart.policy = RestartPolicy::Manual;
    new.restart.idle_grace = Duration::from_secs(3);
    new.restart.deadline = None;
    new.restart.poll_interval = Duration::from_secs(4);
    new.control.socket = "/run/x.sock".into();
    new.control.dbus = DbusBus::System;
    new.control.http_listen = "127.0.0.1:7870".parse().ok();
    new.control.token_file = Some("/run/token".into());
    let d = diff(&old, &new);
    assert!(!d.needs_restart());
    assert_eq!(d.supervisor_only.len(), 7, "{d}");
    assert_eq!(
        d.next_start,
        [
            "control.socket",
            "control.dbus",
            "control.http_listen",
            "control.token_file"
        ],
        "{d}"
    );
    assert!(d.live_changes().is_empty());
}

#[test]
fn gpu_inhibit_sleep_applies_live_to_the_supervisor() {
    let old = base();
    assert!(old.gpu.inhibit_sleep, "on by default");
    let mut new = old.clone();
    new.gpu.inhibit_sleep = false;
    let d = diff(&old, &new);
    assert_eq!(d.supervisor_only, ["gpu.inhibit_sleep"]);
    assert!(!d.needs_restart() && d.next_start.is_empty(), "{d}");
    assert_eq!(d.to_string(), "supervisor: gpu.inhibit_sleep");
}

#[test]
fn kubernetes_pod_deletion_cost_takes_effect_at_the_next_start() {
    let old = base();
    assert!(!old.kubernetes.pod_deletion_cost, "off by default");
    let mut new = old.clone();
    new.kubernetes.pod_deletion_cost = true;
    let d = diff(&old, &new);
    assert_eq!(d.next_start, ["kubernetes.pod_deletion_cost"]);
    assert!(!d.needs_restart() && d.supervisor_only.is_empty(), "{d}");
    assert_eq!(d.to_string(), "next start: kubernetes.pod_deletion_cost");
}

#[test]
fn a_new_flavor_or_data_dir_makes_settings_and_models_moot() {
    for change in [
        (|c: &mut Config| c.ui.flavor = Flavor::A1111) as fn(&mut Config),
        |c: &mut Config| c.data.dir = "/srv/forge".into(),
    ] {
        let mut new = base();
        change(&mut new);
        new.settings.insert("sd_vae".into(), json!("None"));
        new.models.clear();
        new.ui.port = 7000;
        new.restart.policy = RestartPolicy::Immediately;
        let d = diff(&base(), &new);
        assert!(d.needs_restart());
        assert!(d.restart_reasons.contains(&"ui.port".to_string()));
        assert_eq!(d.supervisor_only, ["restart.policy"]);
        assert!(d.settings_changed.is_empty() && d.models_changed.is_empty());
        assert!(d.live_changes().is_empty());
    }
}

#[test]
fn display_lists_every_part() {
    let mut new = base();
    new.settings.insert("sd_vae".into(), json!("None"));
    new.ui.port = 7861;
    new.restart.poll_interval = Duration::from_secs(9);
    assert_eq!(
        diff(&base(), &new).to_string(),
        "live: settings (1 key); restart: ui.port; supervisor: restart.poll_interval"
    );
}

// ---- properties ----

/// Copies one field from the second config into the first.
type Take = fn(&mut Config, &Config);

/// Every leaf field the diff classifies, with the name it reports it under
/// (`models` and `settings` are reported per kind and per key).
fn fields() -> Vec<(&'static str, Take)> {
    vec![
        ("ui.flavor", |c, b| c.ui.flavor = b.ui.flavor),
        ("ui.command", |c, b| c.ui.command = b.ui.command.clone()),
        ("ui.listen", |c, b| c.ui.listen = b.ui.listen),
        ("ui.port", |c, b| c.ui.port = b.ui.port),
        ("ui.extra_args", |c, b| {
            c.ui.extra_args = b.ui.extra_args.clone()
        }),
        ("ui.environment", |c, b| {
            c.ui.environment = b.ui.environment.clone()
        }),
        ("ui.gpus", |c, b| c.ui.gpus = b.ui.gpus.clone()),
        ("ui.api_auth_file", |c, b| {
            c.ui.api_auth_file = b.ui.api_auth_file.clone()
        }),
        ("ui.startup_timeout", |c, b| {
            c.ui.startup_timeout = b.ui.startup_timeout
        }),
        ("ui.stop_timeout", |c, b| {
            c.ui.stop_timeout = b.ui.stop_timeout
        }),
        ("data.dir", |c, b| c.data.dir = b.data.dir.clone()),
        ("data.permissions", |c, b| {
            c.data.permissions = b.data.permissions
        }),
        ("models", |c, b| c.models = b.models.clone()),
        ("extensions", |c, b| c.extensions = b.extensions.clone()),
        ("settings", |c, b| c.settings = b.settings.clone()),
        ("restart.policy", |c, b| c.restart.policy = b.restart.policy),
        ("restart.idle_grace", |c, b| {
            c.restart.idle_grace = b.restart.idle_grace
        }),
        ("restart.deadline", |c, b| {
            c.restart.deadline = b.restart.deadline
        }),
        ("restart.poll_interval", |c, b| {
            c.restart.poll_interval = b.restart.poll_interval
        }),
        ("control.socket", |c, b| {
            c.control.socket = b.control.socket.clone()
        }),
        ("control.dbus", |c, b| c.control.dbus = b.control.dbus),
        ("control.http_listen", |c, b| {
            c.control.http_listen = b.control.http_listen
        }),
        ("control.token_file", |c, b| {
            c.control.token_file = b.control.token_file.clone()
        }),
        ("gpu.inhibit_sleep", |c, b| {
            c.gpu.inhibit_sleep = b.gpu.inhibit_sleep
        }),
    ]
}

const RESTART: [&str; 10] = [
    "ui.flavor",
    "ui.command",
    "ui.listen",
    "ui.port",
    "ui.extra_args",
    "ui.environment",
    "ui.gpus",
    "ui.api_auth_file",
    "data.dir",
    "extensions",
];

/// The config with empty model tables dropped: what the diff compares.
fn normalized(c: &Config) -> Config {
    let mut c = c.clone();
    c.models.retain(|_, files| !files.is_empty());
    c
}

fn secs(choices: &'static [u64]) -> impl Strategy<Value = Duration> {
    select(choices).prop_map(Duration::from_secs)
}

fn paths(choices: &'static [&'static str]) -> impl Strategy<Value = PathBuf> {
    select(choices).prop_map(PathBuf::from)
}

fn arb_config() -> impl Strategy<Value = Config> {
    let ui = (
        select(Flavor::ALL.to_vec()),
        prop::collection::vec(select(vec!["/bin/ui", "--a"]), 1..3),
        any::<bool>(),
        select(vec![7860u16, 8188]),
        prop::collection::vec(select(vec!["--x", "--y"]), 0..3),
        prop::collection::btree_map(select(vec!["A", "B"]), select(vec!["1", "2"]), 0..3),
        prop::option::of(prop::collection::vec(0u32..2, 1..3)),
        prop::option::of(paths(&["/auth1", "/auth2"])),
        secs(&[60, 900]),
        secs(&[30, 5]),
    );
    let data = (paths(&["/d1", "/d2"]), select(vec![0o700u32, 0o750]));
    let models = prop::collection::btree_map(
        select(ModelKind::ALL.to_vec()),
        prop::collection::btree_map(
            select(vec!["a.st".to_string(), "b.st".to_string()]),
            paths(&["/m/1", "/m/2"]),
            0..3,
        ),
        0..3,
    );
    let extensions = prop::collection::btree_map(
        select(vec!["e1".to_string(), "e2".to_string()]),
        paths(&["/x/1", "/x/2"]),
        0..3,
    );
    let settings = prop::collection::btree_map(
        select(vec!["k1".to_string(), "k2".to_string(), "k3".to_string()]),
        select(vec![json!(1), json!("s"), json!(true), json!([1, 2])]),
        0..4,
    );
    let restart = (
        select(vec![
            RestartPolicy::WhenIdle,
            RestartPolicy::Immediately,
            RestartPolicy::Manual,
        ]),
        secs(&[10, 20]),
        prop::option::of(secs(&[3600, 7200])),
        secs(&[2, 1]),
    );
    let control = (
        paths(&["/run/a.sock", "/run/b.sock"]),
        select(vec![DbusBus::Off, DbusBus::System]),
        prop::option::of(Just(SocketAddr::from(([127, 0, 0, 1], 7870)))),
        prop::option::of(paths(&["/t1", "/t2"])),
    );
    let gpu = any::<bool>();
    (
        ui, data, models, extensions, settings, restart, control, gpu,
    )
        .prop_map(
            |(ui, data, models, extensions, settings, restart, control, gpu)| {
                use crate::config::{ControlConfig, DataConfig, RestartConfig, UiConfig};
                Config {
                    ui: UiConfig {
                        flavor: ui.0,
                        command: ui.1.into_iter().map(String::from).collect(),
                        listen: ui.2,
                        port: ui.3,
                        extra_args: ui.4.into_iter().map(String::from).collect(),
                        environment: ui
                            .5
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        gpus: ui.6,
                        api_auth_file: ui.7,
                        startup_timeout: ui.8,
                        stop_timeout: ui.9,
                    },
                    data: DataConfig {
                        dir: data.0,
                        permissions: data.1,
                    },
                    models,
                    extensions,
                    settings: settings.into_iter().collect(),
                    restart: RestartConfig {
                        policy: restart.0,
                        idle_grace: restart.1,
                        deadline: restart.2,
                        poll_interval: restart.3,
                    },
                    control: ControlConfig {
                        socket: control.0,
                        dbus: control.1,
                        http_listen: control.2,
                        token_file: control.3,
                        max_connections: 128,
                    },
                    front: crate::config::FrontConfig {
                        enable: false,
                        ..Default::default()
                    },
                    gpu: crate::config::GpuConfig {
                        inhibit_sleep: gpu,
                        ..Default::default()
                    },
                    health: Default::default(),
                    kubernetes: Default::default(),
                    queue: Default::default(),
                    supervisor: Default::default(),
                    downloads: Default::default(),
                    images: BTreeMap::new(),
                    instances: Vec::new(),
                    instance: None,
                }
            },
        )
}

/// `a` with the fields picked by `mask` taken from `b`: mostly small changes.
fn mixed() -> impl Strategy<Value = (Config, Config)> {
    (
        arb_config(),
        arb_config(),
        prop::collection::vec(prop::bool::weighted(0.1), fields().len()),
    )
        .prop_map(|(a, b, mask)| {
            let mut c = a.clone();
            for ((_, take), on) in fields().into_iter().zip(mask) {
                if on {
                    take(&mut c, &b);
                }
            }
            (a, c)
        })
}

/// Every name a diff mentions, values aside.
fn named(d: &ConfigDiff) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = d.restart_reasons.iter().cloned().collect();
    out.extend(d.supervisor_only.iter().cloned());
    out.extend(d.models_changed.iter().map(|k| format!("models.{k}")));
    out.extend(d.settings_changed.keys().map(|k| format!("settings.{k}")));
    out.extend(d.settings_unmanaged.iter().map(|k| format!("settings.{k}")));
    out
}

proptest! {
    #[test]
    fn a_config_against_itself_is_empty(a in arb_config()) {
        prop_assert!(diff(&a, &a).is_empty());
    }

    #[test]
    fn empty_exactly_when_equal((a, b) in mixed()) {
        prop_assert_eq!(diff(&a, &b).is_empty(), normalized(&a) == normalized(&b));
    }

    #[test]
    fn both_directions_name_the_same_changes((a, b) in mixed()) {
        let (ab, ba) = (diff(&a, &b), diff(&b, &a));
        prop_assert_eq!(named(&ab), named(&ba));
        prop_assert_eq!(ab.needs_restart(), ba.needs_restart());
    }

    #[test]
    fn settings_alone_never_restart(a in arb_config(), b in arb_config()) {
        let mut c = a.clone();
        c.settings = b.settings.clone();
        let d = diff(&a, &c);
        prop_assert!(!d.needs_restart());
        prop_assert!(d.supervisor_only.is_empty() && d.models_changed.is_empty());
        prop_assert_eq!(d.is_empty(), a.settings == b.settings);
    }

    #[test]
    fn one_field_is_named_in_its_class(
        a in arb_config(),
        b in arb_config(),
        i in 0..fields().len(),
    ) {
        let (name, take) = fields()[i];
        let mut c = a.clone();
        take(&mut c, &b);
        let d = diff(&a, &c);
        if normalized(&a) == normalized(&c) {
            prop_assert!(d.is_empty());
        } else if RESTART.contains(&name) {
            prop_assert_eq!(&d.restart_reasons, &vec![name.to_string()]);
            prop_assert!(d.supervisor_only.is_empty() && d.live_changes().is_empty());
        } else if name == "models" {
            prop_assert!(!d.models_changed.is_empty() && !d.needs_restart());
            prop_assert!(d.supervisor_only.is_empty() && d.settings_changed.is_empty());
        } else if name == "settings" {
            prop_assert!(!d.is_empty() && !d.needs_restart());
        } else if name.starts_with("control.") {
            prop_assert_eq!(&d.next_start, &vec![name.to_string()]);
            prop_assert!(d.supervisor_only.is_empty());
            prop_assert!(!d.needs_restart() && d.live_changes().is_empty());
        } else {
            prop_assert_eq!(&d.supervisor_only, &vec![name.to_string()]);
            prop_assert!(!d.needs_restart() && d.live_changes().is_empty());
        }
    }

    #[test]
    fn every_changed_restart_field_is_a_reason((a, b) in mixed()) {
        let d = diff(&a, &b);
        for (name, take) in fields() {
            let mut c = a.clone();
            take(&mut c, &b);
            let changed = normalized(&c) != normalized(&a);
            if RESTART.contains(&name) {
                prop_assert_eq!(changed, d.restart_reasons.iter().any(|r| r == name));
            }
        }
    }

    #[test]
    fn names_are_unique_and_known((a, b) in mixed()) {
        let d = diff(&a, &b);
        let known: BTreeSet<&str> = fields().iter().map(|(n, _)| *n).collect();
        for list in [&d.restart_reasons, &d.supervisor_only] {
            let unique: BTreeSet<&String> = list.iter().collect();
            prop_assert_eq!(unique.len(), list.len());
            prop_assert!(list.iter().all(|n| known.contains(n.as_str())));
        }
        prop_assert!(d.restart_reasons.iter().all(|n| RESTART.contains(&n.as_str())));
    }
}

// ---- behind the front door ----

fn fronted() -> Config {
    let mut c = base();
    c.front = crate::config::FrontConfig::default();
    c.front.pin_ui_port(41234);
    c
}

#[test]
fn behind_the_front_door_the_address_and_front_take_effect_at_the_next_start() {
    let old = fronted();
    let mut new = fronted();
    new.ui.port = 7000;
    new.ui.listen = true;
    new.front.hold_timeout = Duration::from_secs(9);
    new.front.max_held = 7;
    new.front.auth_file = Some(PathBuf::from("/run/keys/front"));
    let d = diff(&old, &new);
    assert!(!d.needs_restart(), "{d}");
    assert_eq!(
        d.next_start,
        [
            "ui.listen",
            "ui.port",
            "front.hold_timeout",
            "front.max_held",
            "front.auth_file"
        ]
    );
    // The config in force keeps the running door's settings and address.
    crate::config::FrontConfig::carry_over(&old, &mut new);
    assert_eq!(new.front, old.front);
    assert_eq!((new.ui.port, new.ui.listen), (old.ui.port, old.ui.listen));
    assert!(diff(&old, &new).is_empty());
}

#[test]
fn a_file_without_ui_port_does_not_undo_the_picked_one() {
    let old = fronted();
    let mut new = fronted();
    new.front.ui_port = None;
    assert!(diff(&old, &new).is_empty());
    crate::config::FrontConfig::carry_over(&old, &mut new);
    assert_eq!(new.ui_own_port(), 41234);
    new.front.ui_port = Some(41000);
    assert_eq!(diff(&old, &new).next_start, ["front.ui_port"]);
}

#[test]
fn the_ui_runs_on_its_private_loopback_port_behind_the_front_door() {
    let mut c = fronted();
    c.ui.listen = true;
    assert_eq!(c.ui_own_port(), 41234);
    assert!(!c.ui_own_listen());
    let argv = c.ui_argv().join(" ");
    assert!(argv.contains("--port 41234"), "{argv}");
    assert!(!argv.contains("--listen"), "{argv}");
    c.front.enable = false;
    assert_eq!(c.ui_own_port(), c.ui.port);
    assert!(c.ui_own_listen());
}
