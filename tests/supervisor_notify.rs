//! The sd_notify protocol, seen from a fake `NOTIFY_SOCKET` (issue 2, "Must show"):
//! `EXTEND_TIMEOUT_USEC` while starting, `READY=1` only after the UI answers,
//! `STATUS=` lines, `WATCHDOG=1` at half `WATCHDOG_USEC`, `STOPPING=1` on SIGTERM,
//! exit 0; on SIGHUP `RELOADING=1` with `MONOTONIC_USEC` in one datagram, then
//! `READY=1`. Nothing else is ever sent.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::time::{ClockId, clock_gettime};
use support::{Notification, NotifySocket, Scene, pid, t, unix_secs};

const START: Duration = Duration::from_secs(20);

/// Every line of every datagram is one of the keys the daemon may send.
fn assert_only_known_keys(all: &[Notification]) {
    for n in all {
        for line in n.lines() {
            let key = line.split_once('=').map_or(line, |(k, _)| k);
            assert!(
                matches!(
                    key,
                    "READY"
                        | "RELOADING"
                        | "MONOTONIC_USEC"
                        | "STOPPING"
                        | "STATUS"
                        | "WATCHDOG"
                        | "EXTEND_TIMEOUT_USEC"
                ),
                "unexpected sd_notify line {line:?} in {:?}",
                n.text
            );
        }
    }
}

/// CLOCK_MONOTONIC in µs, as systemd reads it for `reload_begin_usec`.
fn monotonic_usec() -> u64 {
    let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("clock_gettime");
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000
}

#[test]
fn slow_start_extends_timeout_then_ready_watchdog_and_stopping() {
    let scene = Scene::new("notify-start").env("STANDIN_START_DELAY", 6);
    let notify = NotifySocket::bind(scene.dir());
    let spawned = Instant::now();
    let mut daemon = scene
        .daemon()
        .notify(&notify)
        .env("WATCHDOG_USEC", "1000000")
        .spawn();
    let record = scene.record();

    let ready = notify.wait("READY=1", Duration::from_secs(30), |n| n.is_ready());
    let listening = record.wait_event("listening", START, |e| e["event"] == "listening");
    assert!(
        unix_secs(ready.at) >= t(&listening),
        "READY=1 arrived {:.3}s before the stand-in listened",
        t(&listening) - unix_secs(ready.at)
    );
    let took = ready.instant - spawned;
    assert!(took >= Duration::from_secs(6), "READY=1 after {took:?}");

    // Let the watchdog tick a little while ready, then stop.
    notify.wait_status("ready; idle; forge; 0 models", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let before_stop = notify.len();
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    std::thread::sleep(Duration::from_millis(200));

    let all = notify.all();
    assert_only_known_keys(&all);
    let ready_at = all.iter().position(|n| n.is_ready()).unwrap();
    assert_eq!(
        all.iter().filter(|n| n.is_ready()).count(),
        1,
        "one READY=1 (no reload happened)"
    );

    // EXTEND_TIMEOUT_USEC: every 5 s while starting (so ≥ 2 in 6 s), none after.
    let extends: Vec<(usize, &Notification)> = all
        .iter()
        .enumerate()
        .filter(|(_, n)| n.single("EXTEND_TIMEOUT_USEC").is_some())
        .collect();
    assert!(extends.len() >= 2, "EXTEND_TIMEOUT_USEC: {extends:#?}");
    assert!(
        extends.iter().all(|(i, _)| *i < ready_at),
        "EXTEND_TIMEOUT_USEC after READY=1"
    );
    for (_, n) in &extends {
        let usec: u64 = n.single("EXTEND_TIMEOUT_USEC").unwrap().parse().unwrap();
        // Each extension must outlast the gap to the next one (5 s).
        assert!(usec > 5_000_000, "EXTEND_TIMEOUT_USEC={usec}");
    }
    let first_gap = extends[1].1.instant - extends[0].1.instant;
    assert!(
        first_gap >= Duration::from_secs(4) && first_gap <= Duration::from_secs(6),
        "EXTEND_TIMEOUT_USEC every {first_gap:?}"
    );

    // STATUS: starting (with the pid), then ready; stopping at the end.
    // (Before the launch, while preflight and layout run, it says it prepares.)
    let statuses: Vec<&str> = all
        .iter()
        .filter_map(|n| n.status())
        .skip_while(|s| s.starts_with("starting: preparing"))
        .collect();
    let ui = pid(&record.starts()[0]);
    assert_eq!(
        statuses.first().copied(),
        Some(format!("starting: waiting for forge to answer (pid {ui}, 0s)").as_str()),
        "{statuses:#?}"
    );
    assert!(
        statuses
            .contains(&format!("starting: waiting for forge to answer (pid {ui}, 5s)").as_str()),
        "{statuses:#?}"
    );
    assert!(statuses.contains(&"ready; idle; forge; 0 models"));
    let starting_last = all
        .iter()
        .rposition(|n| n.status().is_some_and(|s| s.starts_with("starting")))
        .unwrap();
    assert!(starting_last < ready_at, "a starting status after READY=1");

    // WATCHDOG=1 about every 0.5 s (WATCHDOG_USEC=1 s), from start to shutdown.
    let pings: Vec<Instant> = all
        .iter()
        .filter(|n| n.single("WATCHDOG") == Some("1"))
        .map(|n| n.instant)
        .collect();
    let span = pings.last().unwrap().duration_since(pings[0]);
    assert!(
        pings.len() >= 14 && span >= Duration::from_secs(7),
        "{} pings over {span:?}",
        pings.len()
    );
    let gaps: Vec<Duration> = pings.windows(2).map(|w| w[1] - w[0]).collect();
    let max = *gaps.iter().max().unwrap();
    let min = *gaps.iter().min().unwrap();
    assert!(
        max < Duration::from_millis(900),
        "a WATCHDOG=1 gap of {max:?}"
    );
    assert!(min > Duration::from_millis(300), "WATCHDOG=1 every {min:?}");

    // STOPPING=1 exactly once, on SIGTERM, before the UI got its SIGINT.
    let stopping: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, n)| n.single("STOPPING") == Some("1"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(stopping.len(), 1, "{all:#?}");
    assert!(stopping[0] >= before_stop);
    let sigint = record.wait_event("SIGINT", START, |e| e["event"] == "signal");
    assert_eq!(sigint["signal"], "SIGINT");
    // Sent before the UI's SIGINT; the arrival time here may lag under load.
    let lag = unix_secs(all[stopping[0]].at) - t(&sigint);
    assert!(
        lag < 0.5,
        "STOPPING=1 arrived {lag:.3}s after the UI's SIGINT"
    );
    // After STOPPING=1 only status updates (and watchdog pings) may follow.
    for n in &all[stopping[0] + 1..] {
        assert!(
            n.status().is_some() || n.single("WATCHDOG").is_some(),
            "{:?} after STOPPING=1",
            n.text
        );
    }
    let last_status = statuses.last().copied().unwrap();
    assert!(last_status.starts_with("stopping"), "{last_status}");
}

#[test]
fn sighup_sends_reloading_with_monotonic_usec_in_one_datagram_then_ready() {
    let mut scene = Scene::new("notify-reload");
    scene.policy = "immediately".into();
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    notify.wait_status("ready; idle", START);

    // 1. A reload with nothing changed.
    let (reloading, ready) = reload(&daemon, &notify);
    assert!(ready.instant >= reloading.instant);

    // 2. A reload that needs a restart (ui.extra_args): still answered at once,
    //    and the UI restarts under restart.policy = "immediately".
    scene.extra_args = vec!["--xformers".into()];
    scene.write_config();
    let mark = notify.len();
    reload(&daemon, &notify);
    let starts = scene.record().wait_starts(2, START);
    assert!(
        starts[1]["argv"]
            .as_array()
            .unwrap()
            .last()
            .is_some_and(|a| a == "--xformers"),
        "{}",
        starts[1]["argv"]
    );
    notify.wait_status_from(mark, "ready; idle", START);

    let all = notify.all();
    assert_only_known_keys(&all);
    // Without WATCHDOG_USEC there is no watchdog ping.
    assert!(all.iter().all(|n| n.single("WATCHDOG").is_none()));
    // A restart after a reload is no new start-up: READY=1 only for the two reloads
    // (and the first start).
    assert_eq!(all.iter().filter(|n| n.is_ready()).count(), 3, "{all:#?}");
}

/// Sends SIGHUP and checks the notify-reload handshake; returns the
/// `RELOADING=1` datagram and the `READY=1` that followed it.
fn reload(daemon: &support::Daemon, notify: &NotifySocket) -> (Notification, Notification) {
    let mark = notify.len();
    let t0 = monotonic_usec();
    daemon.signal(Signal::SIGHUP);
    let (i, reloading) = notify.wait_from(mark, "RELOADING=1", Duration::from_secs(10), |n| {
        n.text.contains("RELOADING")
    });
    let lines = reloading.lines();
    assert_eq!(lines.len(), 2, "one datagram: {:?}", reloading.text);
    assert_eq!(lines[0], "RELOADING=1", "{:?}", reloading.text);
    let usec: u64 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {:?}", reloading.text))
        .parse()
        .expect("MONOTONIC_USEC is a number");
    let t1 = monotonic_usec();
    assert!(
        (t0..=t1).contains(&usec),
        "MONOTONIC_USEC={usec} not between {t0} (before SIGHUP) and {t1}"
    );
    let (_, ready) = notify.wait_from(
        i + 1,
        "READY=1 after RELOADING=1",
        Duration::from_secs(5),
        |n| n.is_ready(),
    );
    // Only status updates between the two.
    let between: Vec<String> = notify.all()[mark..]
        .iter()
        .filter(|n| !n.is_ready() && n.status().is_none() && !n.text.contains("RELOADING"))
        .map(|n| n.text.clone())
        .collect();
    assert!(between.is_empty(), "{between:?}");
    assert!(
        ready.instant - reloading.instant < Duration::from_secs(2),
        "READY=1 {:?} after RELOADING=1",
        ready.instant - reloading.instant
    );
    (reloading, ready)
}

#[test]
fn runs_the_same_without_notify_socket() {
    let scene = Scene::new("no-notify");
    let mut daemon = scene.daemon().spawn();
    let record = scene.record();
    let start = record.wait_starts(1, START).remove(0);
    record.wait_event("the stand-in to listen", START, |e| {
        e["event"] == "listening"
    });
    // Ready: the supervisor moved on from readiness probes to queue probes.
    record.wait_event("a queue probe", START, |e| {
        e["event"] == "request" && e["path"] == "/internal/pending-tasks"
    });
    daemon.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.try_exit().is_none(),
        "SIGHUP does not end the daemon"
    );
    daemon.signal(Signal::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
    let sig = record.wait_event("SIGINT", START, |e| e["event"] == "signal");
    assert_eq!(sig["signal"], "SIGINT");
    assert_eq!(pid(&sig), pid(&start));
    assert!(
        !daemon.log().contains("sd_notify failed"),
        "{}",
        daemon.log()
    );
}

/// `systemctl start` returns on `READY=1`; the status systemd shows at that moment
/// is the last `STATUS=` before it. It must not claim a problem that does not exist.
#[test]
fn status_at_ready_does_not_claim_failed_queue_probes() {
    let scene = Scene::new("notify-ready-status");
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene.daemon().notify(&notify).spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let all = notify.all();
    let ready_at = all.iter().position(|n| n.is_ready()).unwrap();
    let shown = all[..ready_at]
        .iter()
        .rev()
        .find_map(|n| n.status())
        .expect("a STATUS= before READY=1");
    assert!(shown.starts_with("ready"), "{shown}");
    assert!(!shown.contains("not answering"), "{shown}");
}

/// The notify socket is the supervisor's: a UI that inherited it could send its own
/// READY=1/STATUS= (Python servers do when `NOTIFY_SOCKET` is set), which systemd
/// rejects with a journal warning each time under `NotifyAccess=main`.
#[test]
fn ui_does_not_inherit_notify_socket_or_watchdog() {
    let scene = Scene::new("notify-env");
    let notify = NotifySocket::bind(scene.dir());
    let _daemon = scene
        .daemon()
        .notify(&notify)
        .env("WATCHDOG_USEC", "60000000")
        .spawn();
    notify.wait("READY=1", START, |n| n.is_ready());
    let ui = pid(&scene.record().wait_starts(1, START)[0]);
    let environ = std::fs::read(format!("/proc/{ui}/environ")).expect("read the UI's environ");
    let leaked: Vec<String> = environ
        .split(|b| *b == 0)
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .filter(|e| {
            ["NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID="]
                .iter()
                .any(|k| e.starts_with(k))
        })
        .collect();
    assert!(leaked.is_empty(), "the UI inherited {leaked:?}");
}
