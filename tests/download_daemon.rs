//! Downloads in the real daemon (`run`) with the stand-in UI: the UI starts
//! while a model still arrives from a slow server, the finished model is linked
//! live and `refresh-checkpoints` called; a wrong digest fails and
//! `retry-downloads` starts it again; the token never shows in the daemon's
//! output, `status --json`, `/metrics` or the UI's `/proc/PID/{cmdline,environ}`.

mod control_support;
mod download_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use download_server::Server;
use sd_webui_supervisor::control::client::Client;
use sd_webui_supervisor::download::Phase as Dl;
use sd_webui_supervisor::supervisor::protocol::{Phase, Snapshot};
use sha2::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");
const SCHEMA: &str = include_str!("../docs/status.schema.json");
const TOKEN: &str = "hf_Zq9-SECRET-TOKEN-41";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["path"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
            stand_in = repo().join("examples/stand_in_ui.py").display(),
            record = record.display(),
            data = data.display(),
            socket = socket.display(),
            url = srv.url("/file"),
            token = token_file.display(),
        ),
    )
    .unwrap();
    let log = d.join("daemon.log");
    let daemon = Daemon(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "debug")
            .stdout(std::fs::File::create(d.join("daemon.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
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
    let problems = control_support::schema::violations(&schema, &doc);
    assert!(problems.is_empty(), "{problems:#?}");
    let metrics = client.metrics().await.unwrap();
    assert!(
        metrics.contains(r#"sd_webui_supervisor_download_state{kind="checkpoints",name="slow.safetensors",state="done"} 1"#),
        "{metrics}"
    );
    let cmdline = std::fs::read(format!("/proc/{ui_pid}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{ui_pid}/environ")).unwrap();
    drop(daemon);
    let output = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(d.join("daemon.out")).unwrap();
    for (what, text) in [
        ("daemon output", output.as_str()),
        ("status --json", &String::from_utf8_lossy(&json.stdout)),
        ("/metrics", &metrics),
        ("UI cmdline", &String::from_utf8_lossy(&cmdline)),
        ("UI environ", &String::from_utf8_lossy(&environ)),
    ] {
        assert!(!text.contains(TOKEN), "the token is in the {what}");
        assert!(!text.contains("SIGNED"), "a URL query is in the {what}");
    }
    assert!(
        output.contains("wrong.safetensors"),
        "failures are logged by name"
    );
}
