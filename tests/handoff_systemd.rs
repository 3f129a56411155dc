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
//! systemd runs as PID 1 of a private PID and mount namespace
//! (../shared/tools/systemd-sandbox or `$SYSTEMD_SANDBOX`, until the project's own
//! harness lands). Needs root and systemd >= 254: without them the tests say so
//! and pass, unless `CI=true`.

mod reload_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reload_common::{BIN, Conf, events, read_record, root, scenario_dir, txt2img, wait_for};
use serde_json::Value;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const UNIT: &str = "sd-webui-handoff-test.service";

/// A booted sandbox; dropping it kills it and everything inside.
struct Sandbox {
    tool: PathBuf,
    state: PathBuf,
}

impl Sandbox {
    fn start(tool: PathBuf, state: PathBuf) -> Sandbox {
        let out = Command::new(&tool)
            .arg("start")
            .arg(&state)
            .output()
            .expect("run systemd-sandbox");
        let sandbox = Sandbox { tool, state };
        assert!(out.status.success(), "sandbox start: {out:?}");
        sandbox
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new(&self.tool)
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run systemd-sandbox exec")
    }

    fn install(&self, unit: &Path) {
        let out = Command::new(&self.tool)
            .arg("install")
            .arg(&self.state)
            .arg(unit)
            .output()
            .expect("install the unit");
        assert!(out.status.success(), "install: {out:?}");
    }

    fn show(&self, property: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-P", property, UNIT]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn journal(&self) -> String {
        let out = self.exec(&["journalctl", "-u", UNIT, "--no-pager", "-n", "200"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- journal of {UNIT}:\n{}", self.journal());
        }
        let _ = Command::new(&self.tool)
            .arg("stop")
            .arg(&self.state)
            .output();
    }
}

/// The sandbox tool, or `None` (test skipped) when root or systemd >= 254 is missing.
fn sandbox_tool() -> Option<PathBuf> {
    let tool = std::env::var_os("SYSTEMD_SANDBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/tools/systemd-sandbox"));
    let version = Command::new("systemctl")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.split('.').next()?.parse::<u32>().ok())
        })
        .unwrap_or(0);
    let why = if !nix::unistd::Uid::effective().is_root() {
        Some("needs root".to_string())
    } else if !tool.is_file() {
        Some(format!("{} is missing", tool.display()))
    } else if version < 254 {
        Some(format!("needs systemd >= 254, have {version}"))
    } else {
        None
    };
    match why {
        None => Some(tool),
        Some(why) => {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI must run this: {why}"
            );
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A hard link (or copy) of the binary under test at `dir/name`.
fn binary_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if std::fs::hard_link(BIN, &path).is_err() {
        std::fs::copy(BIN, &path).expect("copy the binary");
    }
    path
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
    fn start(tool: PathBuf, state: PathBuf) -> StateWatch {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let sandbox = Sandbox { tool, state };
            while !st.load(Ordering::Relaxed) {
                let v = sandbox.show("ActiveState");
                s.lock().unwrap().push(v);
            }
            // Not ours to stop.
            std::mem::forget(sandbox);
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
    let Some(tool) = sandbox_tool() else { return };
    let dir = scenario_dir("handoff-systemd");
    let a = binary_copy(dir.path(), "supervisor-a");
    let b = binary_copy(dir.path(), "supervisor-b");
    let mut conf = Conf::new("forge", dir.path());
    conf.executable = Some(a.clone());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, conf.render()).expect("write the config");
    let unit = dir.path().join(UNIT);
    std::fs::write(&unit, unit_text(&a, &config, "X=1")).expect("write the unit");

    let sandbox = Sandbox::start(tool.clone(), dir.path().join("sandbox"));
    sandbox.install(&unit);
    let start = sandbox.exec(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "start: {start:?}\n{}",
        sandbox.journal()
    );
    let main_pid = sandbox.show("MainPID");
    let record = conf.record.clone();
    let first = wait_for(SECS(20), "the stand-in listening", || {
        events(&read_record(&record), "listening")
            .first()
            .map(|r| r.pid)
    });
    let job = txt2img(conf.port, 8.0);
    wait_for(SECS(10), "the job started", || {
        (!events(&read_record(&record), "job_start").is_empty()).then_some(())
    });
    // A restart owed from before the upgrade must survive it.
    conf.extra_args = vec!["--cuda-malloc".into()];
    std::fs::write(&config, conf.render()).expect("write the config");
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(r.status.success(), "reload: {r:?}");
    let before = wait_for(SECS(5), "the busy queue", || {
        let st = status(&conf.socket);
        (st["queue"]["running"] == 1).then_some(st)
    });
    assert!(before["restart_pending"].is_object(), "{before}");

    let watch = StateWatch::start(tool.clone(), sandbox.state.clone());
    conf.executable = Some(b.clone());
    std::fs::write(&config, conf.render()).expect("write the config");
    std::fs::write(&unit, unit_text(&b, &config, "X=1")).expect("write the unit");
    sandbox.install(&unit); // copies and runs daemon-reload
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(
        r.status.success(),
        "systemctl reload: {}\n{}",
        String::from_utf8_lossy(&r.stderr),
        sandbox.journal()
    );
    std::thread::sleep(Duration::from_millis(500));
    let states = watch.finish();
    assert!(
        states.iter().all(|s| s == "active" || s == "reloading"),
        "the unit left active: {states:?}"
    );

    assert_eq!(sandbox.show("MainPID"), main_pid, "MainPID changed");
    let exe = sandbox.exec(&["readlink", &format!("/proc/{main_pid}/exe")]);
    assert_eq!(
        String::from_utf8_lossy(&exe.stdout).trim(),
        b.display().to_string(),
        "MainPID does not run B\n{}",
        sandbox.journal()
    );
    assert_eq!(sandbox.show("NRestarts"), "0");
    assert_eq!(sandbox.show("ActiveState"), "active");
    let after = status(&conf.socket);
    assert_eq!(after["ui_pid"], first, "the UI was replaced");
    assert_eq!(
        after["queue"]["running"], 1,
        "the queue is reported: {after}"
    );
    assert!(after["uptime_seconds"].as_u64() >= before["uptime_seconds"].as_u64());
    assert_eq!(after["restart_pending"], before["restart_pending"]);
    assert!(sandbox.journal().contains("adopted the running UI"));

    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let recs = read_record(&record);
    let end = events(&recs, "job_end")[0].clone();
    assert!(end.completed(), "the job was interrupted");
    assert!(
        events(&recs, "signal").iter().all(|s| s.t >= end.t),
        "a signal reached the UI before its job ended"
    );
    // B carries out the pending restart after the job, as A would have.
    wait_for(SECS(20), "the restarted stand-in", || {
        events(&read_record(&record), "listening")
            .get(1)
            .map(|_| ())
    });
    assert_eq!(sandbox.show("MainPID"), main_pid);
    assert_eq!(sandbox.show("NRestarts"), "0");
}

#[test]
fn a_changed_unit_restarts_the_service_once_the_job_is_done() {
    let Some(tool) = sandbox_tool() else { return };
    let dir = scenario_dir("unit-change-systemd");
    let mut conf = Conf::new("forge", dir.path());
    conf.unit_fingerprint = Some("unit-1".into());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, conf.render()).expect("write the config");
    let unit = dir.path().join(UNIT);
    let bin = Path::new(BIN);
    std::fs::write(&unit, unit_text(bin, &config, "UNIT_GENERATION=1")).expect("write");

    let sandbox = Sandbox::start(tool, dir.path().join("sandbox"));
    sandbox.install(&unit);
    let start = sandbox.exec(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "start: {start:?}\n{}",
        sandbox.journal()
    );
    let main_pid = sandbox.show("MainPID");
    let record = conf.record.clone();
    wait_for(SECS(20), "the stand-in listening", || {
        events(&read_record(&record), "listening")
            .first()
            .map(|_| ())
    });
    let job = txt2img(conf.port, 6.0);
    wait_for(SECS(10), "the job started", || {
        (!events(&read_record(&record), "job_start").is_empty()).then_some(())
    });

    conf.unit_fingerprint = Some("unit-2".into());
    std::fs::write(&config, conf.render()).expect("write the config");
    std::fs::write(&unit, unit_text(bin, &config, "UNIT_GENERATION=2")).expect("write");
    sandbox.install(&unit);
    let r = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    assert!(r.status.success(), "reload: {r:?}\n{}", sandbox.journal());
    wait_for(
        SECS(3),
        "StatusText with the pending service restart",
        || {
            let st = sandbox.show("StatusText");
            (st.contains("busy: 1 running")
                && st.contains("restart pending (service unit changed)"))
            .then_some(())
        },
    );
    assert_eq!(sandbox.show("MainPID"), main_pid, "restarted while busy");

    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let recs = read_record(&record);
    let end = events(&recs, "job_end")[0].clone();
    assert!(end.completed(), "the job was interrupted");
    // Between the exit and the new start (RestartSec=2s), systemd shows how
    // the main process ended.
    let exited = wait_for(SECS(30), "the unit waiting to restart", || {
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
    let second = wait_for(SECS(30), "a stand-in of the new service", || {
        let recs = read_record(&record);
        events(&recs, "listening").get(1).map(|r| (r.pid, r.t))
    });
    assert!(
        second.1 >= end.t + 1.0,
        "the new UI listened {:.2} s after the job ended, before idle_grace (1 s)",
        second.1 - end.t
    );
    wait_for(SECS(10), "the unit active again", || {
        (sandbox.show("ActiveState") == "active").then_some(())
    });
    assert_ne!(
        sandbox.show("MainPID"),
        main_pid,
        "the service did not restart"
    );
    assert_eq!(sandbox.show("NRestarts"), "1");
    let environ = sandbox.exec(&["cat", &format!("/proc/{}/environ", second.0)]);
    let environ = String::from_utf8_lossy(&environ.stdout).replace('\0', "\n");
    assert!(
        environ.lines().any(|l| l == "UNIT_GENERATION=2"),
        "the new UI does not see the new unit's environment:\n{environ}"
    );
}
