//! The live part of a reload (issue 4, "Must show"): settings go to the running UI
//! in one `POST /sdapi/v1/options` with only the changed keys it knows, models are
//! relaid and refreshed, an invalid file changes nothing — and none of it restarts
//! the UI. Read from the stand-in's record and the fake notify socket's `STATUS=`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Rec, Scenario, events, get_json, write_atomic};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// How long to keep watching for a request that must not come (a second POST, a
/// refresh of another kind, a signal) after the expected one arrived.
const SETTLE: Duration = Duration::from_millis(700);

/// Waits for the `n`-th `POST /sdapi/v1/options`, lets any further one arrive, and
/// returns all of them.
fn option_posts_after_settling(s: &Scenario, n: usize) -> Vec<Rec> {
    s.wait(SECS(5), &format!("POST /sdapi/v1/options #{n}"), || {
        (s.requests("POST", "/sdapi/v1/options").len() >= n).then_some(())
    });
    std::thread::sleep(SETTLE);
    s.requests("POST", "/sdapi/v1/options")
}

/// No restart happened: one stand-in, never signalled.
fn assert_untouched(s: &Scenario) {
    let recs = s.records();
    assert_eq!(events(&recs, "start").len(), 1, "the UI was restarted");
    assert!(
        events(&recs, "signal").is_empty(),
        "the UI was signalled\n{}",
        s.diagnostics()
    );
}

#[test]
fn a_settings_change_is_one_post_with_only_the_changed_keys() {
    let mut s = Scenario::new("settings", "forge");
    s.start();
    s.wait_listening(1, SECS(20));

    s.conf
        .settings
        .insert("samples_format".into(), "jpg".into());
    s.conf.settings.insert("jpeg_quality".into(), 90.into());
    s.reload();
    let posts = option_posts_after_settling(&s, 1);
    assert_eq!(posts.len(), 1, "one POST per reload: {posts:?}");
    assert_eq!(
        posts[0].v["body"],
        json!({"samples_format": "jpg", "jpeg_quality": 90}),
        "only the changed keys (CLIP_stop_at_last_layers did not change)"
    );
    let get_before_post = s
        .records()
        .iter()
        .any(|r| r.is_request("GET", "/sdapi/v1/options") && r.t <= posts[0].t);
    assert!(
        get_before_post,
        "the UI's options were read before the POST"
    );
    let options = get_json(s.conf.port, "/sdapi/v1/options");
    assert_eq!(options["samples_format"], "jpg");
    assert_eq!(options["jpeg_quality"], 90);

    // A second change: again one POST, with only that key.
    s.conf
        .settings
        .insert("CLIP_stop_at_last_layers".into(), 1.into());
    s.reload();
    let posts = option_posts_after_settling(&s, 2);
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[1].v["body"], json!({"CLIP_stop_at_last_layers": 1}));
    assert_untouched(&s);
    assert!(s.notify.status().starts_with("ready; idle; forge"));
}

#[test]
fn an_unknown_setting_is_never_sent() {
    let mut s = Scenario::new("unknown-setting", "forge");
    s.start();
    s.wait_listening(1, SECS(20));

    // Only an unknown key: nothing to send at all.
    s.conf
        .settings
        .insert("no_such_option_anywhere".into(), true.into());
    s.reload();
    std::thread::sleep(SETTLE);
    assert!(
        s.requests("POST", "/sdapi/v1/options").is_empty(),
        "an unknown key alone made a POST"
    );

    // An unknown key beside a known one: only the known one goes.
    s.conf
        .settings
        .insert("another_unknown_option".into(), 5.into());
    s.conf
        .settings
        .insert("samples_format".into(), "webp".into());
    s.reload();
    let posts = option_posts_after_settling(&s, 1);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].v["body"], json!({"samples_format": "webp"}));
    assert!(
        s.records().iter().all(|r| {
            let body = r.v["body"].to_string();
            !body.contains("no_such_option_anywhere") && !body.contains("another_unknown_option")
        }),
        "an unknown key reached the UI"
    );
    assert_untouched(&s);
}

/// A model file to link: a small file under the scenario dir.
fn model_file(s: &Scenario, name: &str) -> std::path::PathBuf {
    let dir = s.path("store");
    std::fs::create_dir_all(&dir).expect("create the model store");
    let p = dir.join(name);
    std::fs::write(&p, b"not really a model").expect("write a model file");
    p
}

/// Adds a checkpoint, then a LoRA: each reload refreshes exactly its kind. Runs
/// against the a1111 stand-in: Forge (dfdcbab) has no lora routes, so the
/// supervisor calls none there (tests/harden_runtime.rs).
fn add_checkpoint_then_lora(s: &mut Scenario) {
    let ckpt = model_file(s, "a.safetensors");
    s.conf
        .models
        .entry("checkpoints".into())
        .or_default()
        .insert("a.safetensors".into(), ckpt);
    s.reload();
    s.wait(SECS(5), "POST /sdapi/v1/refresh-checkpoints", || {
        (!s.requests("POST", "/sdapi/v1/refresh-checkpoints")
            .is_empty())
        .then_some(())
    });
    std::thread::sleep(SETTLE);
    let lora = model_file(s, "detail.safetensors");
    s.conf
        .models
        .entry("loras".into())
        .or_default()
        .insert("detail.safetensors".into(), lora);
    s.reload();
    s.wait(SECS(5), "POST /sdapi/v1/refresh-loras", || {
        (!s.requests("POST", "/sdapi/v1/refresh-loras").is_empty()).then_some(())
    });
    std::thread::sleep(SETTLE);
}

#[test]
fn a_models_change_is_one_refresh_of_its_kind_and_no_restart() {
    let mut s = Scenario::new("models", "a1111");
    s.start();
    s.wait_listening(1, SECS(20));
    add_checkpoint_then_lora(&mut s);

    let refreshes: Vec<String> = s
        .records()
        .iter()
        .filter(|r| r.event == "request" && r.path().starts_with("/sdapi/v1/refresh-"))
        .map(|r| format!("{} {}", r.method(), r.path()))
        .collect();
    assert_eq!(
        refreshes,
        [
            "POST /sdapi/v1/refresh-checkpoints",
            "POST /sdapi/v1/refresh-loras"
        ],
        "one refresh per reload, for the kind that changed"
    );
    assert!(s.requests("POST", "/sdapi/v1/options").is_empty());
    assert_untouched(&s);
}

#[test]
fn a_models_change_updates_the_links_the_ui_sees() {
    let mut s = Scenario::new("model-links", "a1111");
    s.start();
    s.wait_listening(1, SECS(20));
    add_checkpoint_then_lora(&mut s);

    let link = s
        .conf
        .data_dir
        .join("models/Stable-diffusion/a.safetensors");
    let target = std::fs::read_link(&link)
        .unwrap_or_else(|e| panic!("{} is not a link: {e}", link.display()));
    assert_eq!(target, s.path("store/a.safetensors"));
    let lora = s.conf.data_dir.join("models/Lora/detail.safetensors");
    assert_eq!(
        std::fs::read_link(&lora).expect("the LoRA link"),
        s.path("store/detail.safetensors")
    );
    // The refresh ran after the relayout: the UI lists the new checkpoint.
    let models = get_json(s.conf.port, "/sdapi/v1/sd-models");
    assert_eq!(models[0]["title"], "a.safetensors", "{models}");

    // Retargeted and then removed: the link follows, then goes.
    let b = model_file(&s, "b.safetensors");
    s.conf
        .models
        .get_mut("checkpoints")
        .unwrap()
        .insert("a.safetensors".into(), b.clone());
    s.reload();
    s.wait(SECS(5), "the link retargeted", || {
        (std::fs::read_link(&link).ok().as_deref() == Some(b.as_path())).then_some(())
    });
    s.conf.models.remove("checkpoints");
    s.reload();
    s.wait(SECS(5), "the link removed", || {
        (!link.exists() && std::fs::symlink_metadata(&link).is_err()).then_some(())
    });
    assert_untouched(&s);
}

/// The config text with `ui.port` replaced by `port`.
fn with_port(text: &str, port: u16, bad: &str) -> String {
    let from = format!("port = {port}\n");
    assert!(text.contains(&from), "the rendered config names the port");
    text.replace(&from, &format!("port = {bad}\n"))
}

#[test]
fn an_invalid_file_leaves_the_ui_alone_and_says_why_until_fixed() {
    let mut s = Scenario::new("invalid", "forge");
    s.start();
    let first = s.wait_listening(1, SECS(20));

    // Invalid: a port out of range, plus a settings change that must not apply.
    s.conf
        .settings
        .insert("samples_format".into(), "webp".into());
    let invalid = with_port(&s.conf.render(), s.conf.port, "0");
    write_atomic(&s.config, &invalid);
    s.sighup();
    s.wait(SECS(3), "STATUS with the rejected reload", || {
        let st = s.notify.status();
        (st.starts_with("ready; idle; forge")
            && st.contains("reload rejected: ui.port: 0 is out of range (1–65535)"))
        .then_some(())
    });
    std::thread::sleep(SETTLE);
    assert!(
        s.requests("POST", "/sdapi/v1/options").is_empty(),
        "a setting from the invalid file was applied"
    );
    assert_untouched(&s);
    let log = s.daemon().log_tail(40);
    assert!(
        log.contains(&format!("{}:", s.config.display())) && log.contains("ui.port"),
        "the log names the file and the key:\n{log}"
    );

    // Fixed, with the settings change: applied against the old (valid) config,
    // and the rejection is gone from the status.
    s.reload();
    let posts = option_posts_after_settling(&s, 1);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].v["body"], json!({"samples_format": "webp"}));
    s.wait(SECS(3), "STATUS without the rejection", || {
        (!s.notify.status().contains("reload rejected")).then_some(())
    });
    assert_untouched(&s);
    assert_eq!(s.starts()[0].pid, first.pid);

    // Broken again, then the very same valid text back: the rejection clears too.
    write_atomic(
        &s.config,
        &with_port(&s.conf.render(), s.conf.port, "\"x\""),
    );
    s.sighup();
    s.wait(SECS(3), "STATUS with the second rejection", || {
        s.notify
            .status()
            .contains("reload rejected: ui.port: invalid type: string \"x\", expected an integer")
            .then_some(())
    });
    s.reload();
    s.wait(SECS(3), "STATUS without the second rejection", || {
        (!s.notify.status().contains("reload rejected")).then_some(())
    });
    assert_untouched(&s);
}

#[test]
fn a_settings_change_while_the_ui_starts_reaches_the_ui() {
    let mut s = Scenario::new("settings-starting", "forge");
    s.conf.env.insert("STANDIN_START_DELAY".into(), "2".into());
    s.write_config();
    s.spawn();
    // The stand-in has read its config.json and is "loading"; the supervisor is
    // still waiting for it to answer.
    s.wait_event("start", 1, SECS(10));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.notify.ready_count(), 0, "the UI answered too early");
    s.conf
        .settings
        .insert("samples_format".into(), "jpg".into());
    s.write_config();
    s.daemon().signal(nix::sys::signal::Signal::SIGHUP);
    s.wait(SECS(20), "READY=1 at start", || {
        (s.notify.ready_count() >= 1).then_some(())
    });
    s.wait(SECS(5), "the new setting in the running UI", || {
        (get_json(s.conf.port, "/sdapi/v1/options")["samples_format"] == "jpg").then_some(())
    });
}

/// A link that cannot be made (its folder is read-only) stops no other link;
/// the reload's outcome and `status` name the model key that failed, and the
/// next reload after the cause is gone completes the layout.
#[test]
fn a_failing_link_is_reported_by_reload_and_status_and_stops_no_other() {
    let mut s = Scenario::new("link-fails", "a1111");
    s.start();
    s.wait_listening(1, SECS(20));
    let lora_dir = s.conf.data_dir.join("models/Lora");
    std::fs::create_dir_all(&lora_dir).expect("create the LoRA folder");
    let Some(guard) = support::mounts::ReadOnly::mount(&lora_dir) else {
        return;
    };

    let ckpt = model_file(&s, "a.safetensors");
    let lora = model_file(&s, "detail.safetensors");
    s.conf
        .models
        .entry("checkpoints".into())
        .or_default()
        .insert("a.safetensors".into(), ckpt.clone());
    s.conf
        .models
        .entry("loras".into())
        .or_default()
        .insert("detail.safetensors".into(), lora.clone());
    s.write_config();
    let socket = s.conf.socket.clone();
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("run the client")
    };
    // The watcher reloads the written file (a `reload` right after it races
    // with it and may find the file unchanged): read the outcome from status.
    let key = r#"models.loras."detail.safetensors""#;
    let last = s.wait(SECS(10), "the reload's outcome", || {
        let out = cli(&["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let last = st["last_reload"].clone();
        last["applied_live"]
            .as_array()
            .is_some_and(|a| !a.is_empty())
            .then_some(last)
    });
    assert_eq!(last["result"], "applied", "{last}");
    let named = last["errors"].as_array().is_some_and(|e| {
        e.iter()
            .any(|e| e.as_str().is_some_and(|e| e.contains(key)))
    });
    assert!(named, "the failed link is not named: {last}");
    let link = s
        .conf
        .data_dir
        .join("models/Stable-diffusion/a.safetensors");
    assert_eq!(std::fs::read_link(&link).ok(), Some(ckpt));
    let status = cli(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains(key), "status does not name it:\n{text}");
    assert!(
        text.contains("1 link failed"),
        "status does not say a link failed:\n{text}"
    );
    assert!(
        text.contains("last reload incomplete (1 error; see status)"),
        "the status line does not say the reload is incomplete:\n{text}"
    );

    drop(guard);
    s.conf.settings.insert("jpeg_quality".into(), 91.into());
    s.write_config();
    let lora_link = lora_dir.join("detail.safetensors");
    s.wait(SECS(10), "the LoRA link after the next reload", || {
        (std::fs::read_link(&lora_link).ok() == Some(lora.clone())).then_some(())
    });
    assert_untouched(&s);
}

/// `control.*` is set up once, at start: a reload that changes
/// `control.socket` says the change takes effect at the next start (not
/// "applied live"), and the daemon keeps answering on the socket it has.
#[test]
fn a_control_socket_change_is_reported_for_the_next_start() {
    let mut s = Scenario::new("socket-change", "a1111");
    s.start();
    s.wait_listening(1, SECS(20));
    let old = s.conf.socket.clone();
    let new = s.path("other.sock");
    s.conf.socket = new.clone();
    s.write_config();
    let cli = |socket: &std::path::Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
            .args(args)
            .arg("--socket")
            .arg(socket)
            .output()
            .expect("run the client")
    };
    // The watcher reloads the written file: read the outcome from status.
    let last = s.wait(SECS(10), "the reload's outcome", || {
        let out = cli(&old, &["status", "--json"]);
        let st: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let last = st["last_reload"].clone();
        (last["result"] == "applied").then_some(last)
    });
    assert_eq!(last["next_start"], json!(["control.socket"]), "{last}");
    assert_eq!(last["applied_live"], json!([]), "{last}");
    let text = cli(&old, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("takes effect at the next start: control.socket"),
        "{text}"
    );
    assert!(!new.exists(), "a socket appeared at {}", new.display());
    assert_untouched(&s);
}
