//! The sleep inhibitor (docs/design.md#the-sleep-inhibitor, issue "GPU
//! citizenship and health").
//!
//! - Against a real systemd-logind, under a real systemd (PID 1 in the
//!   project's sandbox, `scripts/systemd-sandbox`): while a job runs, logind
//!   lists the supervisor's `sleep` lock in `block` mode with the job count as
//!   its why (renewed when the count changes), its descriptor close-on-exec;
//!   once idle it is gone; `gpu.inhibit_sleep = false` (by a reload) takes none
//!   while a job runs, and turning it on again by a reload does; a
//!   self-upgrade in the middle of a job hands the lock over: the new binary
//!   holds the very lock the old one took (same logind FIFO, never released);
//!   `systemctl stop` in the middle of a job lets go; a user logind refuses (no polkit)
//!   gets one warning for many jobs, which run on. Skipped with the reason where the
//!   sandbox cannot boot (not root, systemd < 254), except under `CI=true`.
//! - Without a system bus (containers, CI): the daemon runs its jobs as
//!   always, says once at `info` that it does not inhibit sleep, and the
//!   status says `"sleep_inhibited": null`.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::control::status_at;
use support::systemd::{InhibitorLock, Sandbox};
use support::{Scenario, Scene, txt2img, wait_for, wait_for_with};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The inhibitor's name in logind's list.
const WHO: &str = "sd-webui-supervisor";
/// The line a machine without logind gets, once.
const NO_LOGIND_LINE: &str = "not inhibiting sleep while jobs run";

/// The supervisor's locks among logind's.
fn ours(sandbox: &Sandbox) -> Vec<InhibitorLock> {
    sandbox
        .inhibitors()
        .into_iter()
        .filter(|l| l.who == WHO)
        .collect()
}

/// Waits until the supervisor holds exactly one lock, with `why`.
fn wait_lock(sandbox: &Sandbox, why: &str) -> InhibitorLock {
    wait_for_with(
        || {
            format!(
                "one lock {why:?} by {WHO}; logind lists {:?}",
                sandbox.inhibitors()
            )
        },
        SECS(15),
        || match ours(sandbox).as_slice() {
            [one] if one.why == why => Some(one.clone()),
            _ => None,
        },
    )
}

/// Waits until the supervisor holds no lock.
fn wait_no_lock(sandbox: &Sandbox, what: &str) {
    wait_for_with(
        || {
            format!(
                "no lock by {WHO} ({what}); logind lists {:?}",
                sandbox.inhibitors()
            )
        },
        SECS(15),
        || ours(sandbox).is_empty().then_some(()),
    );
}

/// Waits until `status --json` says `field` is `want`.
fn wait_status(socket: &Path, field: &str, want: Value) -> Value {
    let mut last = Value::Null;
    poll(SECS(15), || {
        last = status_at(socket);
        (last[field] == want).then_some(())
    })
    .unwrap_or_else(|| panic!("status {field} never became {want}; last status:\n{last:#}"));
    last
}

fn poll(timeout: Duration, f: impl FnMut() -> Option<()>) -> Option<()> {
    support::poll_until(timeout, f)
}

/// A `Type=notify-reload` unit for the scene's config, as root (logind lets
/// root take a block lock without polkit) unless `user` says.
fn write_unit(scene: &Scene, name: &str, user: Option<&str>) -> PathBuf {
    let config = scene.write_config();
    let unit = scene.dir().join(name);
    let user = user.map(|u| format!("User={u}\n")).unwrap_or_default();
    let text = format!(
        "[Unit]\nDescription=sd-webui-supervisor sleep inhibitor test\n\n\
         [Service]\nType=notify-reload\nNotifyAccess=main\n{user}\
         ExecStart={bin} run --config {config}\n\
         Environment=RUST_LOG=info NO_COLOR=1\n\
         KillMode=mixed\nTimeoutStartSec=60\nTimeoutStopSec=30\n",
        bin = support::daemon_bin().display(),
        config = config.display(),
    );
    std::fs::write(&unit, text).expect("write the unit");
    unit
}

/// How many lines of `text` contain `needle`.
fn count(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// The open flags of `pid`'s descriptor that refers to logind's lock (a FIFO
/// under /run/systemd/inhibit/), from /proc inside the sandbox.
fn lock_fd_flags(sandbox: &Sandbox, pid: u64) -> Vec<u32> {
    let script = format!(
        "for fd in /proc/{pid}/fd/*; do case $(readlink \"$fd\") in /run/systemd/inhibit/*) \
         sed -n 's/^flags:[[:space:]]*//p' /proc/{pid}/fdinfo/${{fd##*/}};; esac; done"
    );
    sandbox
        .run(&["sh", "-c", &script])
        .lines()
        .filter_map(|l| u32::from_str_radix(l.trim(), 8).ok())
        .collect()
}

/// The logind lock FIFOs (`/run/systemd/inhibit/N.ref`, N the lock's id) that
/// `pid` holds open, from /proc inside the sandbox.
fn lock_fd_paths(sandbox: &Sandbox, pid: u64) -> Vec<String> {
    let script = format!(
        "for fd in /proc/{pid}/fd/*; do l=$(readlink \"$fd\"); \
         case $l in /run/systemd/inhibit/*) echo \"$l\";; esac; done"
    );
    sandbox
        .run(&["sh", "-c", &script])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// A systemd sandbox with logind running and `unit` (from `file`) started;
/// `None` (skipped, with the reason) where the machine cannot run one.
fn sandbox_with_logind(scene: &Scene, file: &std::path::Path, unit: &str) -> Option<Sandbox> {
    let sandbox = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[])?;
    if let Err(why) = sandbox.start_logind() {
        support::skip(&why);
        return None;
    }
    sandbox.install(&[file]);
    sandbox.run(&["systemctl", "start", unit]);
    Some(sandbox)
}

#[test]
fn systemd_logind_lists_the_lock_while_jobs_run_and_a_reload_switches_it() {
    let mut scene = Scene::in_target_dir("inhibit-logind");
    // Probe the queue often: a job shows within 200 ms.
    scene.poll_interval = Some("200ms".into());
    let unit = "sdws-test-inhibit.service";
    let file = write_unit(&scene, unit, None);
    let Some(sandbox) = sandbox_with_logind(&scene, &file, unit) else {
        return;
    };
    let socket = scene.socket.clone();
    let main: u64 = sandbox.property(unit, "MainPID").parse().expect("MainPID");

    // Idle: logind is there, no lock is held.
    wait_status(&socket, "sleep_inhibited", Value::Bool(false));
    assert!(ours(&sandbox).is_empty(), "{:?}", sandbox.inhibitors());

    // (a) A job runs: logind lists the supervisor's sleep block lock.
    let first = txt2img(scene.port, 6.0);
    let lock = wait_lock(&sandbox, "1 generation job(s) running");
    assert_eq!(
        (lock.what.as_str(), lock.mode.as_str(), lock.uid, lock.pid),
        ("sleep", "block", 0, main),
        "{lock:?}"
    );
    let listed = sandbox.run(&["systemd-inhibit", "--list", "--no-pager"]);
    eprintln!("systemd-inhibit --list while a job runs:\n{listed}");
    assert!(
        listed.lines().any(|l| l.contains(WHO)
            && l.contains("1 generation job(s) running")
            && l.contains("block")),
        "{listed}"
    );
    wait_status(&socket, "sleep_inhibited", Value::Bool(true));
    // Its descriptor is close-on-exec: nothing the supervisor starts keeps it.
    let flags = lock_fd_flags(&sandbox, main);
    assert_eq!(
        flags.len(),
        1,
        "one lock descriptor in the supervisor: {flags:?}"
    );
    assert_ne!(flags[0] & libc::O_CLOEXEC as u32, 0, "flags {:o}", flags[0]);

    // A second job waits behind the first: the lock is renewed with the count,
    // then back to one when the first is done.
    let second = txt2img(scene.port, 3.0);
    wait_lock(&sandbox, "2 generation job(s) running");
    assert_eq!(first.join().expect("first job"), Ok(200));
    wait_lock(&sandbox, "1 generation job(s) running");
    assert_eq!(second.join().expect("second job"), Ok(200));

    // (b) Idle again: the lock is gone.
    wait_no_lock(&sandbox, "the queue is idle");
    wait_status(&socket, "sleep_inhibited", Value::Bool(false));

    // (c) gpu.inhibit_sleep = false, by a reload: a job runs, no lock.
    scene.gpu.insert("inhibit_sleep".into(), false.into());
    scene.write_config();
    sandbox.run(&["systemctl", "reload", unit]);
    wait_status(&socket, "sleep_inhibited", Value::Null);
    let job = txt2img(scene.port, 3.0);
    let busy = wait_status(
        &socket,
        "queue",
        serde_json::json!({"running": 1, "pending": 0}),
    );
    assert_eq!(busy["sleep_inhibited"], Value::Null, "{busy:#}");
    while !job.is_finished() {
        assert!(ours(&sandbox).is_empty(), "{:?}", sandbox.inhibitors());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(job.join().expect("job"), Ok(200));

    // Back on by a reload, live: the next job takes the lock again.
    scene.gpu.clear();
    scene.write_config();
    sandbox.run(&["systemctl", "reload", unit]);
    wait_status(&socket, "sleep_inhibited", Value::Bool(false));
    // Straight to the UI's private port, past the front door: a handoff waits
    // for the door's own requests to finish (tests/front_door.rs).
    let listening = scene.record().of("listening");
    let ui_port = listening[0]["port"].as_u64().expect("the UI's port");
    let last = txt2img(u16::try_from(ui_port).expect("a port"), 30.0);
    wait_lock(&sandbox, "1 generation job(s) running");

    // A self-upgrade in the middle of the job: the lock travels to the new
    // binary (never closed, so the machine cannot sleep between the two): the
    // same logind lock afterwards, no new one taken, none closed.
    let fifo_before = lock_fd_paths(&sandbox, main);
    assert_eq!(fifo_before.len(), 1, "one lock FIFO: {fifo_before:?}");
    let journal = sandbox.journal(unit);
    let taken_before = count(&journal, "holding off sleep (logind inhibitor lock)");
    let closed_before = count(&journal, "sleep no longer held off");
    scene.executable = Some(support::env::binary_copy(scene.dir(), "supervisor-next"));
    scene.write_config();
    sandbox.run(&["systemctl", "reload", unit]);
    wait_for("the new binary holding the old lock", SECS(15), || {
        sandbox
            .journal(unit)
            .contains("holding off sleep with the previous binary's inhibitor lock")
            .then_some(())
    });
    let lock = wait_lock(&sandbox, "1 generation job(s) running");
    assert_eq!(lock.pid, main, "the same process, a new binary: {lock:?}");
    assert_eq!(
        lock_fd_paths(&sandbox, main),
        fifo_before,
        "the very lock the old binary took"
    );
    let journal = sandbox.journal(unit);
    assert!(
        journal.contains("taking over from the previous binary"),
        "{journal}"
    );
    assert_eq!(
        count(&journal, "holding off sleep (logind inhibitor lock)"),
        taken_before,
        "no new lock taken:\n{journal}"
    );
    assert_eq!(
        count(&journal, "sleep no longer held off"),
        closed_before,
        "no lock closed:\n{journal}"
    );
    assert_eq!(
        lock_fd_flags(&sandbox, main).len(),
        1,
        "one lock descriptor"
    );

    // The supervisor stops in the middle of the job: the lock goes with it.
    sandbox.run(&["systemctl", "stop", unit]);
    wait_no_lock(&sandbox, "the service stopped");
    let _ = last.join();
    let journal = sandbox.journal(unit);
    let said: Vec<&str> = journal.lines().filter(|l| l.contains("sleep")).collect();
    eprintln!("the supervisor's journal about sleep:\n{}", said.join("\n"));
    assert!(!journal.contains(NO_LOGIND_LINE), "{journal}");
    for line in ["holding off sleep", "sleep no longer held off"] {
        assert!(
            journal.contains(line),
            "{line:?} not in the journal:\n{journal}"
        );
    }
    // No warning of the inhibitor's: every call succeeded.
    for warning in [
        "cannot take a sleep",
        "cannot renew the sleep",
        "cannot reach logind",
    ] {
        assert!(
            !journal.contains(warning),
            "{warning:?} in the journal:\n{journal}"
        );
    }
}

#[test]
fn systemd_logind_refusing_a_user_is_warned_once_and_jobs_run_on() {
    let mut scene = Scene::in_target_dir("inhibit-denied");
    scene.poll_interval = Some("200ms".into());
    // A system user without polkit's permission: logind says no.
    let Ok(Some(user)) = nix::unistd::User::from_name("daemon") else {
        support::skip("no user \"daemon\" to run the unit as");
        return;
    };
    nix::unistd::chown(scene.dir(), Some(user.uid), Some(user.gid)).expect("chown the scene");
    let unit = "sdws-test-inhibit-denied.service";
    let file = write_unit(&scene, unit, Some("daemon"));
    let Some(sandbox) = sandbox_with_logind(&scene, &file, unit) else {
        return;
    };
    let socket = scene.socket.clone();
    wait_status(&socket, "sleep_inhibited", Value::Bool(false));
    for _ in 0..2 {
        let job = txt2img(scene.port, 2.0);
        wait_status(
            &socket,
            "queue",
            serde_json::json!({"running": 1, "pending": 0}),
        );
        assert_eq!(job.join().expect("job"), Ok(200));
        wait_status(
            &socket,
            "queue",
            serde_json::json!({"running": 0, "pending": 0}),
        );
    }
    assert!(ours(&sandbox).is_empty(), "{:?}", sandbox.inhibitors());
    let status = status_at(&socket);
    assert_eq!(status["state"], "ready", "{status:#}");
    assert_eq!(status["sleep_inhibited"], Value::Bool(false), "{status:#}");
    let journal = sandbox.journal(unit);
    let warned: Vec<&str> = journal
        .lines()
        .filter(|l| l.contains("cannot take a sleep inhibitor lock"))
        .collect();
    eprintln!(
        "the supervisor's warnings about sleep:\n{}",
        warned.join("\n")
    );
    assert_eq!(
        warned.len(),
        1,
        "one warning for two refused jobs:\n{journal}"
    );
    assert!(warned[0].contains("polkit"), "{}", warned[0]);
    sandbox.run(&["systemctl", "stop", unit]);
    assert_eq!(sandbox.property(unit, "Result"), "success");
}

#[test]
fn without_a_system_bus_jobs_run_and_the_daemon_says_so_once() {
    let mut s = Scenario::new("inhibit-no-bus", "forge");
    s.poll_interval = Some("100ms".into());
    // DaemonBuilder points DBUS_SYSTEM_BUS_ADDRESS at a socket that does not
    // exist, as in a container.
    s.start();
    for seconds in [1.0, 1.0] {
        let job = txt2img(s.port, seconds);
        s.wait(SECS(10), "the job seen running", || {
            (s.status_json()["queue"]["running"] == 1).then_some(())
        });
        assert_eq!(job.join().expect("job"), Ok(200));
        s.wait(SECS(10), "the queue idle again", || {
            (s.status_json()["queue"]["running"] == 0).then_some(())
        });
    }
    let status = s.status_json();
    assert_eq!(status["state"], "ready", "{status:#}");
    assert_eq!(status["sleep_inhibited"], Value::Null, "{status:#}");
    let log = s.daemon().log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(NO_LOGIND_LINE)).collect();
    assert_eq!(lines.len(), 1, "one line, at info: {lines:#?}\n{log}");
    assert!(lines[0].contains("INFO"), "{}", lines[0]);
    assert!(
        lines[0].contains("no system bus at unix:path="),
        "{}",
        lines[0]
    );
    assert!(!log.contains("WARN"), "{log}");
}

#[test]
fn a_bus_without_logind_is_said_once_too() {
    let has_bus = std::process::Command::new("dbus-daemon")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_bus {
        support::skip("needs dbus-daemon (apt-get install dbus)");
        return;
    }
    let mut s = Scenario::new("inhibit-no-logind", "forge");
    s.poll_interval = Some("100ms".into());
    let bus = PrivateBus::start(s.dir());
    s.write_config();
    s.spawn_with(|b| b.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address.clone()));
    s.wait(SECS(30), "READY=1 at start", || {
        (s.notify.ready_count() >= 1).then_some(())
    });
    let job = txt2img(s.port, 1.0);
    assert_eq!(job.join().expect("job"), Ok(200));
    assert_eq!(s.status_json()["sleep_inhibited"], Value::Null);
    let log = s.daemon().log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(NO_LOGIND_LINE)).collect();
    assert_eq!(lines.len(), 1, "{lines:#?}\n{log}");
    assert!(
        lines[0].contains("no logind on the system bus"),
        "{}",
        lines[0]
    );
}

/// A private `dbus-daemon` with the system bus's usual rules for method calls
/// to the bus itself, and no logind; killed on drop.
struct PrivateBus {
    child: std::process::Child,
    address: String,
}

impl PrivateBus {
    fn start(dir: &Path) -> PrivateBus {
        let socket = dir.join("private-bus.sock");
        let config = dir.join("private-bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
                socket.display()
            ),
        )
        .expect("write the bus config");
        let child = std::process::Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("private-bus.log")).expect("bus log"))
            .spawn()
            .expect("start dbus-daemon");
        wait_for("the private bus's socket", SECS(10), || {
            socket.exists().then_some(())
        });
        PrivateBus {
            child,
            address: format!("unix:path={}", socket.display()),
        }
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
