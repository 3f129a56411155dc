//! Issue 12 (hardening), the runtime half, each against the real daemon and the
//! stand-in UI: a port held by another process (item 2), idle connection floods
//! and transient layout failures (3), the API password kept out of argv and logs
//! (4), missing model targets reported (5/8), refresh routes the UI really has
//! (14), stopping a UI that lost a SIGINT (15), and a UI that dies at start because
//! of its environment (17).

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use support::{NotifySocket, Scene, free_port, pid, wait_for, write_script};

const START: Duration = Duration::from_secs(30);

/// `GET path` on the control socket; the body as JSON (or text in `Value::String`).
fn control_get(socket: &Path, path: &str) -> Option<(u16, String)> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}

fn status(scene: &Scene) -> Value {
    let (_, body) = control_get(&scene.dir().join("control.sock"), "/v1/status")
        .expect("status over the control socket");
    serde_json::from_str(&body).expect("status is JSON")
}

fn post(socket: &Path, path: &str) -> Option<u16> {
    let mut s = UnixStream::connect(socket).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A foreign HTTP server on `port` that answers `200 {}` to everything.
struct Foreign {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Foreign {
    fn bind(port: u16) -> Foreign {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the foreign port");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
                        let mut buf = [0u8; 4096];
                        let _ = conn.read(&mut buf);
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Foreign {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------
// Item 2: the UI's port

/// A scene whose UI runs on a pinned private port (behind the front door, which
/// owns ui.port): the port these tests take away from the UI.
fn pinned_ui_port(mut scene: Scene) -> (Scene, u16) {
    let port = free_port();
    scene
        .front
        .insert("ui_port".into(), toml::Value::Integer(i64::from(port)));
    (scene, port)
}

#[test]
fn a_held_port_is_reported_and_the_ui_launched_once_it_is_free() {
    let (scene, ui_port) = pinned_ui_port(Scene::new("port-held"));
    let foreign = Foreign::bind(ui_port);
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();

    let line = notify.wait_status("waiting: ", START);
    let me = std::process::id();
    assert!(
        line.starts_with(&format!(
            "waiting: port {ui_port} is held by another process (pid {me}",
        )),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        record.starts().is_empty(),
        "no UI launched onto a held port"
    );
    assert!(
        !notify.statuses().iter().any(|s| s.starts_with("ready")),
        "never ready: {:?}",
        notify.statuses()
    );

    drop(foreign);
    record.wait_starts(1, START);
    notify.wait_status("ready; idle", START);
}

#[test]
fn a_foreign_listener_that_answers_never_makes_the_ui_ready() {
    let (scene, ui_port) = pinned_ui_port(Scene::new("port-foreign"));
    let scene = scene.env("STANDIN_START_DELAY", 6);
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();
    record.wait_starts(1, START);
    // Launched, still "importing torch": another program takes the port and answers.
    let _foreign = Foreign::bind(ui_port);
    std::thread::sleep(Duration::from_secs(4));
    let statuses = notify.statuses();
    assert!(
        !statuses.iter().any(|s| s.starts_with("ready")),
        "the foreign listener's answers made the UI ready: {statuses:?}"
    );
    assert!(
        !notify.all().iter().any(|n| n.is_ready()),
        "READY=1 sent for a foreign listener"
    );
    // The stand-in then cannot bind and exits; the next start waits for the port.
    notify.wait_status("waiting: port ", START);
}

// ---------------------------------------------------------------------------------
// Item 3: idle connections, fd limits, transient failures

/// Raises this process's soft fd limit to its hard limit (the flood needs 2,000).
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a struct we own.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    lim.rlim_cur
}

fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn two_thousand_idle_connections_leave_status_and_relaunch_working() {
    let limit = raise_own_nofile();
    assert!(
        limit >= 4096,
        "the test needs a hard fd limit ≥ 4096, has {limit}"
    );
    let mut scene = Scene::new("flood");
    let token = scene.dir().join("token");
    fs::write(&token, "s3cret-token\n").unwrap();
    let tcp_port = free_port();
    scene.control_extra.insert(
        "http_listen".into(),
        toml::Value::String(format!("127.0.0.1:{tcp_port}")),
    );
    scene.control_extra.insert(
        "token_file".into(),
        toml::Value::String(token.display().to_string()),
    );
    // The daemon starts with the usual soft limit of 1024 (systemd's default).
    let wrapper = scene.dir().join("daemon-1024.sh");
    write_script(
        &wrapper,
        &format!(
            "ulimit -Sn 1024\nexec {} \"$@\"",
            support::daemon_bin().display()
        ),
    );
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().binary(&wrapper).notify(&notify).spawn();
    let record = scene.record();
    notify.wait_status("ready; idle", START);
    let first = record.wait_starts(1, START).remove(0);

    let before = open_fds(daemon.pid());
    let began = Instant::now();
    let mut held = Vec::new();
    for _ in 0..2000 {
        if let Ok(c) = TcpStream::connect_timeout(
            &format!("127.0.0.1:{tcp_port}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            held.push(c);
        }
    }
    let connect_took = began.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let during = open_fds(daemon.pid());

    let asked = Instant::now();
    let answer = control_get(&scene.dir().join("control.sock"), "/v1/status");
    let status_took = asked.elapsed();
    let (code, _) = answer.expect("status answers during the flood");
    assert_eq!(code, 200);

    let mark = notify.len();
    let killed = Instant::now();
    kill(Pid::from_raw(pid(&first)), Signal::SIGKILL).unwrap();
    notify.wait_status_from(mark, "ready; idle", START);
    let relaunch_took = killed.elapsed();
    assert_eq!(record.starts().len(), 2, "relaunched once");

    println!(
        "flood: {} of 2000 idle connections open in {connect_took:.2?}; daemon fds {before} before, {during} during \
         (soft limit 1024 at exec); status answered in {status_took:.2?}; UI killed → ready again in {relaunch_took:.2?}",
        held.len()
    );
    drop(held);
}

#[test]
fn a_layout_that_fails_for_lack_of_space_is_retried() {
    // A tmpfs with very few inodes: the layout's mkdirs fail with ENOSPC until the
    // filler files are removed. Needs root (mount); skipped otherwise.
    let scene = Scene::new("enospc");
    let data = scene.data_dir();
    fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,nr_inodes=40", "tmpfs"])
        .arg(&data)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(&data);
    let filler = data.join("filler");
    fs::create_dir(&filler).unwrap();
    for i in 0.. {
        if fs::write(filler.join(i.to_string()), "").is_err() {
            break;
        }
    }
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let line = notify.wait_status("waiting: ", START);
    assert!(
        line.contains("No space left on device") && line.contains("retrying in"),
        "{line}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !notify.statuses().iter().any(|s| s.starts_with("failed")),
        "{:?}",
        notify.statuses()
    );
    fs::remove_dir_all(&filler).unwrap();
    notify.wait_status("ready; idle", Duration::from_secs(60));
}

// ---------------------------------------------------------------------------------
// Item 4: the API password

#[test]
fn the_api_password_is_in_neither_argv_nor_the_log() {
    const PASSWORD: &str = "Pw-9f3c1e77";
    let mut scene = Scene::new("secret").env("STANDIN_PRINT_ENV", 1);
    let auth = scene.dir().join("api-auth");
    fs::write(&auth, format!("sup:{PASSWORD}\n")).unwrap();
    scene.ui_extra.insert(
        "api_auth_file".into(),
        toml::Value::String(auth.display().to_string()),
    );
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();
    // Ready needs /sdapi/v1/progress with the credentials: they reached the UI.
    notify.wait_status("ready; idle", START);
    let start = record.wait_starts(1, START).remove(0);
    let cmdline = fs::read(format!("/proc/{}/cmdline", pid(&start))).unwrap();
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(PASSWORD),
        "password in /proc/PID/cmdline: {}",
        String::from_utf8_lossy(&cmdline)
    );
    wait_for("the UI's launch line in the log", START, || {
        let log = daemon.log();
        log.contains("Launching Web UI with arguments")
            .then_some(log)
    });
    std::thread::sleep(Duration::from_millis(500));
    let log = daemon.log();
    assert!(
        !log.contains(PASSWORD),
        "password in the daemon's output:\n{log}"
    );
    let launch = log
        .lines()
        .find(|l| l.contains("Launching Web UI with arguments"))
        .unwrap();
    assert!(
        launch.contains("--api-auth sup:***") && launch.starts_with("ui["),
        "the UI's line, tagged and redacted: {launch}"
    );
    assert!(
        log.lines()
            .any(|l| l.starts_with("ui[") && l.contains("COMMANDLINE_ARGS=")),
        "the stand-in printed its environment:\n{log}"
    );
}

// ---------------------------------------------------------------------------------
// Item 8: missing model targets

#[test]
fn a_missing_model_target_is_reported_by_the_daemon() {
    let scene = Scene::new("missing");
    let config = scene.write_config();
    let present = scene.dir().join("present.safetensors");
    fs::write(&present, "x").unwrap();
    let gone = scene.dir().join("gone.safetensors");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[models.checkpoints]\n\"a.safetensors\" = \"{}\"\n\"b.safetensors\" = \"{}\"\n",
        present.display(),
        gone.display()
    ));
    let notify = NotifySocket::bind(scene.dir());
    let daemon = {
        let b = scene.daemon();
        fs::write(&config, &text).unwrap();
        b.notify(&notify).spawn()
    };
    let line = notify.wait_status("ready; idle", START);
    assert!(line.ends_with("; 1 missing model target"), "{line}");
    let s = status(&scene);
    let missing = s["missing_targets"].as_array().expect("missing_targets");
    assert_eq!(missing.len(), 1, "{s:#}");
    assert!(
        missing[0]
            .as_str()
            .unwrap()
            .contains(&gone.display().to_string()),
        "{missing:?}"
    );
    let (_, metrics) = control_get(&scene.dir().join("control.sock"), "/metrics").unwrap();
    assert!(
        metrics.contains("sd_webui_supervisor_missing_model_targets 1"),
        "{metrics}"
    );
    // Logged once, not on every relayout.
    assert_eq!(
        post(&scene.dir().join("control.sock"), "/v1/reload"),
        Some(200)
    );
    std::thread::sleep(Duration::from_millis(500));
    let warnings = daemon
        .log()
        .lines()
        .filter(|l| l.contains("model target missing"))
        .count();
    assert_eq!(warnings, 1, "{}", daemon.log());
}

// ---------------------------------------------------------------------------------
// Item 14: refresh routes

#[test]
fn only_the_refresh_routes_the_ui_has_are_called_and_failures_are_soft() {
    let scene = Scene::new("refresh");
    let config = scene.write_config();
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();
    notify.wait_status("ready; idle", START);
    let base = fs::read_to_string(&config).unwrap();
    for round in 0..2 {
        let (l, e, c) = (
            scene.dir().join(format!("l{round}.safetensors")),
            scene.dir().join(format!("e{round}.pt")),
            scene.dir().join(format!("c{round}.safetensors")),
        );
        for f in [&l, &e, &c] {
            fs::write(f, "x").unwrap();
        }
        let text = format!(
            "{base}\n[models.loras]\n\"l.safetensors\" = \"{}\"\n[models.embeddings]\n\"e.pt\" = \"{}\"\n[models.checkpoints]\n\"c.safetensors\" = \"{}\"\n",
            l.display(),
            e.display(),
            c.display()
        );
        fs::write(&config, text).unwrap();
        assert_eq!(
            post(&scene.dir().join("control.sock"), "/v1/reload"),
            Some(200)
        );
        let n = round + 1;
        wait_for("refresh-checkpoints", START, || {
            (record
                .of("request")
                .iter()
                .filter(|r| r["path"] == "/sdapi/v1/refresh-checkpoints")
                .count()
                >= n)
                .then_some(())
        });
        wait_for("refresh-embeddings", START, || {
            (record
                .of("request")
                .iter()
                .filter(|r| r["path"] == "/sdapi/v1/refresh-embeddings")
                .count()
                >= n)
                .then_some(())
        });
    }
    std::thread::sleep(Duration::from_millis(500));
    let requests = record.of("request");
    assert!(
        !requests
            .iter()
            .any(|r| r["path"] == "/sdapi/v1/refresh-loras"),
        "a route the UI does not have was called"
    );
    let log = daemon.log();
    let warns: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("refresh"))
        .collect();
    assert!(warns.is_empty(), "a warning per reload: {warns:#?}");
    let s = status(&scene);
    assert!(
        s["refresh_failed"]
            .as_str()
            .is_some_and(|r| r.contains("refresh-embeddings") && r.contains("500")),
        "{s:#}"
    );
    let (_, metrics) = control_get(&scene.dir().join("control.sock"), "/metrics").unwrap();
    assert!(
        metrics.contains("sd_webui_supervisor_refresh_failures_total 2"),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------
// Item 15: stopping

#[test]
fn a_ui_that_is_not_ready_is_stopped_without_waiting_the_stop_timeout() {
    let mut scene = Scene::new("stop-starting")
        .env("STANDIN_START_DELAY", 60)
        .env("STANDIN_IGNORE_SIGINT", 1);
    scene.stop_timeout = "60s".into();
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();
    record.wait_starts(1, START);
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(20));
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "a UI that was not ready took {took:?} to stop (stop_timeout 60s)"
    );
    println!("stopping a UI that was not ready took {took:.2?}");
}

#[test]
fn a_lost_sigint_is_sent_again_during_the_grace() {
    let mut scene = Scene::new("stop-lost").env("STANDIN_LOSE_FIRST_SIGINT", 1);
    scene.stop_timeout = "60s".into();
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();
    notify.wait_status("ready; idle", START);
    let asked = Instant::now();
    daemon.signal(Signal::SIGTERM);
    daemon.wait_exit(Duration::from_secs(70));
    let took = asked.elapsed();
    let signals = record.of("signal");
    assert!(signals.len() >= 2, "{signals:?}");
    let exit = record.of("exit");
    assert_eq!(exit.len(), 1, "exited by itself, not SIGKILLed: {exit:?}");
    assert_eq!(exit[0]["reason"], "SIGINT");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

// ---------------------------------------------------------------------------------
// Item 17: the environment

#[test]
fn a_ui_that_dies_at_start_for_lack_of_git_says_so_in_the_status() {
    let scene = Scene::new("nogit").env("PATH", "/nonexistent");
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let line = notify.wait_status("backoff: ", START);
    assert!(
        line.contains("exit 1") && line.contains("Bad git executable"),
        "{line}"
    );
}

#[test]
fn an_idle_unauthenticated_connection_is_closed_and_the_cap_holds() {
    let mut scene = Scene::new("idle-conn");
    let token = scene.dir().join("token");
    fs::write(&token, "t0ken\n").unwrap();
    let tcp_port = free_port();
    scene.control_extra.insert(
        "http_listen".into(),
        toml::Value::String(format!("127.0.0.1:{tcp_port}")),
    );
    scene.control_extra.insert(
        "token_file".into(),
        toml::Value::String(token.display().to_string()),
    );
    scene
        .control_extra
        .insert("max_connections".into(), toml::Value::Integer(4));
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    notify.wait_status("ready; idle", START);
    let addr = format!("127.0.0.1:{tcp_port}");
    // Four idle connections fill the cap; a fifth is closed at once.
    let idle: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut fifth = TcpStream::connect(&addr).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        fifth.read(&mut buf).ok(),
        Some(0),
        "over the cap: closed at once"
    );
    // The idle ones are closed after the header timeout (10 s).
    let began = Instant::now();
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        assert_eq!(
            c.read(&mut buf).ok(),
            Some(0),
            "an idle connection is closed"
        );
    }
    let took = began.elapsed();
    assert!(took < Duration::from_secs(15), "closed after {took:?}");
    // Slots are free again: an authenticated request is served.
    let mut c = TcpStream::connect(&addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
