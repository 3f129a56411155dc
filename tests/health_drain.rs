//! The scheduler-facing endpoints of the real daemon with the stand-in UI:
//! `/healthz` and `/readyz` (unauthenticated, on the TCP listener and the unix
//! socket), and the drain (`wait-idle --drain`, `POST /v1/drain`) that a
//! Kubernetes `preStop` hook runs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use support::container::Listening;
use support::{Scene, daemon_bin, unix_secs, wait_for};

fn start(scene: Scene) -> (Listening, support::Daemon) {
    let builder = scene.daemon();
    let l = Listening::new(scene);
    let daemon = builder.spawn();
    l.wait_ready(Duration::from_secs(30));
    (l, daemon)
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn readyz_flips_to_503_during_a_ui_restart_and_back_while_healthz_stays_200() {
    let (l, _daemon) = start(Scene::new("readyz-restart").env("STANDIN_START_DELAY", "2"));
    let (code, body) = l.get("/readyz").expect("/readyz");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["state"], "ready");
    // No token needed for these two, unlike the rest of the API.
    assert_eq!(l.get("/healthz").expect("/healthz").0, 200);
    assert_eq!(l.get("/v1/status").expect("/v1/status").0, 401);

    let (code, body) = l.post("/v1/restart", r#"{"when":"now"}"#).expect("restart");
    assert_eq!(code, 200, "{body}");
    let mut readyz = vec![(200, serde_json::Value::from("ready"))];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (health, body) = l.get("/healthz").expect("/healthz answers throughout");
        assert_eq!(health, 200, "/healthz during the restart: {body}");
        let (code, body) = l.get("/readyz").expect("/readyz answers throughout");
        if readyz.last().map(|(c, _)| *c) != Some(code) {
            readyz.push((code, json(&body)["state"].clone()));
        }
        if readyz.len() >= 3 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let codes: Vec<u16> = readyz.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        [200, 503, 200],
        "/readyz over the restart: {readyz:?}"
    );
    assert_ne!(readyz[1].1, "ready", "{readyz:?}");
}

#[test]
fn the_unix_socket_serves_the_health_endpoints_too() {
    let (l, _daemon) = start(Scene::new("health-socket"));
    let socket = l.scene.dir().join("control.sock");
    for (path, want) in [("/healthz", "200"), ("/readyz", "200")] {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .arg(format!("http://localhost{path}"))
            .output()
            .expect("curl runs");
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{path}");
    }
}

#[test]
fn a_drain_during_a_job_returns_only_after_it_with_readyz_503_draining_meanwhile() {
    let (l, _daemon) = start(Scene::new("drain-cli"));
    let job = l.start_job(4);
    let socket = l.scene.dir().join("control.sock");
    let mut drain = Command::new(daemon_bin())
        .args(["wait-idle", "--drain", "--socket"])
        .arg(&socket)
        .spawn()
        .expect("spawn wait-idle --drain");

    let (code, body) = wait_for("/readyz to say draining", Duration::from_secs(5), || {
        l.get("/readyz")
            .filter(|(_, b)| json(b)["draining"] == true)
    });
    assert_eq!(code, 503, "{body}");
    assert!(
        drain.try_wait().expect("try_wait").is_none(),
        "the drain returned while the job runs"
    );
    let status = wait_for("the drain to return", Duration::from_secs(30), || {
        drain.try_wait().expect("try_wait")
    });
    let returned = unix_secs(SystemTime::now());
    assert!(status.success(), "wait-idle --drain: {status}");
    let end = l
        .scene
        .record()
        .wait_event("job_end", Duration::from_secs(2), |e| {
            e["event"] == "job_end"
        });
    assert!(
        support::t(&end) <= returned,
        "the job ended at {} but the drain returned at {returned}",
        support::t(&end)
    );
    job.join().expect("job thread");
    // Still draining: no new work is routed to a pod on its way out.
    let (code, body) = l.get("/readyz").expect("/readyz");
    assert_eq!((code, json(&body)["draining"].clone()), (503, true.into()));
    let shown = Command::new(daemon_bin())
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(
        text.contains("Draining:"),
        "`status` shows the drain: {text}"
    );
}

#[test]
fn the_http_drain_waits_for_the_job_and_times_out_with_504() {
    let (l, _daemon) = start(Scene::new("drain-http"));
    let _job = l.start_job(3);
    let (code, body) = l.post("/v1/drain?timeout=500ms", "").expect("drain");
    assert_eq!(code, 504, "a job of 3 s outlasts 500 ms: {body}");
    let (code, _) = l.get("/readyz").expect("/readyz");
    assert_eq!(code, 503, "draining after a timed-out drain too");
    let t0 = Instant::now();
    let (code, body) = l.post("/v1/drain?timeout=30s", "").expect("drain");
    assert_eq!(code, 200, "{body}");
    assert!(
        t0.elapsed() > Duration::from_millis(500),
        "returned before the job ended"
    );
    assert_eq!(json(&body)["draining"], true, "{body}");
}
