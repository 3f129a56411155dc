//! Self-upgrade under a real systemd (issue 13, "Must show"):
//!
//! - a `Type=notify-reload` unit runs binary copy A; while a long job runs, the
//!   config and the unit switch to copy B, `daemon-reload` + `systemctl reload`:
//!   the job completes, the UI keeps its PID, MainPID stays and runs B, the unit
//!   never leaves active, `NRestarts` stays 0, and `status --json` still has the
//!   queue, the uptime and the restart that was pending;
//! - a changed unit (`Environment=`) with a new `unit_fingerprint`: the service
//!   restarts only after the job (+ idle grace), exiting with status 75 in
//!   between, and the new UI sees the new environment.
//!
//! systemd runs as PID 1 of a private PID and mount namespace, through the
//! project's harness (`scripts/systemd-sandbox`, see `tests/support/systemd.rs`).
//! Where it cannot boot (not root, systemd < 254) the tests say so and pass,
//! unless `CI=true`.

mod support;

use support::env::binary_copy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::config::Conf;
use support::env::BIN;
use support::http::txt2img;
use support::record::{events, read_record, wait_record};
use support::scene::Scene;
use support::systemd::{Sandbox, tool};
use support::wait::wait_for;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const UNIT: &str = "sd-webui-handoff-test.service";

/// A scene under the target dir (visible inside the sandbox) with the reload
/// tests' forge config.
fn scene(name: &str) -> Scene {
    let mut scene = Scene::in_target_dir(name);
    scene.conf = Conf::new("forge", scene.dir());
    scene
}

/// Boots the sandbox for `scene`, or `None` (skipped) where this machine cannot.
fn boot(scene: &Scene) -> Option<Sandbox> {
    Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[])
}

/// The unit: `exe` as ExecStart, `env` as an extra `Environment=` line.
fn unit_text(exe: &Path, config: &Path, env: &str) -> String {
    format!(
        "[Unit]\nDescription=sd-webui-supervisor handoff test\n\n\
         [Service]\nType=notify-reload\nNotifyAccess=main\n\
         ExecStart={} run --config {}\n\
         Environment=RUST_LOG=info NO_COLOR=1\nEnvironment={env}\n\
         Restart=on-failure\nRestartForceExitStatus=75\nRestartSec=2s\n\
         TimeoutStartSec=60\nTimeoutStopSec=20\n",
        exe.display(),
        config.display()
    )
}

/// `status --json` from the host (the socket is under the shared target dir).
fn status(socket: &Path) -> Value {
    let out = Command::new(BIN)
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("run status");
    assert!(out.status.success(), "status: {out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Samples `ActiveState` in a thread until dropped.
struct StateWatch {
    seen: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StateWatch {
    fn start(state: PathBuf) -> StateWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let out = Command::new(tool())
                    .arg("exec")
                    .arg(&state)
                    .args(["systemctl", "show", "-P", "ActiveState", UNIT])
                    .output()
                    .expect("run scripts/systemd-sandbox exec");
                let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
                s.lock().unwrap().push(v);
            }
        });
        StateWatch {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.seen.lock().unwrap().clone()
    }
}

#[test]
fn systemctl_reload_hands_over_to_binary_b_without_touching_the_job() {
    let sc = scene("handoff-systemd");
    let a = binary_copy(sc.dir(), "supervisor-a");
    let b = binary_copy(sc.dir(), "supervisor-b");
    let mut conf = sc.conf.clone();
    conf.executable = Some(a.clone());
    let config = sc.config.clone();
    std::fs::write(&config, conf.render()).expect("write the config");
    let unit = sc.path(UNIT);
    std::fs::write(&unit, unit_text(&a, &config, "X=1")).expect("write the unit");

    let Some(sandbox) = boot(&sc) else { return };
    sandbox.install(&[&unit]);
    let start = sandbox.exec(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "start: {start:?}\n{}",
        sandbox.journal(UNIT)
    );
    let main_pid = sandbox.property(UNIT, "MainPID");
    let record = conf.record.clone();
    let listening = wait_record(&record, "listening", 1, SECS(20));
    let first = listening.pid;
    // Straight to the UI's private port, past the front door: a handoff waits
    // for the door's own requests (tests/front_door.rs); this is about the UI's job.
    let ui_port = u16::try_from(listening.v["port"].as_u64().expect("a port")).expect("a port");
    let job = txt2img(ui_port, 8.0);
    wait_record(&record, "job_start", 1, SECS(10));
    // A restart owed from before the upgrade must survive it.
    conf.extra_args = vec!["--cuda-malloc".into()];
    std::fs::write(&config, conf.render()).expect("write the config");
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(r.status.success(), "reload: {r:?}");
    let before = wait_for("the busy queue", SECS(5), || {
        let st = status(&conf.socket);
        (st["queue"]["running"] == 1).then_some(st)
    });
    assert!(before["restart_pending"].is_object(), "{before}");

    let watch = StateWatch::start(sandbox.state().to_path_buf());
    conf.executable = Some(b.clone());
    std::fs::write(&config, conf.render()).expect("write the config");
    std::fs::write(&unit, unit_text(&b, &config, "X=1")).expect("write the unit");
    sandbox.install(&[&unit]); // copies and runs daemon-reload
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(
        r.status.success(),
        "systemctl reload: {}\n{}",
        String::from_utf8_lossy(&r.stderr),
        sandbox.journal(UNIT)
    );
    std::thread::sleep(Duration::from_millis(500));
    let states = watch.finish();
    assert!(
        states.iter().all(|s| s == "active" || s == "reloading"),
        "the unit left active: {states:?}"
    );

    assert_eq!(
        sandbox.property(UNIT, "MainPID"),
        main_pid,
        "MainPID changed"
    );
    let exe = sandbox.exec(&["readlink", &format!("/proc/{main_pid}/exe")]);
    assert_eq!(
        String::from_utf8_lossy(&exe.stdout).trim(),
        b.display().to_string(),
        "MainPID does not run B\n{}",
        sandbox.journal(UNIT)
    );
    assert_eq!(sandbox.property(UNIT, "NRestarts"), "0");
    assert_eq!(sandbox.property(UNIT, "ActiveState"), "active");
    let after = status(&conf.socket);
    assert_eq!(after["ui_pid"], first, "the UI was replaced");
    assert_eq!(
        after["queue"]["running"], 1,
        "the queue is reported: {after}"
    );
    assert!(after["uptime_seconds"].as_u64() >= before["uptime_seconds"].as_u64());
    assert_eq!(after["restart_pending"], before["restart_pending"]);
    assert!(sandbox.journal(UNIT).contains("adopted the running UI"));

    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let recs = read_record(&record);
    let end = events(&recs, "job_end")[0].clone();
    assert!(end.completed(), "the job was interrupted");
    assert!(
        events(&recs, "signal").iter().all(|s| s.t >= end.t),
        "a signal reached the UI before its job ended"
    );
    // B carries out the pending restart after the job, as A would have.
    wait_record(&record, "listening", 2, SECS(20));
    assert_eq!(sandbox.property(UNIT, "MainPID"), main_pid);
    assert_eq!(sandbox.property(UNIT, "NRestarts"), "0");
}

#[test]
fn a_changed_unit_restarts_the_service_once_the_job_is_done() {
    let sc = scene("unit-change-systemd");
    let mut conf = sc.conf.clone();
    conf.unit_fingerprint = Some("unit-1".into());
    let config = sc.config.clone();
    std::fs::write(&config, conf.render()).expect("write the config");
    let unit = sc.path(UNIT);
    let bin = Path::new(BIN);
    std::fs::write(&unit, unit_text(bin, &config, "UNIT_GENERATION=1")).expect("write");

    let Some(sandbox) = boot(&sc) else { return };
    sandbox.install(&[&unit]);
    let start = sandbox.exec(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "start: {start:?}\n{}",
        sandbox.journal(UNIT)
    );
    let main_pid = sandbox.property(UNIT, "MainPID");
    let record = conf.record.clone();
    wait_record(&record, "listening", 1, SECS(20));
    let job = txt2img(conf.port, 6.0);
    wait_record(&record, "job_start", 1, SECS(10));

    conf.unit_fingerprint = Some("unit-2".into());
    std::fs::write(&config, conf.render()).expect("write the config");
    std::fs::write(&unit, unit_text(bin, &config, "UNIT_GENERATION=2")).expect("write");
    sandbox.install(&[&unit]);
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(
        r.status.success(),
        "reload: {r:?}\n{}",
        sandbox.journal(UNIT)
    );
    wait_for(
        "StatusText with the pending service restart",
        SECS(3),
        || {
            let st = sandbox.property(UNIT, "StatusText");
            (st.contains("busy: 1 running")
                && st.contains("restart pending (service unit changed)"))
            .then_some(())
        },
    );
    assert_eq!(
        sandbox.property(UNIT, "MainPID"),
        main_pid,
        "restarted while busy"
    );

    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let recs = read_record(&record);
    let end = events(&recs, "job_end")[0].clone();
    assert!(end.completed(), "the job was interrupted");
    // Between the exit and the new start (RestartSec=2s), systemd shows how
    // the main process ended.
    let exited = wait_for("the unit waiting to restart", SECS(30), || {
        let out = sandbox.exec(&[
            "systemctl",
            "show",
            "-p",
            "SubState",
            "-p",
            "ExecMainStatus",
            UNIT,
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
        };
        (value("SubState")? == "auto-restart").then(|| value("ExecMainStatus"))?
    });
    assert_eq!(exited, "75", "the supervisor did not exit with 75");
    let second = wait_for("a stand-in of the new service", SECS(30), || {
        let recs = read_record(&record);
        events(&recs, "listening").get(1).map(|r| (r.pid, r.t))
    });
    assert!(
        second.1 >= end.t + 1.0,
        "the new UI listened {:.2} s after the job ended, before idle_grace (1 s)",
        second.1 - end.t
    );
    wait_for("the unit active again", SECS(10), || {
        (sandbox.property(UNIT, "ActiveState") == "active").then_some(())
    });
    assert_ne!(
        sandbox.property(UNIT, "MainPID"),
        main_pid,
        "the service did not restart"
    );
    assert_eq!(sandbox.property(UNIT, "NRestarts"), "1");
    let environ = sandbox.exec(&["cat", &format!("/proc/{}/environ", second.0)]);
    let environ = String::from_utf8_lossy(&environ.stdout).replace('\0', "\n");
    assert!(
        environ.lines().any(|l| l == "UNIT_GENERATION=2"),
        "the new UI does not see the new unit's environment:\n{environ}"
    );
}
