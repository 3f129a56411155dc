//! Downloads in the real daemon (`run`) with the stand-in UI: the UI starts
//! while a model still arrives from a slow server, the finished model is linked
//! live and `refresh-checkpoints` called; a wrong digest fails and
//! `retry-downloads` starts it again; the token never shows in the daemon's
//! output, `status --json`, `/metrics` or the UI's and the download helper's
//! `/proc/PID/{cmdline,environ}`.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sd_webui_supervisor::control::client::Client;
use sd_webui_supervisor::download::Phase as Dl;
use sd_webui_supervisor::supervisor::protocol::{Phase, Snapshot};
use sha2::Digest;
use support::download_server::Server;
use support::{BIN, DaemonBuilder, free_port, read_record, stand_in};

const SCHEMA: &str = include_str!("../docs/status.schema.json");
const TOKEN: &str = "hf_Zq9-SECRET-TOKEN-41";

async fn wait_status(client: &Client, what: &str, want: impl Fn(&Snapshot) -> bool) -> Snapshot {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(s) = client.status().await {
            if want(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: not reached; last status: {last:#?}");
}

fn model<'s>(s: &'s Snapshot, name: &str) -> &'s sd_webui_supervisor::download::ModelProgress {
    s.downloads.iter().find(|m| m.name == name).unwrap()
}

fn recorded_paths(record: &Path) -> Vec<String> {
    read_record(record)
        .iter()
        .filter(|r| r.event == "request")
        .map(|r| r.path().to_string())
        .collect()
}

#[tokio::test]
async fn daemon_links_a_download_live_and_keeps_the_token_secret() {
    let body: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let hex = hex::encode(sha2::Sha256::digest(&body));
    let srv = Server::start("127.0.0.1", body);
    *srv.behaviour.require.lock().unwrap() =
        Some(("authorization".into(), format!("Bearer {TOKEN}")));
    *srv.behaviour.slow.lock().unwrap() = Some(Duration::from_millis(100));

    let dir = tempfile::Builder::new()
        .prefix("download-daemon-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = dir.path();
    let token_file = d.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let socket = d.join("control.sock");
    let data = d.join("data");
    let record = data.join("record.jsonl");
    let port = free_port();
    let wrong = hex::encode(sha2::Sha256::digest(b"not this"));
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[ui]
flavor = "forge"
command = ["python3", "{stand_in}"]
port = {port}
environment = {{ STANDIN_RECORD = "{record}" }}
startup_timeout = "1m"
stop_timeout = "10s"
[data]
dir = "{data}"
[control]
socket = "{socket}"
dbus = "off"
[models.checkpoints]
"slow.safetensors" = {{ url = "{url}", sha256 = "{hex}", token_file = "{token}" }}
[models.loras]
"wrong.safetensors" = {{ url = "{url}?X-Sig=SIGNED", sha256 = "{wrong}", token_file = "{token}" }}
"#,
            stand_in = stand_in().display(),
            record = record.display(),
            data = data.display(),
            socket = socket.display(),
            url = srv.url("/file"),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let log = d.join("daemon.log");
    let daemon = DaemonBuilder::new(
        config.clone(),
        log.clone(),
        format!("STANDIN_RECORD={}", record.display()),
    )
    .env("RUST_LOG", "debug")
    .spawn();
    let client = Client::new(&socket);

    // The UI does not wait for the slow download.
    let s = wait_status(&client, "ready while downloading", |s| {
        s.state == Phase::Ready
            && s.downloads.len() == 2
            && model(s, "slow.safetensors").state == Dl::Downloading
    })
    .await;
    assert!(
        s.status_line.contains("; downloading 2 ("),
        "{}",
        s.status_line
    );
    let link = data.join("models/Stable-diffusion/slow.safetensors");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "linked before it is complete"
    );
    let ui_pid = s.ui_pid.unwrap();
    // The bytes arrive in the download helper, a child of the daemon, which is
    // given the token's file, never the token.
    let helpers = support::procs::children_named(daemon.pid(), "sd-webui-superv");
    assert!(!helpers.is_empty(), "no download helper under the daemon");
    let mut helper_proc = Vec::new();
    for pid in helpers {
        for what in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(format!("/proc/{pid}/{what}")) {
                helper_proc.push((what, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }

    // The wrong digest fails, named, and is not retried by itself.
    let s = wait_status(&client, "mismatch reported", |s| {
        model(s, "wrong.safetensors").state == Dl::Failed
    })
    .await;
    let reason = model(&s, "wrong.safetensors").reason.clone().unwrap();
    assert!(reason.starts_with("sha256 mismatch"), "{reason}");
    assert!(
        s.status_line.contains("1 download failed"),
        "{}",
        s.status_line
    );

    // Full speed: the model is linked live and the UI refreshed.
    *srv.behaviour.slow.lock().unwrap() = None;
    let s = wait_status(&client, "download done", |s| {
        model(s, "slow.safetensors").state == Dl::Done
    })
    .await;
    assert_eq!(s.ui_pid, Some(ui_pid), "no UI restart for a download");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !recorded_paths(&record)
        .iter()
        .any(|p| p == "/sdapi/v1/refresh-checkpoints")
    {
        assert!(Instant::now() < deadline, "no refresh-checkpoints call");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        data.join(".sd-webui-supervisor/downloads").join(&hex)
    );

    // retry-downloads starts the failed one again.
    let wrong_requests = || {
        srv.requests()
            .iter()
            .filter(|r| r.path.contains("X-Sig"))
            .count()
    };
    assert_eq!(wrong_requests(), 1);
    let out = Command::new(BIN)
        .args(["retry-downloads", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 failed download started again"));
    wait_status(&client, "failed again after the retry", |_| {
        wrong_requests() == 2
    })
    .await;

    // The token is nowhere to be seen.
    let json = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(json.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
    let problems = support::schema::violations(&schema, &doc);
    assert!(problems.is_empty(), "{problems:#?}");
    let metrics = client.metrics().await.unwrap();
    assert!(
        metrics.contains(r#"sd_webui_supervisor_download_state{kind="checkpoints",name="slow.safetensors",state="done"} 1"#),
        "{metrics}"
    );
    let cmdline = std::fs::read(format!("/proc/{ui_pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{ui_pid}/environ")).unwrap();
    daemon.terminate(Duration::from_secs(20));
    let output = std::fs::read_to_string(&log).unwrap();
    for (what, text) in [
        ("daemon output", output.as_str()),
        ("status --json", &String::from_utf8_lossy(&json.stdout)),
        ("/metrics", &metrics),
        ("UI cmdline", &String::from_utf8_lossy(&cmdline)),
        ("UI environ", &String::from_utf8_lossy(&environ)),
    ]
    .into_iter()
    .chain(helper_proc.iter().map(|(w, t)| (*w, t.as_str())))
    {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
        assert!(!text.contains("SIGNED"), "a URL query is in the {what}");
    }
    assert!(
        output.contains("wrong.safetensors"),
        "failures are logged by name"
    );
}

/// Models already in the cache at start report done together: they share one
/// relayout (not one per model), and the UI starts with them linked.
#[tokio::test]
async fn cached_models_at_start_share_one_relayout() {
    let dir = tempfile::Builder::new()
        .prefix("download-cached-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = dir.path();
    let data = d.join("data");
    let cache = data.join(".sd-webui-supervisor/downloads");
    std::fs::create_dir_all(&cache).unwrap();
    let mut models = String::new();
    for i in 0..6 {
        let body = format!("cached model {i}");
        let hex = hex::encode(sha2::Sha256::digest(body.as_bytes()));
        std::fs::write(cache.join(&hex), body).unwrap();
        // Port 9 (discard): nothing may be fetched for a cached file.
        models.push_str(&format!(
            "\"m{i}.safetensors\" = {{ url = \"http://127.0.0.1:9/m{i}\", sha256 = \"{hex}\" }}\n"
        ));
    }
    let socket = d.join("control.sock");
    let record = data.join("record.jsonl");
    let config = d.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[ui]
flavor = "forge"
command = ["python3", "{stand_in}"]
port = {port}
environment = {{ STANDIN_RECORD = "{record}" }}
startup_timeout = "1m"
stop_timeout = "10s"
[data]
dir = "{data}"
[control]
socket = "{socket}"
dbus = "off"
[models.checkpoints]
{models}"#,
            stand_in = stand_in().display(),
            port = free_port(),
            record = record.display(),
            data = data.display(),
            socket = socket.display(),
        ),
    )
    .unwrap();
    let log = d.join("daemon.log");
    let daemon = DaemonBuilder::new(
        config.clone(),
        log.clone(),
        format!("STANDIN_RECORD={}", record.display()),
    )
    .env("RUST_LOG", "sd_webui_supervisor=debug")
    .spawn();
    let client = Client::new(&socket);
    wait_status(&client, "ready with every download done", |s| {
        s.state == Phase::Ready
            && s.downloads.len() == 6
            && s.downloads.iter().all(|m| m.state == Dl::Done)
    })
    .await;
    for i in 0..6 {
        let link = data.join(format!("models/Stable-diffusion/m{i}.safetensors"));
        assert!(link.exists(), "{} not linked", link.display());
    }
    // Give a late relayout the time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    daemon.terminate(Duration::from_secs(20));
    let output = std::fs::read_to_string(&log).unwrap();
    let layouts = output.lines().filter(|l| l.contains("layout done")).count();
    // The start's own layout, and one for every cached model together.
    assert!(
        layouts <= 2,
        "{layouts} layouts for 6 cached models:\n{output}"
    );
}

/// A download that finishes while the UI is starting (launched, not yet
/// listening) is linked, and the UI — which lists its models once, at start,
/// before the link was there — is asked to rescan once it is ready. (Seen in
/// review: the link landed 40 ms before ready and no refresh followed.)
#[tokio::test]
async fn a_download_that_lands_while_the_ui_starts_is_refreshed_once_ready() {
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i >> 3) as u8).collect();
    let hex = hex::encode(sha2::Sha256::digest(&body));
    let srv = Server::start("127.0.0.1", body);
    *srv.behaviour.slow.lock().unwrap() = Some(Duration::from_millis(100));

    let scene = ForgeScene::start(
        "download-starting-",
        r#", STANDIN_START_DELAY = "4""#,
        &format!(
            r#""late.safetensors" = {{ url = "{}", sha256 = "{hex}" }}"#,
            srv.url("/file")
        ),
    );
    let (client, data, record) = (&scene.client, &scene.data, &scene.record);

    // The UI is launched (its start record) while the download crawls; then
    // the download is let go and lands while the UI still starts.
    wait_status(client, "the UI launched, the download running", |s| {
        s.state == Phase::Starting
            && s.ui_pid.is_some()
            && model(s, "late.safetensors").state == Dl::Downloading
    })
    .await;
    *srv.behaviour.slow.lock().unwrap() = None;
    let link = data.join("models/Stable-diffusion/late.safetensors");
    let s = wait_status(client, "the download linked", |_| {
        std::fs::symlink_metadata(&link).is_ok()
    })
    .await;
    let linked_before_ready = s.state == Phase::Starting;
    assert!(
        linked_before_ready,
        "the link should land while the UI starts (STANDIN_START_DELAY=4): {s:#?}"
    );
    wait_status(client, "the UI ready", |s| s.state == Phase::Ready).await;

    let deadline = Instant::now() + Duration::from_secs(10);
    while !recorded_paths(record)
        .iter()
        .any(|p| p == "/sdapi/v1/refresh-checkpoints")
    {
        assert!(
            Instant::now() < deadline,
            "no refresh-checkpoints after ready; the UI listed its checkpoints before the link landed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scene.daemon.terminate(Duration::from_secs(20));
}

/// A reload that drops a downloaded model unlinks it and the core sweeps its
/// file from the cache (the layout itself knows nothing of downloads).
#[tokio::test]
async fn a_reload_that_drops_a_download_removes_its_cached_file() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i >> 2) as u8).collect();
    let hex = hex::encode(sha2::Sha256::digest(&body));
    let srv = Server::start("127.0.0.1", body);
    let scene = ForgeScene::start(
        "download-dropped-",
        "",
        &format!(
            r#""kept.safetensors" = {{ url = "{}", sha256 = "{hex}" }}"#,
            srv.url("/file")
        ),
    );
    let (client, data, config) = (&scene.client, &scene.data, &scene.config);
    let link = data.join("models/Stable-diffusion/kept.safetensors");
    let cached = data.join(".sd-webui-supervisor/downloads").join(&hex);
    wait_status(client, "the download linked", |s| {
        s.state == Phase::Ready
            && model(s, "kept.safetensors").state == Dl::Done
            && std::fs::symlink_metadata(&link).is_ok()
    })
    .await;
    assert!(cached.is_file(), "the cached file is there");

    // The reload keeps the port: the same text with no model.
    let text = std::fs::read_to_string(config).unwrap();
    let dropped: String = text
        .lines()
        .filter(|l| !l.starts_with("\"kept.safetensors\""))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(config, dropped).unwrap();
    scene.daemon.signal(nix::sys::signal::Signal::SIGHUP);
    wait_status(client, "the link and the cached file gone", |_| {
        std::fs::symlink_metadata(&link).is_err() && !cached.exists()
    })
    .await;
    scene.daemon.terminate(Duration::from_secs(20));
}

/// The daemon on a Forge stand-in in a scratch dir of its own, with `environment`
/// added to the UI's (`KEY = "value", …`) and `checkpoints` as the
/// `[models.checkpoints]` lines.
struct ForgeScene {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    data: std::path::PathBuf,
    record: std::path::PathBuf,
    daemon: support::Daemon,
    client: Client,
}

impl ForgeScene {
    fn start(prefix: &str, environment: &str, checkpoints: &str) -> ForgeScene {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let d = dir.path();
        let socket = d.join("control.sock");
        let data = d.join("data");
        let record = data.join("record.jsonl");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"[ui]
flavor = "forge"
command = ["python3", "{stand_in}"]
port = {port}
environment = {{ STANDIN_RECORD = "{record}"{environment} }}
startup_timeout = "1m"
[data]
dir = "{data}"
[control]
socket = "{socket}"
dbus = "off"
[models.checkpoints]
{checkpoints}
"#,
                stand_in = stand_in().display(),
                port = free_port(),
                record = record.display(),
                data = data.display(),
                socket = socket.display(),
            ),
        )
        .unwrap();
        let daemon = DaemonBuilder::new(
            config.clone(),
            d.join("daemon.log"),
            format!("STANDIN_RECORD={}", record.display()),
        )
        .spawn();
        ForgeScene {
            client: Client::new(&socket),
            _dir: dir,
            config,
            data,
            record,
            daemon,
        }
    }
}
