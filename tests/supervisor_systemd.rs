//! Under a real systemd (PID 1 in the project's sandbox, `scripts/systemd-sandbox`):
//! a `Type=notify` unit running `sd-webui-supervisor run` with a stand-in that
//! takes 3 s to start — `systemctl start` returns only once it is ready,
//! `systemctl status` shows the `Status:` line, `systemctl stop` leaves no process
//! in the unit's cgroup; and a `Type=notify-reload` unit reloads at once.
//!
//! Needs what the sandbox needs (root, `unshare`, systemd >= 254): skipped with the
//! reason otherwise — except under `CI=true`, where that fails the test.
//! The unit cannot see the host's /tmp, so everything it needs lives under
//! cargo's target dir (`CARGO_TARGET_TMPDIR`).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use support::systemd::Sandbox;
use support::{Scene, pid, t, unix_secs, wait_for, wait_for_with};

/// The cgroup.procs file of `unit`'s cgroup, found by where its main process
/// is (cgroup v2, or the v1 `name=systemd` / hybrid `unified` hierarchy).
fn cgroup_procs_file(sandbox: &Sandbox, unit: &str) -> String {
    let cg = sandbox.property(unit, "ControlGroup");
    assert!(!cg.is_empty(), "{unit} has no ControlGroup");
    let main = sandbox.property(unit, "MainPID");
    for root in [
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
    ] {
        let file = format!("{root}{cg}/cgroup.procs");
        let out = sandbox.exec(&["cat", &file]);
        if out.status.success()
            && String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == main)
        {
            return file;
        }
    }
    panic!("no cgroup.procs of {cg} lists the main pid {main}");
}

/// Processes in a cgroup.procs file; none when the cgroup is gone.
fn cgroup_procs(sandbox: &Sandbox, file: &str) -> Vec<String> {
    let out = sandbox.exec(&["cat", file]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Writes `<name>.service` for the daemon and the scene's config into the scene.
fn write_unit(scene: &Scene, name: &str, kind: &str) -> PathBuf {
    let config = scene.write_config();
    let unit = scene.dir().join(format!("{name}.service"));
    let text = format!(
        "[Unit]\n\
         Description=sd-webui-supervisor integration test ({kind})\n\
         \n\
         [Service]\n\
         Type={kind}\n\
         NotifyAccess=main\n\
         ExecStart={bin} run --config {config}\n\
         Environment=RUST_LOG=info\n\
         KillMode=mixed\n\
         TimeoutStartSec=60\n\
         TimeoutStopSec=30\n\
         WatchdogSec=10\n",
        bin = support::daemon_bin().display(),
        config = config.display(),
    );
    std::fs::write(&unit, text).expect("write the unit");
    unit
}

fn unit_name(what: &str) -> String {
    format!("sdws-test-{what}-{}", std::process::id())
}

#[test]
fn notify_unit_start_waits_for_ready_status_shows_and_stop_leaves_nothing() {
    let scene = Scene::in_target_dir("systemd-notify").env("STANDIN_START_DELAY", 3);
    let name = unit_name("notify");
    let unit = format!("{name}.service");
    let file = write_unit(&scene, &name, "notify");
    let Some(sandbox) = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[]) else {
        return;
    };
    sandbox.install(&[&file]);
    let record = scene.record();

    // systemctl start blocks until READY=1, i.e. until the stand-in answered.
    let began = Instant::now();
    sandbox.run(&["systemctl", "start", &unit]);
    let returned = SystemTime::now();
    let took = began.elapsed();
    eprintln!("systemctl start took {took:?} (stand-in start delay 3s)");
    assert!(
        took >= Duration::from_secs(3),
        "systemctl start took {took:?}"
    );
    assert_eq!(sandbox.property(&unit, "ActiveState"), "active");
    let status_text = sandbox.property(&unit, "StatusText");
    assert!(
        status_text.starts_with("ready"),
        "StatusText={status_text:?}"
    );
    let listening = record
        .of("listening")
        .into_iter()
        .next()
        .expect("the stand-in listened before systemctl start returned");
    assert!(t(&listening) <= unix_secs(returned));

    // systemctl status shows the one-line status.
    let status = wait_for_with(
        || {
            format!(
                "`Status: \"ready; idle; forge…` in systemctl status ({})",
                sandbox.property(&unit, "StatusText")
            )
        },
        Duration::from_secs(10),
        || {
            let out = sandbox.exec(&["systemctl", "status", "--no-pager", &unit]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("Status: \"ready; idle; forge; 0 models\"")
                .then_some(text)
        },
    );
    assert!(status.contains("Active: active (running)"), "{status}");

    // The stand-in is in the unit's cgroup, next to the daemon.
    let procs_file = cgroup_procs_file(&sandbox, &unit);
    let procs = cgroup_procs(&sandbox, &procs_file);
    eprintln!("{procs_file}: {procs:?}");
    assert!(
        procs.len() >= 2,
        "daemon and stand-in in {procs_file}: {procs:?}"
    );
    let ui = record.starts()[0].clone();
    assert!(
        procs.contains(&pid(&ui).to_string()),
        "stand-in {} not in {procs:?}",
        pid(&ui)
    );

    // systemctl stop: the daemon stops the UI itself (SIGINT), exits 0, nothing left.
    sandbox.run(&["systemctl", "stop", &unit]);
    assert_eq!(sandbox.property(&unit, "ActiveState"), "inactive");
    assert_eq!(sandbox.property(&unit, "ExecMainStatus"), "0");
    assert_eq!(sandbox.property(&unit, "Result"), "success");
    let left = cgroup_procs(&sandbox, &procs_file);
    assert!(left.is_empty(), "left in {procs_file}: {left:?}");
    let signals = record.of("signal");
    assert_eq!(signals.len(), 1, "{signals:#?}");
    assert_eq!(signals[0]["signal"], "SIGINT", "the daemon stopped the UI");
    let journal = sandbox.journal(&unit);
    for bad in [
        "Killing process",
        "left-over",
        "SIGKILL",
        "Watchdog timeout",
    ] {
        assert!(!journal.contains(bad), "{bad:?} in the journal:\n{journal}");
    }
    // The UI's output reached the journal under the unit.
    assert!(journal.contains("Running on local URL"), "{journal}");
}

#[test]
fn notify_reload_unit_reloads_at_once_and_stays_active() {
    let scene = Scene::in_target_dir("systemd-reload");
    let name = unit_name("reload");
    let unit = format!("{name}.service");
    let file = write_unit(&scene, &name, "notify-reload");
    let Some(sandbox) = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[]) else {
        return;
    };
    sandbox.install(&[&file]);

    sandbox.run(&["systemctl", "start", &unit]);
    let main = sandbox.property(&unit, "MainPID");
    wait_for("ready; idle", Duration::from_secs(10), || {
        sandbox
            .property(&unit, "StatusText")
            .starts_with("ready; idle")
            .then_some(())
    });

    for _ in 0..2 {
        let began = Instant::now();
        sandbox.run(&["systemctl", "reload", &unit]);
        let took = began.elapsed();
        eprintln!("systemctl reload took {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "systemctl reload took {took:?}"
        );
        assert_eq!(sandbox.property(&unit, "ActiveState"), "active");
        assert_eq!(sandbox.property(&unit, "SubState"), "running");
    }
    assert_eq!(sandbox.property(&unit, "MainPID"), main, "same daemon");
    assert_eq!(sandbox.property(&unit, "NRestarts"), "0");
    assert_eq!(scene.record().starts().len(), 1, "the UI was not restarted");
    let journal = sandbox.journal(&unit);
    assert!(!journal.contains("Reload operation timed out"), "{journal}");

    sandbox.run(&["systemctl", "stop", &unit]);
    assert_eq!(sandbox.property(&unit, "ExecMainStatus"), "0");
    assert_eq!(sandbox.property(&unit, "Result"), "success");
}
