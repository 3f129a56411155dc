//! The real binary as PID 1 of a new PID namespace (`unshare --pid --fork
//! --mount-proc`), as in a container without an init of its own: orphans are
//! reaped, SIGTERM is the graceful stop, a crash loop still answers over HTTP,
//! and a killed supervisor leaves nothing behind. Root only: skipped with the
//! reason otherwise.

mod support;

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use support::container::{Listening, Namespace, namespace_unavailable};
use support::{Scene, live_processes_with_env, wait_for, write_script};

macro_rules! require_namespace {
    () => {
        if let Some(why) = namespace_unavailable() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn start(scene: Scene) -> (Listening, Namespace) {
    let l = Listening::new(scene);
    let ns = Namespace::spawn(&l.scene.config_path(), &l.scene.log_path());
    (l, ns)
}

#[test]
fn orphaned_grandchildren_of_the_ui_are_reaped_by_pid_1() {
    require_namespace!();
    let mut scene = Scene::new("pid1-orphans");
    // A launcher that leaves two orphans behind before it becomes the UI: one in
    // the UI's process group, one in a session of its own.
    let launcher = scene.dir().join("launcher.sh");
    write_script(
        &launcher,
        &format!(
            "( sleep 3 & )\n( setsid sleep 3 & )\nexec {} {} \"$@\"",
            support::python3().display(),
            support::stand_in().display()
        ),
    );
    scene.command = vec![launcher.display().to_string()];
    let (l, ns) = start(scene);
    l.wait_ready(Duration::from_secs(30));
    let pid1 = ns.pid1();

    let orphans = wait_for(
        "both sleeps to be PID 1's children",
        Duration::from_secs(5),
        || {
            let sleeps: Vec<i32> = ns
                .others()
                .into_iter()
                .filter(|(_, _, comm)| comm == "sleep")
                .map(|(pid, ..)| pid)
                .collect();
            let adopted = sleeps
                .iter()
                .all(|p| support::proc_stat(*p).is_some_and(|(_, ppid, _)| ppid == pid1));
            (sleeps.len() == 2 && adopted).then_some(sleeps)
        },
    );
    // They exit after 3 s; PID 1 must reap them: no zombie may stay behind.
    wait_for_with_others(&ns, Duration::from_secs(10), |others| {
        !others
            .iter()
            .any(|(pid, state, _)| orphans.contains(pid) || *state == 'Z')
    });
    // Reaping them took nothing from the supervisor's own waits: the UI runs on.
    let status = l.status().expect("status");
    assert_eq!(status["state"], "ready", "{status}");
    assert!(!ns.log().contains("wait failed"), "{}", ns.log());
}

fn wait_for_with_others(
    ns: &Namespace,
    timeout: Duration,
    ok: impl Fn(&[(i32, char, String)]) -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = ns.others();
        if ok(&last) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "processes of the namespace after {timeout:?}: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_during_a_job_stops_the_ui_gracefully_and_exits_0() {
    require_namespace!();
    let mut scene = Scene::new("pid1-sigterm");
    scene.stop_timeout = "10s".into();
    let (l, mut ns) = start(scene);
    l.wait_ready(Duration::from_secs(30));
    let _job = l.start_job(60);

    kill(Pid::from_raw(ns.pid1()), Signal::SIGTERM).expect("SIGTERM to PID 1");
    let status = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", ns.log());
    let record = l.scene.record();
    let signals: Vec<_> = record
        .of("signal")
        .into_iter()
        .map(|e| e["signal"].clone())
        .collect();
    assert_eq!(signals, ["SIGINT"], "the UI got SIGINT, once: {signals:?}");
    assert!(
        ns.log().contains("UI stopped"),
        "graceful stop in the log: {}",
        ns.log()
    );
}

#[test]
fn a_crash_loop_reports_failed_over_http_while_healthz_stays_200() {
    require_namespace!();
    let scene = Scene::new("pid1-crashloop").env("STANDIN_CRASH_AFTER", "0.2");
    let (l, ns) = start(scene);
    wait_for("state failed over HTTP", Duration::from_secs(90), || {
        l.status().filter(|s| s["state"] == "failed").map(|_| ())
    });
    let (code, body) = l.get("/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("\"failed\""), "{body}");
    let (code, body) = l.get("/healthz").expect("/healthz answers");
    assert_eq!(code, 200, "{body}");
    // Nothing of the crashed UIs is left: no zombie, no stand-in.
    let others = ns.others();
    assert!(
        !others
            .iter()
            .any(|(_, state, comm)| *state == 'Z' || comm.starts_with("python")),
        "{others:?}"
    );
}

#[test]
fn sigkill_of_the_supervisor_leaves_nothing_in_the_namespace() {
    require_namespace!();
    let scene = Scene::new("pid1-sigkill-supervisor");
    let marker = scene.marker();
    let (l, mut ns) = start(scene);
    l.wait_ready(Duration::from_secs(30));
    let _job = l.start_job(60);
    let supervisor = wait_for("the supervisor half", Duration::from_secs(5), || {
        support::container::children_of(ns.pid1())
            .into_iter()
            .find(|p| support::proc_stat(*p).is_some())
    });
    kill(Pid::from_raw(supervisor), Signal::SIGKILL).expect("SIGKILL the supervisor");
    let status = ns.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(137), "128 + SIGKILL: {}", ns.log());
    wait_for("no process of the UI left", Duration::from_secs(5), || {
        live_processes_with_env(&marker).is_empty().then_some(())
    });
}

#[test]
fn sigkill_of_pid_1_leaves_nothing_behind() {
    require_namespace!();
    let scene = Scene::new("pid1-sigkill-init");
    let marker = scene.marker();
    let (l, mut ns) = start(scene);
    l.wait_ready(Duration::from_secs(30));
    kill(Pid::from_raw(ns.pid1()), Signal::SIGKILL).expect("SIGKILL PID 1");
    ns.wait_exit(Duration::from_secs(20));
    wait_for("no process of the UI left", Duration::from_secs(5), || {
        live_processes_with_env(&marker).is_empty().then_some(())
    });
}

/// `run --init` outside a PID namespace of its own: the init half makes itself
/// the subreaper, so the UI's orphans come to it and are reaped; SIGTERM to it
/// still stops everything gracefully. Needs no root.
#[test]
fn run_with_init_flag_reaps_orphans_as_a_subreaper() {
    let mut scene = Scene::new("init-flag-orphans");
    let launcher = scene.dir().join("launcher.sh");
    write_script(
        &launcher,
        &format!(
            "( setsid sleep 2 & )\nexec {} {} \"$@\"",
            support::python3().display(),
            support::stand_in().display()
        ),
    );
    scene.command = vec![launcher.display().to_string()];
    let marker = scene.marker();
    let l = Listening::new(scene);
    let log = std::fs::File::create(l.scene.log_path()).expect("log");
    let mut init = std::process::Command::new(support::daemon_bin())
        .args(["run", "--init", "--config"])
        .arg(l.scene.config_path())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log)
        .spawn()
        .expect("spawn run --init");
    let init_pid = init.id() as i32;
    l.wait_ready(Duration::from_secs(30));
    let sleep = wait_for(
        "the orphan to be the init half's child",
        Duration::from_secs(5),
        || {
            support::container::children_of(init_pid)
                .into_iter()
                .find(|p| {
                    support::container::processes()
                        .iter()
                        .any(|(q, _, comm)| q == p && comm == "sleep")
                })
        },
    );
    wait_for("the orphan to be reaped", Duration::from_secs(10), || {
        support::proc_stat(sleep).is_none().then_some(())
    });
    kill(Pid::from_raw(init_pid), Signal::SIGTERM).expect("SIGTERM");
    let status = wait_for("run --init to exit", Duration::from_secs(20), || {
        init.try_wait().expect("try_wait")
    });
    assert_eq!(status.code(), Some(0));
    assert!(live_processes_with_env(&marker).is_empty());
}
