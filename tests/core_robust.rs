//! The core stays up whatever a valid config asks of its clock, counts a startup
//! timeout as such, and takes a reload's bytes as strictly as `check-config`
//! (issue 10; issue 12 items 5 and 9). Each runs the real daemon and stand-in.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::{Daemon, NotifySocket, Scene, daemon_bin, wait_for};

const START: Duration = Duration::from_secs(30);

/// `status --json` through the control socket, if the daemon answers.
fn status(scene: &Scene) -> Option<Value> {
    let out = Command::new(daemon_bin())
        .args(["status", "--json", "--socket"])
        .arg(scene.dir().join("control.sock"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// The scene's config with extra `[restart]` keys (TOML lines).
fn with_restart_keys(scene: &Scene, lines: &str) -> String {
    scene
        .config_toml()
        .replacen("[restart]\n", &format!("[restart]\n{lines}\n"), 1)
}

/// Starts the daemon and waits until the UI is ready.
fn ready_daemon(scene: &Scene, notify: &NotifySocket) -> Daemon {
    let daemon = scene.daemon().notify(notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    notify.wait_status("ready; idle", START);
    daemon
}

/// Asserts the daemon still runs and answers, with the stand-in started `starts` times.
fn assert_alive(scene: &Scene, daemon: &mut Daemon, starts: usize) {
    assert_eq!(daemon.try_exit(), None, "the daemon died");
    wait_for("a ready status", Duration::from_secs(20), || {
        status(scene).filter(|s| s["state"] == "ready")
    });
    assert_eq!(scene.record().starts().len(), starts, "UI starts");
}

#[test]
fn a_poll_interval_beyond_the_clock_kills_nothing() {
    let scene = Scene::new("absurd-poll");
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = ready_daemon(&scene, &notify);
    std::fs::write(
        scene.config_path(),
        with_restart_keys(&scene, "poll_interval = \"500000000000y\""),
    )
    .expect("write the config");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    // The next queue probe is scheduled one poll_interval after the current one.
    std::thread::sleep(Duration::from_secs(4));
    assert_alive(&scene, &mut daemon, 1);
}

#[test]
fn the_longest_deadline_still_restarts_when_idle() {
    // Deadlines beyond the clock are rejected by check-config now; the core's
    // own arithmetic saturates too (unit tests in supervisor/timers.rs and
    // supervisor/pending.rs use Duration::MAX).
    let mut scene = Scene::new("absurd-deadline");
    scene.policy = "when-idle".into();
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = ready_daemon(&scene, &notify);
    scene.extra_args = vec!["--cuda-malloc".into()];
    std::fs::write(
        scene.config_path(),
        with_restart_keys(
            &scene,
            "idle_grace = \"1s\"\ndeadline = \"30d\"\npoll_interval = \"200ms\"",
        ),
    )
    .expect("write the config");
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    scene.record().wait_starts(2, START);
    assert_alive(&scene, &mut daemon, 2);
}

#[test]
fn a_startup_timeout_is_counted_as_one() {
    let mut scene = Scene::new("startup-timeout-count").env("STANDIN_START_DELAY", 30);
    scene.startup_timeout = "1s".into();
    let _daemon = scene.daemon().spawn();
    let s = wait_for("a counted restart", START, || {
        status(&scene).filter(|s| {
            s["restarts"]
                .as_object()
                .is_some_and(|r| r.values().any(|n| n.as_u64().unwrap_or(0) > 0))
        })
    });
    assert_eq!(
        s["restarts"]["startup-timeout"], 1,
        "the restart after a startup timeout is counted under its own reason: {s}"
    );
    assert_eq!(s["restarts"].get("crash"), None, "{s}");
}

#[test]
fn a_reload_of_invalid_utf8_is_rejected_not_read_lossily() {
    let scene = Scene::new("reload-utf8");
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = ready_daemon(&scene, &notify);
    // Valid TOML once decoded lossily (the bad byte sits in a comment), invalid UTF-8.
    let mut bytes = scene.config_toml().into_bytes();
    bytes.extend_from_slice(b"# caf\xe9\n");
    std::fs::write(scene.config_path(), &bytes).expect("write the config");
    let checked = Command::new(daemon_bin())
        .args(["check-config", "--config"])
        .arg(scene.config_path())
        .output()
        .expect("run check-config");
    assert!(
        !checked.status.success(),
        "check-config accepted invalid UTF-8"
    );
    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    let s = wait_for("the reload's outcome", Duration::from_secs(10), || {
        status(&scene).filter(|s| !s["last_reload"].is_null())
    });
    assert_eq!(s["last_reload"]["result"], "rejected", "{s}");
    assert_alive(&scene, &mut daemon, 1);
}

#[test]
fn wait_idle_waits_for_a_pending_restart_to_finish() {
    let mut scene = Scene::new("wait-idle-pending");
    scene.policy = "when-idle".into();
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = ready_daemon(&scene, &notify);
    scene.extra_args = vec!["--cuda-malloc".into()];
    std::fs::write(
        scene.config_path(),
        with_restart_keys(&scene, "idle_grace = \"2s\"\npoll_interval = \"200ms\""),
    )
    .expect("write the config");
    let reload = Command::new(daemon_bin())
        .args(["reload", "--socket"])
        .arg(scene.dir().join("control.sock"))
        .output()
        .expect("run reload");
    assert!(reload.status.success(), "reload: {reload:?}");
    let waited = Command::new(daemon_bin())
        .args(["wait-idle", "--timeout", "30s", "--socket"])
        .arg(scene.dir().join("control.sock"))
        .output()
        .expect("run wait-idle");
    assert!(waited.status.success(), "wait-idle: {waited:?}");
    assert_eq!(
        scene.record().starts().len(),
        2,
        "wait-idle returned before the pending restart was done"
    );
}

/// The POSTs of the UI's options the stand-in answered.
fn option_posts(scene: &Scene) -> usize {
    scene
        .record()
        .of("request")
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/sdapi/v1/options")
        .count()
}

#[test]
fn two_and_two_point_zero_are_one_setting_at_start_reload_and_in_config_json() {
    let scene = Scene::new("settings-2-2.0");
    let write = |value: &str| {
        let text = format!(
            "{}\n[settings]\njpeg_quality = {value}\n",
            scene.config_toml()
        );
        std::fs::write(scene.config_path(), text).expect("write the config");
    };
    write("2");
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify);
    write("2");
    let mut daemon = daemon.spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    notify.wait_status("ready; idle", START);
    let settings_file = scene.data_dir().join("config.json");
    let before = std::fs::read(&settings_file).expect("config.json written at start");
    // Give the start's settings sync time to run: it must find nothing to send.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(option_posts(&scene), 0, "2 was sent to a UI that holds 2");

    write("2.0");
    let reload = Command::new(daemon_bin())
        .args(["reload", "--socket"])
        .arg(scene.dir().join("control.sock"))
        .output()
        .expect("run reload");
    assert!(reload.status.success(), "reload: {reload:?}");
    // The watcher may have reloaded first: no reload of either kind may have
    // found a change.
    let s = status(&scene).expect("status");
    assert_eq!(s["reloads"].get("applied"), None, "2 → 2.0 applied: {s}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(option_posts(&scene), 0, "2.0 was sent to a UI that holds 2");
    assert_eq!(
        std::fs::read(&settings_file).expect("config.json"),
        before,
        "config.json rewritten for 2 → 2.0"
    );
    assert_alive(&scene, &mut daemon, 1);
}
