//! End to end: the real daemon (`sd-webui-supervisor run --config FILE`) supervising
//! the stand-in UI (`examples/stand_in_ui.py`), driven through the control plane.
//!
//! `daemon_*` needs python3 only. `systemd_*` also needs root and
//! `../shared/tools/systemd-sandbox` (systemd >= 254, `prepare` done; or set
//! `SYSTEMD_SANDBOX`): without them it is skipped with a message, except under
//! `CI=true`, where a missing precondition is a failure. All files live under
//! `CARGO_TARGET_TMPDIR`, because units must not use /tmp.

mod control_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sd_webui_supervisor::control::client::Client;
use sd_webui_supervisor::control::dbus::{BUS_NAME, INTERFACE, OBJECT_PATH};
use sd_webui_supervisor::supervisor::protocol::{Phase, Snapshot};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");
const SCHEMA: &str = include_str!("../docs/status.schema.json");
/// How long a stand-in job holds the queue: long enough to look at it.
const JOB_SECONDS: u64 = 25;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A fresh directory under the target dir, readable by other users (a unit's user).
fn work_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("control-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config running the stand-in (forge) on `port`.
fn config_text(dir: &Path, port: u16, socket: &Path, dbus: &str) -> String {
    format!(
        r#"[ui]
flavor = "forge"
command = ["{python}", "{stand_in}"]
port = {port}
environment = {{ STANDIN_JOB_SECONDS = "{JOB_SECONDS}", STANDIN_RECORD = "{data}/record.jsonl", PYTHONUNBUFFERED = "1" }}
startup_timeout = "1m"
stop_timeout = "10s"

[data]
dir = "{data}"

[restart]
policy = "when-idle"
idle_grace = "1s"
poll_interval = "1s"

[control]
socket = "{socket}"
dbus = "{dbus}"
"#,
        python = python(),
        stand_in = repo().join("examples/stand_in_ui.py").display(),
        data = dir.join("data").display(),
        socket = socket.display(),
    )
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
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    let doc: Value = serde_json::from_slice(json).unwrap();
    let problems = control_support::schema::violations(&schema, &doc);
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The daemon as a child process, stopped with SIGTERM on drop.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_control_plane_end_to_end() {
    let dir = work_dir();
    let port = free_port();
    let socket = dir.path().join("run/control.sock");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, config_text(dir.path(), port, &socket, "off")).unwrap();
    let config_arg = config.to_str().unwrap();
    let socket_arg = socket.to_str().unwrap();
    let daemon = Daemon(
        Command::new(BIN)
            .args(["run", "--config", config_arg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
    let out = cli(&["status", "--json", "--socket", socket_arg]);
    assert_fits_schema(&out.stdout);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !json["restart_pending"]["reasons"]
            .as_array()
            .unwrap()
            .is_empty(),
        "{json:#}"
    );

    // Metrics agree.
    let metrics = client.metrics().await.unwrap();
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
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

    drop(daemon);
    assert!(!socket.exists(), "the socket outlived the daemon");
    let out = cli(&["status", "--socket", socket_arg]);
    assert_eq!(out.status.code(), Some(4));
}

/// The sandbox tool, or `None` (test skipped) when it or root is missing outside CI.
fn sandbox_tool() -> Option<PathBuf> {
    let tool = std::env::var_os("SYSTEMD_SANDBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/tools/systemd-sandbox"));
    let missing = if !nix::unistd::geteuid().is_root() {
        "systemd-sandbox needs root".to_owned()
    } else if !tool.exists() {
        format!(
            "systemd-sandbox not found at {} (set SYSTEMD_SANDBOX)",
            tool.display()
        )
    } else {
        return Some(tool);
    };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{missing}");
    eprintln!("skipped: {missing}");
    None
}

/// `systemd-sandbox` around one test: started with the bus policy, stopped on drop.
struct Sandbox {
    tool: PathBuf,
    state: PathBuf,
}

impl Sandbox {
    fn start(tool: PathBuf, state: &Path, policy: &Path, host_dirs: &[&Path]) -> Sandbox {
        let out = Command::new(&tool)
            .arg("start")
            .arg(state)
            .args(host_dirs)
            .env("SANDBOX_DBUS_POLICY", policy)
            .output()
            .unwrap();
        assert!(out.status.success(), "sandbox start: {}", text(&out.stderr));
        Sandbox {
            tool,
            state: state.to_owned(),
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new(&self.tool)
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(&self.tool)
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(&self.tool)
            .arg("stop")
            .arg(&self.state)
            .output();
    }
}

/// The unit's user and the policy file for it: the shipped policy as-is when the
/// user `sd-webui-forge` exists, else a copy naming the existing system user
/// `daemon` instead (so the test needs no new user on the host).
fn unit_user(dir: &Path) -> (String, PathBuf) {
    let shipped = repo().join("dbus/io.github.sd_webui_supervisor.Supervisor1.conf");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_unit_serves_dbus_and_the_socket() {
    let Some(tool) = sandbox_tool() else {
        return;
    };
    let dir = work_dir();
    let (user, policy) = unit_user(dir.path());
    let port = free_port();
    let unit = "sd-webui-forge-e2e.service";
    let socket = "/run/sd-webui-forge-e2e/control.sock";
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let owner = nix::unistd::User::from_name(&user).unwrap().unwrap();
    nix::unistd::chown(&data, Some(owner.uid), Some(owner.gid)).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), port, Path::new(socket), "system"),
    )
    .unwrap();
    let unit_file = dir.path().join(unit);
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

    let sandbox = Sandbox::start(tool, &dir.path().join("sandbox"), &policy, &[dir.path()]);
    let install = Command::new(&sandbox.tool)
        .arg("install")
        .arg(&sandbox.state)
        .arg(&unit_file)
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", text(&install.stderr));
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
    let main_pid = sandbox.ok(&["systemctl", "show", "-P", "MainPID", unit]);
    let owner_pid = sandbox.ok(&[
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

    let state = sandbox.ok(&[
        "busctl",
        "--system",
        "get-property",
        BUS_NAME,
        OBJECT_PATH,
        INTERFACE,
        "State",
    ]);
    assert_eq!(state.trim(), "s \"ready\"");
    sandbox.ok(&[
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
    sandbox.ok(&[BIN, "restart", "--when-idle", "--socket", socket]);
    let human = sandbox.ok(&[BIN, "status", "--socket", socket]);
    assert!(human.contains("Restart:   pending:"), "{human}");
    assert!(human.contains("Queue:     1 running"), "{human}");
    let json = sandbox.exec(&[BIN, "status", "--json", "--socket", socket]);
    assert_fits_schema(&json.stdout);
    let pending = sandbox.ok(&[
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
    let metrics = sandbox.ok(&[
        "curl",
        "-sS",
        "--fail",
        "--unix-socket",
        socket,
        "http://localhost/metrics",
    ]);
    let scrape =
        prometheus_parse::Scrape::parse(metrics.lines().map(|l| Ok(l.to_owned()))).unwrap();
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "sd_webui_supervisor_restart_pending")
    );

    // Mode 0660, owned by the unit's user.
    let stat = sandbox.ok(&["stat", "-c", "%a %U", socket]);
    assert_eq!(stat.trim(), format!("660 {user}"));

    sandbox.ok(&["systemctl", "stop", unit]);
    assert!(
        !sandbox.exec(&["test", "-e", socket]).status.success(),
        "socket left behind"
    );
}
