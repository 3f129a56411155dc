//! The CLI client (`status`, `reload`, `restart`, `wait-idle`) as a user runs it:
//! the real binary against a control API served in-process over a fake core.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use sd_webui_supervisor::config::{ControlConfig, DbusBus};
use sd_webui_supervisor::control::{self, Control, status_text};
use serde_json::Value;
use support::control::{FakeCore, busy_pending, outcome, ready_idle, starting};

const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");

struct Daemon {
    core: FakeCore,
    control: Control,
    _dir: tempfile::TempDir,
}

impl Daemon {
    async fn start(snapshot: sd_webui_supervisor::supervisor::protocol::Snapshot) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let core = FakeCore::new(snapshot);
        let config = ControlConfig {
            socket: dir.path().join("control.sock"),
            dbus: DbusBus::Off,
            http_listen: None,
            token_file: None,
            max_connections: 128,
        };
        let control = control::start(core.handle.clone(), &config).await.unwrap();
        Daemon {
            core,
            control,
            _dir: dir,
        }
    }

    fn socket(&self) -> &Path {
        self.control.socket_path()
    }

    /// Runs the CLI with `args` plus `--socket` (in UTC, so times are predictable).
    async fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        let socket = self.socket().to_str().unwrap().to_owned();
        all.extend(["--socket", &socket]);
        run(&all).await
    }
}

async fn run(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test]
async fn status_json_is_the_snapshot_and_fits_the_schema() {
    for snapshot in [busy_pending(), ready_idle(), starting()] {
        let daemon = Daemon::start(snapshot.clone()).await;
        let out = daemon.cli(&["status", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        support::control::assert_fits_schema(&doc);
        assert_eq!(doc, serde_json::to_value(&snapshot).unwrap());
    }
}

#[tokio::test]
async fn status_for_people_shows_the_pending_restart_and_the_queue() {
    let daemon = Daemon::start(busy_pending()).await;
    let out = daemon.cli(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for expected in [
        "ready; busy: 1 running, 3 queued; restart pending",
        "Queue:     1 running, 3 pending",
        "Restart:   pending: ui.extra_args, extensions",
        "policy when-idle; since 2026-01-01 00:00:00 +00:00; deadline 2026-01-01 06:00:00 +00:00",
        "UI:        forge on GPU 0; pid 4242",
        "Layout:    1 conflict:",
        "           needs restart: ui.extra_args, extensions",
        "config 2, crash 1; crashes 1",
        "Images:    3 declared: 1 rendered, 1 pending (rendering cat), 1 failed",
        "             dog: /sdapi/v1/txt2img: HTTP 500: RuntimeError: CUDA out of memory",
        "Pod cost:  3 on pod gpu-pool/sd-webui-7d9f-abcde; the last patch failed: PATCH https://10.96.0.1:443/",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
    assert!(text.lines().count() <= 24, "more than one screen:\n{text}");
}

#[tokio::test]
async fn reload_exits_1_and_prints_the_errors_when_rejected() {
    let daemon = Daemon::start(ready_idle()).await;
    let out = daemon.cli(&["reload"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("reload applied"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("applied live: settings"),
        "{}",
        stdout(&out)
    );

    daemon.core.set_reload(outcome("rejected"));
    let out = daemon.cli(&["reload"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("rejected"), "{err}");
    for e in &outcome("rejected").errors {
        assert!(err.contains(e.as_str()), "{err}");
    }
}

#[tokio::test]
async fn restart_prints_the_status_line_and_defaults_to_when_idle() {
    let daemon = Daemon::start(ready_idle()).await;
    for (args, when) in [
        (&["restart"][..], "idle"),
        (&["restart", "--when-idle"][..], "idle"),
        (&["restart", "--now"][..], "now"),
    ] {
        let out = daemon.cli(args).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(stdout(&out).contains(&format!("restart scheduled ({when})")));
    }
    assert_eq!(
        daemon.core.seen(),
        ["restart idle", "restart idle", "restart now"]
    );
    let out = daemon.cli(&["restart", "--when-idle", "--now"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "conflicting flags are a usage error"
    );
}

#[tokio::test]
async fn generate_prints_the_paths_or_exits_1_with_the_uis_error() {
    let daemon = Daemon::start(ready_idle()).await;
    let out = daemon.cli(&["generate", "cat"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "/var/lib/sd-webui-forge/outputs/declared/cat.png\n"
    );
    let out = daemon.cli(&["generate", "cat", "dog", "--force"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert_eq!(
        stderr(&out),
        "dog: /sdapi/v1/txt2img: HTTP 500: RuntimeError: CUDA out of memory\n"
    );
    let out = daemon.cli(&["generate", "bird"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no declared image named bird"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        daemon.core.seen(),
        ["generate cat", "generate cat,dog --force", "generate bird"]
    );
}

#[tokio::test]
async fn wait_idle_exits_0_when_idle_and_5_on_timeout() {
    let daemon = Daemon::start(busy_pending()).await;
    let out = daemon.cli(&["wait-idle", "--timeout", "200ms"]).await;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("idle"), "{}", stderr(&out));

    let waiter = daemon.cli(&["wait-idle", "--timeout", "30s"]);
    let publish = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        daemon.core.publish(|s| *s = ready_idle());
    };
    let (out, ()) = tokio::join!(waiter, publish);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("ready; idle"), "{}", stdout(&out));

    let out = daemon.cli(&["wait-idle"]).await;
    assert_eq!(out.status.code(), Some(0), "no timeout, already idle");
    let out = daemon.cli(&["wait-idle", "--timeout", "soon"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad duration is a usage error"
    );
}

#[tokio::test]
async fn no_daemon_exits_4_naming_the_socket_and_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    for cmd in [
        &["status"][..],
        &["status", "--json"],
        &["reload"],
        &["restart"],
        &["wait-idle"],
    ] {
        let mut args = cmd.to_vec();
        args.extend(["--socket", socket.to_str().unwrap()]);
        let out = run(&args).await;
        assert_eq!(out.status.code(), Some(4), "{cmd:?}");
        let err = stderr(&out);
        assert!(err.contains(socket.to_str().unwrap()), "{err}");
        assert!(err.contains("systemctl status sd-webui-forge"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

fn write_config(dir: &Path, socket: &Path) -> PathBuf {
    let path = dir.join("config.toml");
    let text = format!(
        "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/true\"]\n\n[data]\ndir = \"{}\"\n\n[control]\nsocket = \"{}\"\n",
        dir.join("data").display(),
        socket.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn the_socket_comes_from_config_when_not_given() {
    let daemon = Daemon::start(busy_pending()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), daemon.socket());
    let out = run(&["status", "--json", "--config", config.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["queue"]["pending"], 3);

    // An unusable config file is a failure of its own (exit 1), with its message.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[control]\nsocket = 5\n").unwrap();
    let out = run(&["status", "--config", bad.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad.toml"), "{}", stderr(&out));
}

#[tokio::test]
async fn without_socket_or_config_the_default_socket_is_tried() {
    let default = sd_webui_supervisor::config::DEFAULT_SOCKET;
    if Path::new(default).exists() {
        support::skip(&format!("something lives at {default}"));
        return;
    }
    let out = run(&["status"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(stderr(&out).contains(default), "{}", stderr(&out));
}

#[test]
fn status_text_for_a_ui_that_is_not_up() {
    let text = status_text::render_in(&starting(), 1_767_225_600, &chrono::Utc);
    for expected in [
        "State:     starting\n",
        "Reason:    model loading",
        "UI:        forge on inherited GPUs; not running",
        "Queue:     unknown (UI not ready)",
        "Restart:   none pending",
        "Reload:    none since start",
        "Layout:    no conflicts",
        "Uptime:    1h 2m 3s",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} missing from:\n{text}"
        );
    }
}

#[test]
fn status_text_for_a_rejected_reload_lists_its_errors() {
    let mut s = ready_idle();
    s.last_reload = Some(outcome("rejected"));
    let text = status_text::render_in(&s, 1_767_225_700, &chrono::Utc);
    assert!(
        text.contains("Reload:    rejected at 2026-01-01 00:00:00 +00:00"),
        "{text}"
    );
    for e in &outcome("rejected").errors {
        assert!(text.contains(e.as_str()), "{text}");
    }
    assert!(
        text.contains("State:     ready since 2025-12-31 23:50:00 +00:00 (11m 40s ago)"),
        "{text}"
    );
}
