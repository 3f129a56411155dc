//! End to end: the real daemon (`sd-webui-supervisor run --config FILE`) supervising
//! the stand-in UI (`examples/stand_in_ui.py`), driven through the control plane.
//!
//! `daemon_*` needs python3 only. `systemd_*` also needs what the project's
//! systemd sandbox needs (`scripts/systemd-sandbox check`: root, `unshare`,
//! systemd >= 254): without it the test is skipped with the reason, except under
//! `CI=true`, where a missing precondition is a failure. All files live under
//! `CARGO_TARGET_TMPDIR`, because units must not use /tmp.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use sd_webui_supervisor::control::client::Client;
use sd_webui_supervisor::control::dbus::{BUS_NAME, INTERFACE, OBJECT_PATH};
use sd_webui_supervisor::supervisor::protocol::{Phase, Snapshot};
use serde_json::Value;
use support::systemd::Sandbox;
use support::{BIN, Scene, repo_root};

/// How long a stand-in job holds the queue: long enough to look at it.
const JOB_SECONDS: u64 = 25;

/// A scene under the target dir running the stand-in (forge) with jobs of
/// [`JOB_SECONDS`], its record in the data dir (writable by a unit's user), the
/// control socket at `socket`.
fn scene(name: &str, socket: &Path, dbus: &str) -> Scene {
    let mut scene = Scene::in_target_dir(name)
        .env("STANDIN_JOB_SECONDS", JOB_SECONDS)
        .env("PYTHONUNBUFFERED", 1);
    scene.record = scene.data_dir().join("record.jsonl");
    scene.startup_timeout = "1m".into();
    scene.policy = "when-idle".into();
    scene.idle_grace = Some("1s".into());
    scene.poll_interval = Some("1s".into());
    scene.socket = socket.to_path_buf();
    scene.dbus = dbus.into();
    scene
}

/// Starts one txt2img job on the stand-in (in the background; it answers when done).
fn start_job(port: u16) {
    tokio::spawn(async move {
        let _ = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{port}/sdapi/v1/txt2img"))
            .json(&serde_json::json!({ "prompt": "a lighthouse", "steps": 20 }))
            .send()
            .await;
    });
}

/// Polls the daemon until `want` holds for its status, or panics after `limit`.
async fn wait_status(
    client: &Client,
    limit: Duration,
    want: impl Fn(&Snapshot) -> bool,
) -> Snapshot {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        if let Ok(s) = client.status().await {
            if want(&s) {
                return s;
            }
            last = Some(s);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("the daemon did not reach the wanted state in {limit:?}; last status: {last:#?}");
}

fn cli(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("TZ", "UTC")
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

fn assert_fits_schema(json: &[u8]) {
    support::control::assert_fits_schema(&serde_json::from_slice(json).unwrap());
}

#[tokio::test]
async fn daemon_control_plane_end_to_end() {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let socket = work.path().join("run/control.sock");
    let scene = scene("control-e2e", &socket, "off");
    let port = scene.port;
    let config = scene.write_config();
    let config_arg = config.to_str().unwrap();
    let socket_arg = socket.to_str().unwrap();
    let daemon = scene.daemon().spawn();
    let client = Client::new(&socket);
    wait_status(&client, Duration::from_secs(60), |s| {
        s.state == Phase::Ready && s.queue.is_some()
    })
    .await;

    // The socket: 0660, and a second supervisor refuses to start on it.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&socket).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o660);
    let second = Command::new(BIN)
        .args(["run", "--config", config_arg])
        .output()
        .unwrap();
    assert!(
        !second.status.success(),
        "a second supervisor started on the same socket"
    );
    assert!(
        text(&second.stderr).contains("another supervisor"),
        "{}",
        text(&second.stderr)
    );
    assert!(
        client.status().await.is_ok(),
        "the first supervisor lost its socket"
    );

    // A job runs; a requested restart waits for it.
    start_job(port);
    wait_status(&client, Duration::from_secs(20), |s| {
        s.queue.is_some_and(|q| q.running > 0)
    })
    .await;
    let out = cli(&["restart", "--when-idle", "--config", config_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let waiting = cli(&["wait-idle", "--timeout", "1s", "--socket", socket_arg]);
    assert_eq!(
        waiting.status.code(),
        Some(5),
        "busy, so wait-idle times out"
    );

    let out = cli(&["status", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let human = text(&out.stdout);
    assert!(human.contains("Restart:   pending:"), "{human}");
    assert!(human.contains("Queue:     1 running"), "{human}");
    // A requested restart reads as one, not as a changed key called "requested".
    assert!(
        human.contains("restart pending (restart requested), waits for idle"),
        "{human}"
    );
    let out = cli(&["status", "--json", "--socket", socket_arg]);
    assert_fits_schema(&out.stdout);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        json["restart_pending"]["reasons"],
        serde_json::json!(["requested"]),
        "{json:#}"
    );

    // Metrics agree.
    let metrics = client.metrics().await.unwrap();
    let scrape = support::control::scrape(&metrics);
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .map(|s| format!("{:?}", s.value))
    };
    assert_eq!(
        value("sd_webui_supervisor_restart_pending").as_deref(),
        Some("Gauge(1.0)")
    );
    assert_eq!(
        value("sd_webui_supervisor_queue_running").as_deref(),
        Some("Gauge(1.0)")
    );

    // A broken config is rejected with its errors, and the daemon keeps serving.
    let good = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        good.replace(&format!("port = {port}"), "port = \"many\""),
    )
    .unwrap();
    let out = cli(&["reload", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("ui.port"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(&config, good).unwrap();

    // Once the job is done the restart happens and wait-idle succeeds.
    let out = cli(&["wait-idle", "--timeout", "90s", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    daemon.terminate(Duration::from_secs(20));
    assert!(!socket.exists(), "the socket outlived the daemon");
    let out = cli(&["status", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(4));
}

/// The unit's user and the policy file for it: the shipped policy as-is when the
/// user `sd-webui-forge` exists, else a copy naming the existing system user
/// `daemon` instead (so the test needs no new user on the host).
fn unit_user(dir: &Path) -> (String, PathBuf) {
    let shipped = repo_root().join("dbus/io.github.sd_webui_supervisor.Supervisor1.conf");
    if nix::unistd::User::from_name("sd-webui-forge")
        .ok()
        .flatten()
        .is_some()
    {
        return ("sd-webui-forge".into(), shipped);
    }
    let copy = dir.join("io.github.sd_webui_supervisor.Supervisor1.conf");
    let text = std::fs::read_to_string(&shipped).unwrap();
    std::fs::write(&copy, text.replace("\"sd-webui-forge\"", "\"daemon\"")).unwrap();
    ("daemon".into(), copy)
}

#[tokio::test]
async fn systemd_unit_serves_dbus_and_the_socket() {
    let unit = "sd-webui-forge-e2e.service";
    let socket = "/run/sd-webui-forge-e2e/control.sock";
    let scene = scene("control-e2e-systemd", Path::new(socket), "system");
    let (user, policy) = unit_user(scene.dir());
    let port = scene.port;
    let data = scene.data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let owner = nix::unistd::User::from_name(&user).unwrap().unwrap();
    nix::unistd::chown(&data, Some(owner.uid), Some(owner.gid)).unwrap();
    let config = scene.write_config();
    let unit_file = scene.path(unit);
    std::fs::write(
        &unit_file,
        format!(
            "[Unit]\nDescription=sd-webui-supervisor control-plane e2e\n\n[Service]\n\
             Type=notify-reload\nNotifyAccess=main\nExecStart={BIN} run --config {}\n\
             User={user}\nGroup={user}\nRuntimeDirectory=sd-webui-forge-e2e\n\
             RuntimeDirectoryMode=0750\nTimeoutStartSec=120\n",
            config.display()
        ),
    )
    .unwrap();

    let Some(sandbox) = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[&policy]) else {
        return;
    };
    sandbox.install(&[&unit_file]);
    let started = sandbox.exec(&["timeout", "150", "systemctl", "start", unit]);
    if !started.status.success() {
        let journal = sandbox.exec(&["journalctl", "-u", unit, "--no-pager", "-n", "50"]);
        panic!(
            "systemctl start failed: {}\n{}",
            text(&started.stderr),
            text(&journal.stdout)
        );
    }

    // The unit's main process owns the bus name.
    let main_pid = sandbox.run(&["systemctl", "show", "-P", "MainPID", unit]);
    let owner_pid = sandbox.run(&[
        "busctl",
        "--system",
        "call",
        "org.freedesktop.DBus",
        "/org/freedesktop/DBus",
        "org.freedesktop.DBus",
        "GetConnectionUnixProcessID",
        "s",
        BUS_NAME,
    ]);
    assert_eq!(owner_pid.trim(), format!("u {}", main_pid.trim()));

    let state = sandbox.run(&[
        "busctl",
        "--system",
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "State",
    ]);
    assert_eq!(state.trim(), "s \"ready\"");
    sandbox.run(&[
        "busctl",
        "--system",
        "call",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "Reload",
    ]);

    // PropertiesChanged when a job starts on the stand-in.
    let rule = format!(
        "type='signal',path='{OBJECT_PATH}',interface='org.freedesktop.DBus.Properties',member='PropertiesChanged'"
    );
    let mut monitor = sandbox.spawn(&["timeout", "60", "dbus-monitor", "--system", &rule]);
    let stdout = monitor.stdout.take().unwrap();
    let seen = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let done = line.contains("QueueRunning");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    start_job(port);
    let lines = tokio::task::spawn_blocking(move || seen.join().unwrap())
        .await
        .unwrap();
    let _ = monitor.kill();
    let _ = monitor.wait();
    assert!(
        lines.iter().any(|l| l.contains("QueueRunning")),
        "no PropertiesChanged with QueueRunning:\n{}",
        lines.join("\n")
    );

    // `status` against a daemon with a pending restart shows the reason and the queue.
    sandbox.run(&[BIN, "restart", "--when-idle", "--socket", socket]);
    let human = sandbox.run(&[BIN, "status", "--socket", socket]);
    assert!(human.contains("Restart:   pending:"), "{human}");
    assert!(human.contains("Queue:     1 running"), "{human}");
    // A requested restart reads as one, not as a changed key called "requested".
    assert!(
        human.contains("restart pending (restart requested), waits for idle"),
        "{human}"
    );
    let json = sandbox.exec(&[BIN, "status", "--json", "--socket", socket]);
    assert_fits_schema(&json.stdout);
    let pending = sandbox.run(&[
        "busctl",
        "--system",
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "RestartPending",
    ]);
    assert_eq!(pending.trim(), "b true");

    // curl over the socket gets Prometheus text.
    let metrics = sandbox.run(&[
        "curl",
        "-sS",
        "--fail",
        "--unix-socket",
        socket,
        "http://localhost/metrics",
    ]);
    assert!(
        support::control::has_metric(&metrics, "sd_webui_supervisor_restart_pending"),
        "{metrics}"
    );

    // Mode 0660, owned by the unit's user.
    let stat = sandbox.run(&["stat", "-c", "%a %U", socket]);
    assert_eq!(stat.trim(), format!("660 {user}"));

    sandbox.run(&["systemctl", "stop", unit]);
    assert!(
        !sandbox.exec(&["test", "-e", socket]).status.success(),
        "socket left behind"
    );
}
