//! Declared images (issue 15) through the real daemon and the stand-in UI
//! (Forge and ComfyUI): rendered once the UI is ready and idle, one at a time,
//! never while a job runs, not again on a no-op reload or a daemon restart,
//! again when the seed changes; `generate` round trips; a failing render is
//! reported and not retried in a loop; a pending restart waits for a declared
//! render in progress.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use support::{Scene, t, wait_for};

const LONG: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");

/// The scene's config with `[restart]` made quick and `images` appended.
fn write_config(scene: &Scene, images: &str) {
    let base = scene.config_toml();
    let policy = format!("policy = \"{}\"", scene.policy);
    let quick = format!("{policy}\nidle_grace = \"1s\"\npoll_interval = \"200ms\"");
    assert!(base.contains(&policy), "{base}");
    let text = format!("{}\n{images}", base.replacen(&policy, &quick, 1));
    fs::write(scene.config_path(), text).expect("write the config");
}

/// `sd-webui-supervisor ARGS --socket <scene's socket>`.
fn cli(scene: &Scene, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--socket")
        .arg(scene.dir().join("control.sock"))
        .output()
        .expect("run the CLI")
}

fn status(scene: &Scene) -> Option<Value> {
    let out = cli(scene, &["status", "--json"]);
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until the status's `images` satisfies `pred`.
fn wait_images(scene: &Scene, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, LONG, || {
        status(scene).and_then(|s| pred(&s["images"]).then(|| s["images"].clone()))
    })
}

fn declared(scene: &Scene, name: &str, ext: &str) -> PathBuf {
    scene
        .data_dir()
        .join("outputs/declared")
        .join(format!("{name}.{ext}"))
}

fn sidecar(scene: &Scene, name: &str) -> Value {
    let text = fs::read_to_string(declared(scene, name, "json")).expect("the sidecar exists");
    serde_json::from_str(&text).expect("the sidecar is JSON")
}

/// The stand-in's image requests (txt2img or ComfyUI prompts), in order.
fn image_requests(scene: &Scene) -> Vec<Value> {
    scene
        .record()
        .of("request")
        .into_iter()
        .filter(|r| {
            r["method"] == "POST" && (r["path"] == "/sdapi/v1/txt2img" || r["path"] == "/prompt")
        })
        .collect()
}

fn reload(scene: &Scene) -> String {
    let out = cli(scene, &["reload"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";

const FORGE_IMAGES: &str = r#"
[images.cat]
prompt = "a cat"
seed = 1
steps = 3

[images.dog]
prompt = "a dog"
seed = 7
"#;

#[test]
fn forge_renders_after_ready_one_at_a_time_and_only_when_the_declaration_changes() {
    let scene = Scene::new("img-forge");
    let builder = scene.daemon();
    write_config(&scene, FORGE_IMAGES);
    let daemon = builder.spawn();
    let images = wait_images(&scene, "both images rendered", |i| i["rendered"] == 2);
    assert_eq!(images["declared"], 2);
    for name in ["cat", "dog"] {
        let png = fs::read(declared(&scene, name, "png")).expect("the PNG exists");
        assert!(png.starts_with(PNG), "{name}.png is a PNG");
    }
    let cat = sidecar(&scene, "cat");
    assert_eq!(cat["seed"], 1, "{cat}");
    assert_eq!(cat["info"]["seed"], 1, "the UI's own info: {cat}");
    assert_eq!(cat["declaration"]["txt2img"]["prompt"], "a cat");
    assert_eq!(cat["fingerprint"].as_str().map(str::len), Some(64));

    // After ready; one at a time, with an idle reading between the two.
    let record = scene.record();
    let events = record.events();
    let requests = image_requests(&scene);
    assert_eq!(requests.len(), 2, "{requests:?}");
    let first_probe = events
        .iter()
        .find(|e| e["event"] == "request" && e["path"] == "/sdapi/v1/progress")
        .expect("the readiness probe");
    assert!(
        t(&requests[0]) > t(first_probe),
        "rendered before the UI was ready"
    );
    let first_end = events
        .iter()
        .find(|e| e["event"] == "job_end")
        .expect("the first render ended");
    assert!(t(&requests[1]) > t(first_end), "the renders overlapped");
    assert!(
        events.iter().any(|e| e["event"] == "request"
            && e["path"] == "/sdapi/v1/progress"
            && t(e) > t(first_end)
            && t(e) < t(&requests[1])),
        "no idle reading between the two renders"
    );

    // A no-op reload renders nothing.
    let _ = reload(&scene);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(image_requests(&scene).len(), 2, "a no-op reload rendered");

    // A new seed renders that image again, and only it.
    write_config(&scene, &FORGE_IMAGES.replace("seed = 1\n", "seed = 2\n"));
    let out = reload(&scene);
    // The file watcher may apply the edit before this reload arrives (then it is
    // "unchanged"); either way one reload must have applied the images live.
    assert!(out.contains("images") || out.contains("unchanged"), "{out}");
    wait_for("a reload that applied the images live", LONG, || {
        daemon
            .log()
            .lines()
            .any(|l| l.contains("reload_result=applied") && l.contains("\"images"))
            .then_some(())
    });
    wait_for("cat rendered with seed 2", LONG, || {
        (sidecar(&scene, "cat")["seed"] == 2).then_some(())
    });
    let requests = image_requests(&scene);
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[2]["body"]["prompt"], "a cat");
    assert_eq!(requests[2]["body"]["seed"], 2);
    assert_eq!(sidecar(&scene, "dog")["seed"], 7);

    // A new daemon on the same data dir renders nothing.
    drop(daemon);
    let _daemon = scene.daemon();
    write_config(&scene, &FORGE_IMAGES.replace("seed = 1\n", "seed = 2\n"));
    let _daemon = _daemon.spawn();
    let images = wait_images(&scene, "the new daemon reports", |i| i["rendered"] == 2);
    assert_eq!(images["pending"], 0);
    wait_for("the new UI probed idle", LONG, || {
        status(&scene).and_then(|s| (s["queue"]["running"] == 0).then_some(()))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(image_requests(&scene).len(), 3, "a restart rendered again");
}

#[test]
fn forge_never_renders_while_a_job_runs() {
    let scene = Scene::new("img-busy");
    let builder = scene.daemon();
    write_config(&scene, "");
    let _daemon = builder.spawn();
    wait_for("ready", LONG, || {
        status(&scene).and_then(|s| (s["state"] == "ready").then_some(()))
    });
    // A user's job of 3 s, submitted straight to the UI.
    let port = scene.port;
    let user = std::thread::spawn(move || {
        let body = r#"{"prompt": "user job", "stand_in_seconds": 3}"#;
        Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
            ])
            .arg(format!("http://127.0.0.1:{port}/sdapi/v1/txt2img"))
            .output()
    });
    let record = scene.record();
    let started = record.wait_event("the user's job", LONG, |e| e["event"] == "job_start");
    write_config(&scene, FORGE_IMAGES);
    let _ = reload(&scene);
    wait_images(&scene, "both images rendered", |i| i["rendered"] == 2);
    let _ = user.join();
    let user_end = record
        .of("job_end")
        .into_iter()
        .find(|e| e["id"] == started["id"])
        .expect("the user's job ended");
    let requests = image_requests(&scene);
    assert_eq!(requests.len(), 3, "{requests:?}");
    for r in &requests[1..] {
        assert!(
            t(r) > t(&user_end),
            "an image was sent while the user's job ran"
        );
    }
}

#[test]
fn a_failing_render_is_reported_not_retried_and_generate_round_trips() {
    let flag = tempfile::NamedTempFile::new().expect("a flag file");
    fs::write(flag.path(), "CUDA out of memory").expect("write the flag");
    let scene =
        Scene::new("img-fail").env("STANDIN_IMAGE_ERROR", format!("@{}", flag.path().display()));
    let builder = scene.daemon();
    write_config(
        &scene,
        &FORGE_IMAGES.replace("[images.dog]\nprompt = \"a dog\"\nseed = 7\n", ""),
    );
    let _daemon = builder.spawn();
    let images = wait_images(&scene, "the failure reported", |i| {
        i["failed"].as_array().is_some_and(|f| !f.is_empty())
    });
    assert_eq!(images["failed"][0]["name"], "cat");
    let error = images["failed"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("CUDA out of memory"), "{error}");
    let metrics = cli(&scene, &["status"]);
    assert!(
        String::from_utf8_lossy(&metrics.stdout).contains("cat: "),
        "{metrics:?}"
    );
    // Idle for many poll intervals: no retry.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        image_requests(&scene).len(),
        1,
        "a failed render was retried"
    );

    // `generate` tries again and exits 1 with the UI's error.
    let out = cli(&scene, &["generate", "cat"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cat: "),
        "{out:?}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("CUDA out of memory"));
    assert_eq!(image_requests(&scene).len(), 2);

    // Fixed: `generate` renders it and prints the path.
    fs::remove_file(flag.path()).expect("remove the flag");
    let out = cli(&scene, &["generate", "cat"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let path = declared(&scene, "cat", "png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", path.display())
    );
    assert!(fs::read(&path).expect("the PNG").starts_with(PNG));
    assert_eq!(image_requests(&scene).len(), 3);

    // Already there: nothing rendered; --force renders again.
    let out = cli(&scene, &["generate"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(image_requests(&scene).len(), 3);
    let out = cli(&scene, &["generate", "--force", "cat"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(image_requests(&scene).len(), 4);
    let out = cli(&scene, &["generate", "bird"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no declared image named bird"));
}

#[test]
fn a_pending_restart_waits_for_a_declared_render_in_progress() {
    let mut scene = Scene::new("img-restart").env("STANDIN_JOB_SECONDS", 3);
    scene.policy = "when-idle".into();
    let builder = scene.daemon();
    write_config(&scene, "[images.cat]\nprompt = \"a cat\"\nseed = 1\n");
    let _daemon = builder.spawn();
    let record = scene.record();
    let job = record.wait_event("the render", LONG, |e| e["event"] == "job_start");
    let out = cli(&scene, &["restart", "--when-idle"]);
    assert!(out.status.success(), "{out:?}");
    let stop = record.wait_event("the restart's stop", LONG, |e| e["event"] == "signal");
    let end = record
        .of("job_end")
        .into_iter()
        .find(|e| e["id"] == job["id"])
        .expect("the render ended before the restart");
    assert_eq!(end["completed"], true);
    assert!(t(&stop) > t(&end), "the restart interrupted the render");
    record.wait_starts(2, LONG);
    wait_images(&scene, "cat rendered", |i| i["rendered"] == 1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        image_requests(&scene).len(),
        1,
        "rendered again after the restart"
    );
}

const WORKFLOW: &str = r#"{
  "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
  "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
  "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "declared"}},
  "4": {"class_type": "KSampler", "inputs": {"seed": 5}}
}"#;

#[test]
fn comfyui_renders_a_workflow_and_again_when_an_input_changes() {
    let mut scene = Scene::new("img-comfy").env("STANDIN_FLAVOR", "comfyui");
    scene.flavor = "comfyui".into();
    fs::create_dir_all(scene.data_dir().join("custom_nodes")).expect("custom_nodes");
    let workflow = scene.dir().join("blur-api.json");
    fs::write(&workflow, WORKFLOW).expect("write the workflow");
    let images = |color: u32| {
        format!(
            "[images.blur]\nworkflow = \"{}\"\ninputs = {{ \"1.color\" = {color}, \"4.seed\" = 9 }}\n",
            workflow.display()
        )
    };
    let builder = scene.daemon();
    write_config(&scene, &images(255));
    let _daemon = builder.spawn();
    wait_images(&scene, "blur rendered", |i| i["rendered"] == 1);
    let png = fs::read(declared(&scene, "blur", "png")).expect("the PNG");
    assert!(png.starts_with(PNG));
    let side = sidecar(&scene, "blur");
    assert_eq!(side["seed"], 9, "{side}");
    assert_eq!(side["declaration"]["workflow"]["1"]["inputs"]["color"], 255);
    assert_eq!(side["info"]["status"]["status_str"], "success");
    let requests = image_requests(&scene);
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0]["body"]["prompt"]["1"]["inputs"]["color"], 255);
    assert_eq!(requests[0]["body"]["client_id"], "sd-webui-supervisor");

    let _ = reload(&scene);
    write_config(&scene, &images(0));
    let _ = reload(&scene);
    wait_for("blur rendered again", LONG, || {
        (sidecar(&scene, "blur")["declaration"]["workflow"]["1"]["inputs"]["color"] == 0)
            .then_some(())
    });
    assert_eq!(image_requests(&scene).len(), 2);
}

#[test]
fn comfyui_failure_is_reported_with_the_nodes_error() {
    let mut scene = Scene::new("img-comfy-fail")
        .env("STANDIN_IMAGE_ERROR", "boom")
        .env("STANDIN_FLAVOR", "comfyui");
    scene.flavor = "comfyui".into();
    fs::create_dir_all(scene.data_dir().join("custom_nodes")).expect("custom_nodes");
    let workflow = scene.dir().join("blur-api.json");
    fs::write(&workflow, WORKFLOW).expect("write the workflow");
    let builder = scene.daemon();
    write_config(
        &scene,
        &format!("[images.blur]\nworkflow = \"{}\"\n", workflow.display()),
    );
    let _daemon = builder.spawn();
    let images = wait_images(&scene, "the failure", |i| {
        i["failed"].as_array().is_some_and(|f| !f.is_empty())
    });
    let error = images["failed"][0]["error"].as_str().unwrap_or_default();
    assert_eq!(error, "node 3 (SaveImage): RuntimeError: boom");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(image_requests(&scene).len(), 1, "retried in a loop");
    assert!(!declared(&scene, "blur", "png").exists());
}
