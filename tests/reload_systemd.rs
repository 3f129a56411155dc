//! Under a real systemd (issue 4, "Must show"): a `Type=notify-reload` unit runs the
//! daemon and the stand-in UI; while a long job runs, `systemctl reload` returns in
//! under 2 s, systemd's status shows the pending restart, and once the job is done
//! the unit is still active (same daemon) with a new UI process.
//!
//! systemd runs as PID 1 of a private PID and mount namespace (the project's
//! `scripts/systemd-sandbox`); the network is the host's, so the test submits the
//! job to the stand-in directly. Everything lives under the target dir (a unit may
//! have its own /tmp). Needs what the sandbox needs (root, systemd >= 254): without
//! it the test says so and passes, unless `CI=true`.

mod support;

use std::time::{Duration, Instant};

use support::systemd::Sandbox;
use support::{BIN, Conf, Scene, events, read_record, txt2img, wait_for, wait_record};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const UNIT: &str = "sd-webui-reload-test.service";

#[test]
fn systemctl_reload_returns_at_once_and_the_restart_waits_for_the_job() {
    let mut scene = Scene::in_target_dir("reload-systemd");
    scene.conf = Conf::new("forge", scene.dir());
    let config = scene.write_config();
    let unit = scene.path(UNIT);
    std::fs::write(
        &unit,
        format!(
            "[Unit]\nDescription=sd-webui-supervisor reload test\n\n\
             [Service]\nType=notify-reload\nNotifyAccess=main\n\
             ExecStart={BIN} run --config {}\n\
             Environment=RUST_LOG=info NO_COLOR=1\n\
             TimeoutStartSec=60\nTimeoutStopSec=20\n",
            config.display()
        ),
    )
    .expect("write the unit");

    let Some(sandbox) = Sandbox::boot(&scene.path("sandbox"), &[scene.dir()], &[]) else {
        return;
    };
    sandbox.install(&[&unit]);
    let start = sandbox.exec(&["systemctl", "start", UNIT]);
    assert!(
        start.status.success(),
        "systemctl start: {}\n{}",
        String::from_utf8_lossy(&start.stderr),
        sandbox.journal(UNIT)
    );
    assert_eq!(sandbox.property(UNIT, "ActiveState"), "active");
    let daemon_pid = sandbox.property(UNIT, "MainPID");

    let record = scene.record.clone();
    let first = wait_record(&record, "listening", 1, SECS(20)).pid;
    let job = txt2img(scene.port, 8.0);
    wait_record(&record, "job_start", 1, SECS(10));

    scene.extra_args = vec!["--cuda-malloc".into()];
    std::fs::write(&config, scene.render()).expect("write the new config");
    let t0 = Instant::now();
    let reload = sandbox.exec(&["timeout", "30", "systemctl", "reload", UNIT]);
    let took = t0.elapsed();
    assert!(
        reload.status.success(),
        "systemctl reload: {}\n{}",
        String::from_utf8_lossy(&reload.stderr),
        sandbox.journal(UNIT)
    );
    eprintln!(
        "systemctl reload returned in {} ms (goal < 2000 ms)",
        took.as_millis()
    );
    assert!(
        took < SECS(2),
        "systemctl reload took {took:?} while a job ran"
    );

    wait_for(
        "StatusText: busy, with the pending restart",
        SECS(3),
        || {
            let st = sandbox.property(UNIT, "StatusText");
            (st.contains("busy: 1 running")
                && st.contains("restart pending (ui.extra_args changed), waits for idle"))
            .then_some(())
        },
    );
    let shown = sandbox.exec(&["systemctl", "status", "--no-pager", UNIT]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(
            "Status: \"ready; busy: 1 running, 0 queued; restart pending (ui.extra_args changed)"
        ),
        "systemctl status:\n{shown}"
    );
    assert_eq!(sandbox.property(UNIT, "ActiveState"), "active");

    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let recs = read_record(&record);
    let end = events(&recs, "job_end")[0].clone();
    assert!(end.completed(), "the job was interrupted");
    assert!(
        events(&recs, "signal").iter().all(|s| s.t >= end.t),
        "a signal reached the UI before its job ended"
    );
    let second = wait_record(&record, "listening", 2, SECS(20)).pid;
    assert_ne!(second, first);
    let starts = read_record(&record);
    let new = events(&starts, "start")
        .into_iter()
        .find(|r| r.pid == second)
        .expect("the new stand-in's start")
        .clone();
    assert!(new.argv().contains(&"--cuda-malloc".to_string()));

    wait_for("StatusText without the pending restart", SECS(5), || {
        let st = sandbox.property(UNIT, "StatusText");
        st.starts_with("ready; idle").then_some(())
    });
    assert_eq!(sandbox.property(UNIT, "ActiveState"), "active");
    assert_eq!(
        sandbox.property(UNIT, "MainPID"),
        daemon_pid,
        "the daemon itself restarted"
    );
    assert_eq!(sandbox.property(UNIT, "NRestarts"), "0");
}
