//! The UI's life under the real daemon, against the stand-in UI (issue 2, "Must
//! show"): ready, crash → backoff → restart, crash loop → `failed` with no sixth
//! start, the startup timeout as a crash, clean signal dispositions for the child,
//! GPU preflight, and no orphan after the supervisor is SIGKILLed.
//!
//! State is observed through a fake `NOTIFY_SOCKET` (the `STATUS=` lines) and the
//! stand-in's record file, never through the status client.

mod support;

use std::fs;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::{NotifySocket, Scene, alive, live_group_members, pid, t, unix_secs, write_script};

const START: Duration = Duration::from_secs(20);

#[test]
fn ready_then_kill9_restarts_after_a_backoff() {
    let scene = Scene::new("kill9");
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();

    notify.wait("READY=1", START, |n| n.is_ready());
    let ready = notify.wait_status("ready; idle; forge; 0 models", START);
    assert_eq!(ready, "ready; idle; forge; 0 models");
    let first = record.wait_starts(1, START).remove(0);

    let killed_at = SystemTime::now();
    let mark = notify.len();
    kill(Pid::from_raw(pid(&first)), Signal::SIGKILL).expect("kill -9 the stand-in");

    let (_, backoff) = notify.wait_status_from(mark, "backoff: ", Duration::from_secs(10));
    assert_eq!(
        backoff,
        "backoff: UI exited (signal 9 (SIGKILL)), restarting in 1s (crash 1 of 5 in 60s)"
    );
    let starts = record.wait_starts(2, Duration::from_secs(10));
    let second = &starts[1];
    assert_ne!(pid(second), pid(&first), "a new process");
    let gap = t(second) - unix_secs(killed_at);
    assert!(
        (0.9..4.0).contains(&gap),
        "the new stand-in started {gap:.3}s after the kill; the backoff is 1s"
    );
    assert!(t(second) - t(&first) >= 0.9);
    notify.wait_status_from(mark, "ready; idle; forge", START);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(record.starts().len(), 2, "exactly one restart");
}

/// The stand-in's last words before `STANDIN_CRASH_AFTER` exits it.
const LAST: &str = "stand-in: STANDIN_CRASH_AFTER reached, exiting with code 1";
const FAILED: &str = "failed: UI crashed 5 times in 60s (exit 1; last output: \"stand-in: STANDIN_CRASH_AFTER reached, exiting with code 1\")";

#[test]
fn always_crashing_ui_fails_after_five_starts_and_stays_down() {
    let scene = Scene::new("crashloop")
        .env("STANDIN_CRASH_AFTER", 0)
        .env("STANDIN_EXIT_CODE", 1);
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();

    // Backoffs 1+2+4+8 s between the five starts.
    let failed = notify.wait_status("failed: ", Duration::from_secs(45));
    // A UI that dies at start says why in its own words (issue 12, item 17).
    assert_eq!(failed, FAILED);
    let failed_at = SystemTime::now();

    // The backoff doubled between crashes.
    let statuses = notify.statuses();
    for (n, delay) in [(1, 1), (2, 2), (3, 4), (4, 8)] {
        let want = format!(
            "backoff: UI exited (exit 1; last output: {LAST:?}), restarting in {delay}s (crash {n} of 5 in 60s)"
        );
        assert!(statuses.contains(&want), "no {want:?} in {statuses:#?}");
    }
    // systemctl start must not hang on a UI that cannot start.
    assert!(
        notify.all().iter().any(|n| n.is_ready()),
        "READY=1 once failed"
    );

    std::thread::sleep(Duration::from_secs(4));
    let starts = record.starts();
    assert_eq!(
        starts.len(),
        5,
        "exactly five starts, no sixth: {starts:#?}"
    );
    let exits = record.of("exit");
    assert_eq!(exits.len(), 5, "each start exited: {exits:#?}");
    assert!(exits.iter().all(|e| e["code"] == 1));
    assert!(
        t(&starts[4]) < unix_secs(failed_at),
        "the fifth start came before `failed`"
    );
    assert_eq!(
        notify.statuses().last().map(String::as_str),
        Some(FAILED),
        "still failed"
    );
}

#[test]
fn exceeding_startup_timeout_counts_as_a_crash() {
    let mut scene = Scene::new("startup-timeout").env("STANDIN_START_DELAY", 30);
    scene.startup_timeout = "2s".into();
    let notify = NotifySocket::bind(scene.dir());
    let spawned = SystemTime::now();
    let _daemon = scene.daemon().notify(&notify).spawn();
    let record = scene.record();

    let first = record.wait_starts(1, START).remove(0);
    let backoff = notify.wait_status("backoff: ", Duration::from_secs(15));
    assert_eq!(
        backoff,
        "backoff: UI did not answer within 2s, restarting in 1s (crash 1 of 5 in 60s)"
    );
    // The slow UI was stopped the graceful way: SIGINT to its group.
    let sig = record.wait_event("the first stand-in's SIGINT", START, |e| {
        e["event"] == "signal" && pid(e) == pid(&first)
    });
    assert_eq!(sig["signal"], "SIGINT");
    let gap = t(&sig) - unix_secs(spawned);
    assert!(
        (2.0..6.0).contains(&gap),
        "stopped {gap:.2}s after the daemon started; startup_timeout is 2s"
    );

    let starts = record.wait_starts(2, Duration::from_secs(15));
    let after = t(&starts[1]) - t(&sig);
    assert!(
        after >= 0.9,
        "restart {after:.2}s after the stop: the backoff is 1s"
    );
    assert!(
        record.of("listening").is_empty(),
        "no stand-in ever listened"
    );
}

#[test]
fn ui_starts_with_default_signals_and_empty_mask_and_stops_on_sigint() {
    let scene = Scene::new("sigmask");
    let notify = NotifySocket::bind(scene.dir());
    // A daemon started like from a shell with `nohup`/`trap '' INT`, or a service
    // manager that leaves signals ignored or blocked.
    let mut daemon = scene
        .daemon()
        .notify(&notify)
        .ignoring(&[Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP])
        .blocking(&[Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2])
        .spawn();
    let record = scene.record();

    notify.wait("READY=1", START, |n| n.is_ready());
    let start = record.wait_starts(1, START).remove(0);
    let ignored: Vec<&str> = start["sig_ignored"]
        .as_array()
        .expect("sig_ignored is a list")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    for sig in ["SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT"] {
        assert!(
            !ignored.contains(&sig),
            "the UI started with {sig} ignored: {ignored:?}"
        );
    }
    assert_eq!(
        start["sig_blocked"],
        serde_json::json!([]),
        "the UI started with a non-empty signal mask"
    );

    let guards = support::guards_of(daemon.pid());
    assert_eq!(guards.len(), 1, "one guard for the UI's group: {guards:?}");

    // SIGTERM to the daemon: the UI gets SIGINT (like Ctrl-C), exits, daemon exits 0.
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "daemon exit status {status:?}");
    assert!(!alive(guards[0]), "the guard outlived a clean stop");
    let signals = record.of("signal");
    assert_eq!(signals.len(), 1, "{signals:#?}");
    assert_eq!(signals[0]["signal"], "SIGINT");
    assert_eq!(pid(&signals[0]), pid(&start));
    let exit = record.wait_event("the stand-in's exit", START, |e| e["event"] == "exit");
    assert_eq!(exit["reason"], "SIGINT");
    assert!(!alive(pid(&start)), "the stand-in is gone");
    assert!(
        notify
            .all()
            .iter()
            .any(|n| n.single("STOPPING") == Some("1"))
    );
}

#[test]
fn stop_escalates_to_sigkill_after_stop_timeout() {
    let mut scene = Scene::new("stop-timeout").env("STANDIN_IGNORE_SIGINT", 1);
    scene.stop_timeout = "1s".into();
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let ui = pid(&scene.record().wait_starts(1, START)[0]);

    let began = std::time::Instant::now();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(10));
    let took = began.elapsed();
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "the daemon exited {took:?} after SIGTERM; stop_timeout is 1s"
    );
    assert!(!alive(ui), "the UI that ignored SIGINT was killed");
    let record = scene.record();
    assert!(record.of("signal").is_empty(), "SIGINT was ignored");
    assert!(
        record.of("exit").is_empty(),
        "no clean exit: it was SIGKILLed"
    );
}

/// The whole group is stopped, not just the main process: a child that ignores
/// SIGINT is SIGKILLed and waited for before the daemon exits.
#[test]
fn stop_leaves_no_process_of_the_group_even_one_ignoring_sigint() {
    let mut scene = Scene::new("stop-group");
    let py = support::python3().display().to_string();
    let script = support::stand_in().display().to_string();
    // The helper (like a UI's worker process) ignores SIGINT and SIGTERM.
    scene.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("(trap '' INT TERM; exec sleep 1000) & exec '{py}' '{script}' \"$@\""),
        "ui".into(),
    ];
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let ui = pid(&scene.record().wait_starts(1, START)[0]);
    let members = live_group_members(ui);
    assert_eq!(
        members.len(),
        2,
        "stand-in and helper in one group: {members:?}"
    );

    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let left = live_group_members(ui);
    assert!(
        left.is_empty(),
        "left in the UI's group after the daemon exited: {left:?}"
    );
    assert_eq!(scene.record().of("signal")[0]["signal"], "SIGINT");
}

/// A fake `/dev` and `nvidia-smi` for the preflight.
struct FakeGpu {
    dev: std::path::PathBuf,
    smi: std::path::PathBuf,
}

fn fake_gpu(scene: &Scene, smi_output: &str, smi_exit: i32) -> FakeGpu {
    let dev = scene.dir().join("dev");
    fs::create_dir(&dev).expect("mkdir fake dev");
    let smi = scene.dir().join("nvidia-smi");
    write_script(&smi, &format!("echo '{smi_output}'\nexit {smi_exit}"));
    FakeGpu { dev, smi }
}

#[test]
fn without_gpus_the_ui_is_launched_without_checks() {
    let scene = Scene::new("no-gpus");
    // Everything the preflight could object to: no device nodes, a broken driver.
    let gpu = fake_gpu(
        &scene,
        "Failed to initialize NVML: Driver/library version mismatch",
        18,
    );
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene
        .daemon()
        .notify(&notify)
        .env("SD_WEBUI_SUPERVISOR_DEV_DIR", &gpu.dev)
        .env("SD_WEBUI_SUPERVISOR_NVIDIA_SMI", &gpu.smi)
        .env("SD_WEBUI_SUPERVISOR_GPU_RECHECK_SECS", "1")
        .spawn();
    let record = scene.record();

    assert_eq!(
        notify.wait_status("ready; idle", START),
        "ready; idle; forge; 0 models"
    );
    let start = record.wait_starts(1, START).remove(0);
    assert!(
        start["env"].get("CUDA_VISIBLE_DEVICES").is_none(),
        "CUDA_VISIBLE_DEVICES left alone without gpus: {}",
        start["env"]
    );
    assert!(!notify.statuses().iter().any(|s| s.starts_with("waiting")));
}

#[test]
fn missing_gpu_devices_wait_then_the_ui_starts_after_a_recheck() {
    let mut scene = Scene::new("gpu-missing");
    scene.gpus = Some(vec![0]);
    let gpu = fake_gpu(&scene, "NVIDIA-SMI 550.54.14  Driver Version: 550.54.14", 0);
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene
        .daemon()
        .notify(&notify)
        .env("SD_WEBUI_SUPERVISOR_DEV_DIR", &gpu.dev)
        .env("SD_WEBUI_SUPERVISOR_NVIDIA_SMI", &gpu.smi)
        .env("SD_WEBUI_SUPERVISOR_GPU_RECHECK_SECS", "1")
        .spawn();
    let record = scene.record();

    // No driver at all.
    let waiting = notify.wait_status("waiting: ", START);
    assert_eq!(
        waiting,
        format!(
            "waiting: NVIDIA driver not loaded ({} missing)",
            gpu.dev.join("nvidiactl").display()
        )
    );
    // systemctl start returns: the supervisor settled in a state that needs the admin.
    notify.wait("READY=1 while waiting", Duration::from_secs(5), |n| {
        n.is_ready()
    });

    // The driver loads, the GPU node is still missing.
    fs::write(gpu.dev.join("nvidiactl"), "").unwrap();
    let waiting = notify.wait_status("waiting: GPU 0", Duration::from_secs(10));
    assert_eq!(
        waiting,
        format!(
            "waiting: GPU 0 not found ({} missing)",
            gpu.dev.join("nvidia0").display()
        )
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        record.starts().is_empty(),
        "no start while the GPU is missing"
    );

    // The GPU appears: the next re-check (1 s) launches the UI, on GPU 0.
    let appeared = SystemTime::now();
    fs::write(gpu.dev.join("nvidia0"), "").unwrap();
    let start = record.wait_starts(1, Duration::from_secs(10)).remove(0);
    let after = t(&start) - unix_secs(appeared);
    assert!(after < 3.0, "started {after:.2}s after the device appeared");
    assert_eq!(start["env"]["CUDA_VISIBLE_DEVICES"], "0");
    assert_eq!(
        notify.wait_status("ready; idle", START),
        "ready; idle; forge on GPU 0; 0 models"
    );
}

#[test]
fn driver_library_mismatch_waits_instead_of_crash_looping() {
    let mut scene = Scene::new("gpu-mismatch");
    scene.gpus = Some(vec![0]);
    let gpu = fake_gpu(
        &scene,
        "Failed to initialize NVML: Driver/library version mismatch",
        18,
    );
    fs::write(gpu.dev.join("nvidiactl"), "").unwrap();
    fs::write(gpu.dev.join("nvidia0"), "").unwrap();
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene
        .daemon()
        .notify(&notify)
        .env("SD_WEBUI_SUPERVISOR_DEV_DIR", &gpu.dev)
        .env("SD_WEBUI_SUPERVISOR_NVIDIA_SMI", &gpu.smi)
        .env("SD_WEBUI_SUPERVISOR_GPU_RECHECK_SECS", "0.5")
        .spawn();

    let waiting = notify.wait_status("waiting: ", START);
    assert_eq!(
        waiting,
        "waiting: NVIDIA driver/library mismatch, reboot required"
    );
    notify.wait("READY=1 while waiting", Duration::from_secs(5), |n| {
        n.is_ready()
    });
    // Several re-checks later: still waiting, never started, never a crash.
    std::thread::sleep(Duration::from_secs(2));
    assert!(scene.record().starts().is_empty(), "no start on a mismatch");
    // Re-checks never change the status: it stays the mismatch, never a crash.
    // (Before the first check answers, the daemon says it is preparing.)
    let statuses: Vec<String> = notify.statuses();
    assert!(
        statuses
            .iter()
            .skip_while(|s| s.starts_with("starting: preparing"))
            .all(|s| s == "waiting: NVIDIA driver/library mismatch, reboot required"),
        "{statuses:#?}"
    );
}

/// What the daemon reports while it shuts down.
const SHUTTING_DOWN: &str = "stopping: supervisor is shutting down";

/// The status must not claim a shutdown that is not happening: not when a backoff
/// ends, not when a waiting supervisor re-checks the GPU.
#[test]
fn status_never_claims_shutting_down_while_running() {
    let scene = Scene::new("no-bogus-stopping");
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let first = scene.record().wait_starts(1, START).remove(0);
    kill(Pid::from_raw(pid(&first)), Signal::SIGKILL).expect("kill -9 the stand-in");
    scene.record().wait_starts(2, Duration::from_secs(10));
    notify.wait_status("ready; idle", START);
    let statuses = notify.statuses();
    assert!(
        !statuses.iter().any(|s| s == SHUTTING_DOWN),
        "{statuses:#?}"
    );
}

// ---------------------------------------------------------------------------------
// Orphans: the UI dies with the supervisor, and only then

/// SIGKILLs the daemon and checks that, within 2 s, no process of the UI's group
/// is left (a zombie waiting for an init that does not reap is dead enough).
fn assert_group_gone_after_sigkill(scene: &Scene, daemon: support::Daemon, ui_pid: i32) {
    let mut daemon = daemon;
    daemon.signal(Signal::SIGKILL);
    daemon.wait_exit(Duration::from_secs(5));
    support::wait_for_with(
        || {
            format!(
                "no live process of the UI's group {ui_pid} (left: {:?}) nor marked with {} (left: {:?})",
                live_group_members(ui_pid),
                scene.marker(),
                support::live_processes_with_env(&scene.marker())
            )
        },
        Duration::from_secs(2),
        || {
            (live_group_members(ui_pid).is_empty()
                && support::live_processes_with_env(&scene.marker()).is_empty())
            .then_some(())
        },
    );
    assert!(!alive(ui_pid));
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_process_of_the_ui_group() {
    let scene = Scene::new("orphan");
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let ui = pid(&scene.record().wait_starts(1, START)[0]);
    assert!(alive(ui));
    assert_eq!(
        live_group_members(ui),
        vec![ui],
        "the UI leads its own group"
    );
    assert_group_gone_after_sigkill(&scene, daemon, ui);
}

/// A UI launched through a wrapper that does not `exec` (A1111's `webui.sh` runs
/// `python launch.py` as a child): PDEATHSIG kills only the wrapper, the Python
/// process holding the GPU must die too.
#[test]
fn sigkill_of_the_supervisor_also_kills_the_uis_children() {
    let mut scene = Scene::new("orphan-wrapped");
    let py = support::python3().display().to_string();
    let script = support::stand_in().display().to_string();
    scene.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!("'{py}' '{script}' \"$@\"; status=$?; exit $status"),
        "webui.sh".into(),
    ];
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let python = pid(&scene.record().wait_starts(1, START)[0]);
    let (_, wrapper, group) = support::proc_stat(python).expect("stand-in runs");
    assert_eq!(wrapper, group, "the wrapper shell leads the UI's group");
    let guards = support::guards_of(daemon.pid());
    assert_eq!(guards.len(), 1, "one guard for the UI's group: {guards:?}");
    assert_group_gone_after_sigkill(&scene, daemon, group);
    assert!(!alive(guards[0]), "the guard outlived the supervisor");
}

/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits: the UI
/// must outlive the daemon's short-lived threads (tokio's blocking pool retires
/// idle threads after 10 s).
fn ui_survives_an_idle_supervisor(name: &str, idle: Duration) {
    let scene = Scene::new(name);
    let notify = NotifySocket::bind(scene.dir());
    let mut daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let ui = pid(&scene.record().wait_starts(1, START)[0]);
    let until = std::time::Instant::now() + idle;
    while std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
        assert!(alive(ui), "the UI died while the supervisor idled");
        assert!(daemon.try_exit().is_none(), "the daemon exited");
    }
    assert_eq!(scene.record().starts().len(), 1, "no restart");
    assert!(scene.record().of("signal").is_empty());
    assert_eq!(
        notify.statuses().last().map(String::as_str),
        Some("ready; idle; forge; 0 models")
    );
}

#[test]
fn ui_survives_20s_of_an_idle_supervisor() {
    ui_survives_an_idle_supervisor("idle-20s", Duration::from_secs(20));
}

#[test]
#[ignore = "long: 5 minutes (run with --ignored)"]
fn ui_survives_5min_of_an_idle_supervisor() {
    ui_survives_an_idle_supervisor("idle-5min", Duration::from_secs(300));
}
