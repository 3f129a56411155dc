//! deploy/kubernetes: every manifest parses as YAML, the kustomization lists them
//! all, and the Deployment asks of the binary only what it really serves: the
//! probe paths answer on the TCP port the ConfigMap's config listens on, the
//! preStop command is a real CLI that drains, the mounts match the config's
//! paths and the image's, and the ConfigMap's config passes `check-config`.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::container::{TOKEN, http};
use support::{Scene, daemon_bin, repo_root, wait_for};

fn manifests() -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut all = Vec::new();
    for entry in fs::read_dir(&dir).expect("deploy/kubernetes") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("read manifest");
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{name}: not YAML: {e}"));
            all.push((name.clone(), value));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

fn kind<'a>(all: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<_> = all.iter().filter(|(_, v)| v["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    &found[0].1
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| s.to_string())
        })
        .collect()
}

struct Deployed {
    all: Vec<(String, Value)>,
    config: toml::Table,
    config_text: String,
}

fn deployed() -> Deployed {
    let all = manifests();
    let text = kind(&all, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("ConfigMap data config.toml")
        .to_owned();
    Deployed {
        config: text.parse().expect("config.toml is TOML"),
        config_text: text,
        all,
    }
}

fn container(d: &Deployed) -> &Value {
    &kind(&d.all, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn mount_path(d: &Deployed, volume: &str) -> PathBuf {
    let mounts = container(d)["volumeMounts"]
        .as_array()
        .expect("volumeMounts");
    let m = mounts
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("a mount of volume {volume}"));
    PathBuf::from(m["mountPath"].as_str().expect("mountPath"))
}

fn control(d: &Deployed, key: &str) -> String {
    d.config["control"][key].as_str().expect(key).to_owned()
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    let all = manifests();
    let kustomization = kind(&all, "Kustomization");
    let mut listed = strings(&kustomization["resources"]);
    listed.sort();
    let mut files: Vec<String> = all
        .iter()
        .filter(|(_, v)| v["kind"] != "Kustomization")
        .map(|(f, _)| f.clone())
        .collect();
    files.dedup();
    assert_eq!(listed, files);
    for (file, v) in &all {
        assert!(
            v["apiVersion"].is_string() && v["kind"].is_string(),
            "{file}"
        );
    }
}

#[test]
fn the_deployment_mounts_what_the_config_and_the_image_expect() {
    let d = deployed();
    let c = container(&d);
    // The image's entrypoint reads /etc/sd-webui-forge/config.toml (nix/image.nix).
    assert_eq!(
        mount_path(&d, "config"),
        PathBuf::from("/etc/sd-webui-forge")
    );
    let token = PathBuf::from(control(&d, "token_file"));
    assert_eq!(
        Some(mount_path(&d, "control-token").as_path()),
        token.parent()
    );
    let spec = &kind(&d.all, "Deployment")["spec"]["template"]["spec"];
    let secret = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "control-token")
        .expect("the token volume");
    assert!(secret["secret"]["secretName"].is_string(), "{secret}");
    let data = d.config["data"]["dir"].as_str().expect("data.dir");
    assert_eq!(mount_path(&d, "data"), PathBuf::from(data));
    assert_eq!(c["resources"]["limits"]["nvidia.com/gpu"], 1);
    // The socket the preStop client finds without --socket.
    assert_eq!(
        control(&d, "socket"),
        sd_webui_supervisor::config::DEFAULT_SOCKET
    );
    // The grace period covers the drain's timeout and the UI's stop timeout.
    let pre_stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    let timeout = pre_stop
        .iter()
        .position(|a| a == "--timeout")
        .and_then(|i| pre_stop.get(i + 1))
        .map(|t| humantime::parse_duration(t).expect("--timeout value"))
        .expect("the drain has a --timeout");
    let stop = humantime::parse_duration(
        d.config["ui"]["stop_timeout"]
            .as_str()
            .expect("stop_timeout"),
    )
    .expect("stop_timeout");
    let grace = spec["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    assert!(
        Duration::from_secs(grace) > timeout + stop,
        "terminationGracePeriodSeconds {grace} must exceed {timeout:?} + {stop:?}"
    );
}

#[test]
fn the_configmap_config_passes_check_config() {
    let d = deployed();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("config.toml");
    fs::write(&file, &d.config_text).expect("write");
    let out = Command::new(daemon_bin())
        .args(["check-config", "--config"])
        .arg(&file)
        .output()
        .expect("check-config runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The real daemon with the ConfigMap's config, moved to this host's paths and
/// ports and the stand-in UI: the probes and the preStop hook of the Deployment,
/// as the kubelet would run them.
#[test]
fn the_probes_and_the_pre_stop_hook_are_what_the_binary_serves() {
    let d = deployed();
    let c = container(&d).clone();
    let scene = Scene::new("k8s-manifests").env("STANDIN_FLAVOR", "comfyui");
    let mut config = d.config.clone();
    let port = scene.port;
    let control_port = support::free_port();
    let token = scene.dir().join("token");
    fs::write(&token, TOKEN).expect("token");
    let ui = config["ui"].as_table_mut().expect("[ui]");
    ui.insert(
        "command".into(),
        toml::Value::Array(scene.command.iter().cloned().map(Into::into).collect()),
    );
    ui.insert("port".into(), i64::from(port).into());
    ui.insert("listen".into(), false.into());
    let mut env = toml::Table::new();
    env.insert("STANDIN_FLAVOR".into(), "comfyui".into());
    env.insert(
        "STANDIN_RECORD".into(),
        scene.record_path().display().to_string().into(),
    );
    ui.insert("environment".into(), env.into());
    config["data"]
        .as_table_mut()
        .expect("[data]")
        .insert("dir".into(), scene.data_dir().display().to_string().into());
    let socket = scene.dir().join("control.sock");
    let ctl = config["control"].as_table_mut().expect("[control]");
    ctl.insert("socket".into(), socket.display().to_string().into());
    ctl.insert("token_file".into(), token.display().to_string().into());
    // The manifest's port, on loopback.
    let listen: std::net::SocketAddr = d.config["control"]["http_listen"]
        .as_str()
        .expect("http_listen")
        .parse()
        .expect("an address");
    let manifest_port = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "control")
        .and_then(|p| p["containerPort"].as_u64())
        .expect("a control port");
    assert_eq!(
        u64::from(listen.port()),
        manifest_port,
        "the probes' port is the listener's"
    );
    ctl.insert(
        "http_listen".into(),
        format!("127.0.0.1:{control_port}").into(),
    );
    fs::write(scene.config_path(), config.to_string()).expect("config");
    let _daemon = {
        let builder_scene = &scene;
        let mut cmd = Command::new(daemon_bin());
        cmd.args(["run", "--config"])
            .arg(builder_scene.config_path());
        let log = fs::File::create(scene.log_path()).expect("log");
        cmd.stderr(log.try_clone().expect("log"));
        cmd.stdout(log);
        // The ConfigMap keeps the Pod's deletion cost: here, outside any
        // cluster (even when the tests run in a Pod), it must find none.
        cmd.env_remove("KUBERNETES_SERVICE_HOST").env(
            sd_webui_supervisor::kube::SERVICE_ACCOUNT_ENV,
            scene.dir().join("no-service-account"),
        );
        KillOnDrop(cmd.spawn().expect("spawn the daemon"))
    };

    for probe in ["livenessProbe", "readinessProbe"] {
        assert_eq!(c[probe]["httpGet"]["port"], "control", "{probe}");
    }
    let live = c["livenessProbe"]["httpGet"]["path"]
        .as_str()
        .expect("liveness path");
    let ready = c["readinessProbe"]["httpGet"]["path"]
        .as_str()
        .expect("readiness path");
    assert_eq!((live, ready), ("/healthz", "/readyz"));
    wait_for(
        "the readiness probe to pass",
        Duration::from_secs(30),
        || http(control_port, "GET", ready, None).filter(|(code, _)| *code == 200),
    );
    assert_eq!(
        http(control_port, "GET", live, None).map(|r| r.0),
        Some(200)
    );
    // Not in a cluster: one warning that says why, nothing kept.
    let log = fs::read_to_string(scene.log_path()).expect("the daemon's log");
    let warned: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the Pod's deletion cost is not kept"))
        .collect();
    assert_eq!(warned.len(), 1, "{log}");
    assert!(warned[0].contains("KUBERNETES_SERVICE_HOST"), "{log}");

    let mut pre_stop = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    assert_eq!(
        pre_stop[0], "sd-webui-supervisor",
        "the image's /bin has it"
    );
    pre_stop.remove(0);
    let status = Command::new(daemon_bin())
        .args(&pre_stop)
        .arg("--socket")
        .arg(&socket)
        .status()
        .expect("the preStop command runs");
    assert!(status.success(), "{pre_stop:?}: {status}");
    let (code, body) = http(control_port, "GET", ready, None).expect("readiness");
    assert_eq!(code, 503, "after preStop, no more traffic: {body}");
}

/// The Pod may patch its own deletion cost, as the ConfigMap's config asks:
/// the Deployment runs as a ServiceAccount whose Role, bound to it, allows
/// `get` and `patch` on pods; the downward API names the Pod to the
/// supervisor; the annotation is the one the ReplicaSet controller reads.
#[test]
fn the_pod_may_patch_its_own_deletion_cost() {
    let d = deployed();
    assert_eq!(
        d.config["kubernetes"]["pod_deletion_cost"].as_bool(),
        Some(true),
        "the ConfigMap keeps the deletion cost"
    );
    assert_eq!(
        sd_webui_supervisor::kube::ANNOTATION,
        "controller.kubernetes.io/pod-deletion-cost"
    );
    let spec = &kind(&d.all, "Deployment")["spec"]["template"]["spec"];
    let account = kind(&d.all, "ServiceAccount");
    let name = account["metadata"]["name"]
        .as_str()
        .expect("the ServiceAccount's name");
    assert_eq!(spec["serviceAccountName"], name);
    assert_ne!(
        spec["automountServiceAccountToken"],
        Value::Bool(false),
        "the token must be mounted"
    );
    assert_ne!(
        account["automountServiceAccountToken"],
        Value::Bool(false),
        "the token must be mounted"
    );

    let role = kind(&d.all, "Role");
    let allows = |verb: &str| {
        role["rules"].as_array().expect("rules").iter().any(|r| {
            strings(&r["apiGroups"]).contains(&String::new())
                && strings(&r["resources"]).contains(&"pods".to_string())
                && strings(&r["verbs"]).contains(&verb.to_string())
        })
    };
    assert!(allows("get") && allows("patch"), "{role}");
    let binding = kind(&d.all, "RoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["apiGroup"], "rbac.authorization.k8s.io");
    assert!(
        binding["subjects"]
            .as_array()
            .expect("subjects")
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == name),
        "{binding}"
    );

    let env = container(&d)["env"]
        .as_array()
        .expect("the container's env");
    let field = |var: &str| {
        env.iter()
            .find(|e| e["name"] == var)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
            .unwrap_or_else(|| panic!("no {var} in the container's env"))
    };
    assert_eq!(field("POD_NAME"), "metadata.name");
    assert_eq!(field("POD_NAMESPACE"), "metadata.namespace");
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A ConfigMap update as the kubelet makes it (a new timestamped folder, then
/// `..data` swapped to it by rename) reaches the running supervisor as a reload,
/// as docs/containers.md promises.
#[test]
fn a_configmap_update_swapping_the_data_link_reloads_the_supervisor() {
    let scene = Scene::new("k8s-configmap-swap");
    let mount = scene.dir().join("etc");
    let first = mount.join("..2026_01_01_00_00_00.1");
    fs::create_dir_all(&first).expect("mkdir");
    fs::write(first.join("config.toml"), scene.config_toml()).expect("config");
    std::os::unix::fs::symlink(first.file_name().expect("name"), mount.join("..data"))
        .expect("..data");
    std::os::unix::fs::symlink("..data/config.toml", mount.join("config.toml")).expect("link");
    let mut cmd = Command::new(daemon_bin());
    cmd.args(["run", "--config"]).arg(mount.join("config.toml"));
    cmd.stdout(fs::File::create(scene.log_path()).expect("log"));
    cmd.stderr(fs::File::create(scene.dir().join("stderr.log")).expect("log"));
    let _daemon = KillOnDrop(cmd.spawn().expect("spawn the daemon"));
    let socket = scene.dir().join("control.sock");
    let status = || -> Option<Value> {
        let out = Command::new(daemon_bin())
            .args(["status", "--json", "--socket"])
            .arg(&socket)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    };
    let before = wait_for("the daemon to answer", Duration::from_secs(30), status);
    assert!(before["last_reload"].is_null(), "{before}");

    let second = mount.join("..2026_01_01_00_01_00.2");
    fs::create_dir_all(&second).expect("mkdir");
    let text = scene.config_toml() + "\n[settings]\nCLIP_stop_at_last_layers = 2\n";
    fs::write(second.join("config.toml"), text).expect("config");
    std::os::unix::fs::symlink(second.file_name().expect("name"), mount.join("..data_tmp"))
        .expect("..data_tmp");
    fs::rename(mount.join("..data_tmp"), mount.join("..data")).expect("swap ..data");
    fs::remove_dir_all(&first).expect("remove the old folder");
    let after = wait_for("a reload after the swap", Duration::from_secs(20), || {
        status().filter(|s| s["last_reload"]["result"] == "applied")
    });
    assert_ne!(after["config_generation"], before["config_generation"]);
}
