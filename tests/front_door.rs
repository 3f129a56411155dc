//! The front door (issue "The front door"): the daemon owns `ui.port` and the UI
//! runs on a private loopback port behind it. Against the real binary and the
//! stand-in UI:
//! - a client sending small GETs and 1 s jobs without pause across 10 restarts
//!   (config change, crash, `restart --now`, self-upgrade) sees no failed request,
//!   and every job's answer comes back to the client that asked for it;
//! - while the UI is not ready an API request is held (bounded in number and
//!   time, then 503 with `Retry-After`), a browser gets the restarting page, a
//!   websocket is closed with 1012; once ready a websocket is relayed;
//! - a planned restart (`restart`, `restart --now`, a config change) lets the
//!   answers the UI is sending finish before it stops the UI, within a bound;
//! - a request with a body whose UI crashes under it is answered 502, not sent twice;
//! - with `front.auth_file`, every route and the websocket are refused without
//!   credentials, failed attempts are rate-limited, and no secret reaches the log
//!   or the status.

mod support;

use support::env::binary_copy;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use support::http::{Answer, read_head, request, ws_frame};
use support::record::{Rec, events};
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// The UI's pid as the status says, once the UI is ready.
fn ready_pid(s: &Scenario) -> Option<i64> {
    let st = s.status_json();
    (st["state"] == "ready")
        .then(|| st["ui_pid"].as_i64())
        .flatten()
}

/// Waits until a UI other than `old` is ready; returns its pid.
fn wait_new_ui(s: &Scenario, old: i64, what: &str) -> i64 {
    s.wait(SECS(60), what, || ready_pid(s).filter(|p| *p != old))
}

/// What the client threads saw.
#[derive(Default)]
struct Tally {
    gets: AtomicU64,
    jobs: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// Small GETs without pause until `stop`, each on its own connection. Each
/// holds `crash` for reading while it is out: the test takes it for writing
/// to SIGKILL the UI between answers (an answer the UI is sending when it is
/// killed is cut off, and no proxy can mend that).
fn get_loop(
    port: u16,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    crash: Arc<RwLock<()>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + SECS(600);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let out = crash.read().unwrap();
            let answer = request(port, "GET", "/sdapi/v1/options", &[], b"", SECS(120));
            drop(out);
            match answer {
                Ok(a) if a.status == 200 && serde_json::from_slice::<Value>(&a.body).is_ok() => {
                    tally.gets.fetch_add(1, Ordering::Relaxed);
                }
                Ok(a) => tally.fail(format!("GET: {} {}", a.status, a.text())),
                Err(e) => tally.fail(format!("GET: {e}")),
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// 1 s jobs one after the other until `stop`, each with its own prompt, which
/// the answer must carry back. `job` is held while a job is out, so the test
/// can crash the UI between jobs.
fn job_loop(
    port: u16,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    job: Arc<Mutex<()>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + SECS(600);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            n += 1;
            let prompt = format!("front door job {n}");
            let body = json!({"prompt": prompt, "stand_in_seconds": 1.0}).to_string();
            let answer = {
                let _out = job.lock().unwrap();
                request(
                    port,
                    "POST",
                    "/sdapi/v1/txt2img",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                    SECS(180),
                )
            };
            match answer {
                Ok(a) if a.status == 200 => {
                    let v: Value = serde_json::from_slice(&a.body).unwrap_or(Value::Null);
                    if v["parameters"]["prompt"] == prompt.as_str() {
                        tally.jobs.fetch_add(1, Ordering::Relaxed);
                    } else {
                        tally.fail(format!("job {n}: someone else's answer: {}", a.text()));
                    }
                }
                Ok(a) => tally.fail(format!("job {n}: {} {}", a.status, a.text())),
                Err(e) => tally.fail(format!("job {n}: {e}")),
            }
            // A gap between jobs, so a restart that waits for idle gets its turn.
            std::thread::sleep(Duration::from_millis(400));
        }
    })
}

#[test]
fn ten_restarts_and_no_client_sees_a_failed_request() {
    let mut s = Scenario::new("front-ten", "forge");
    let a = binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = binary_copy(s.dir(), "sd-webui-supervisor-b");
    s.conf.executable = Some(a.clone());
    s.conf.idle_grace = Some("300ms".into());
    s.conf.deadline = Some("1h".into());
    s.conf.env.insert("STANDIN_START_DELAY".into(), "1".into());
    s.start_with(|d| d.binary(&a));
    let port = s.conf.port;
    let mut pid = ready_pid(&s).expect("ready after READY=1");

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let job = Arc::new(Mutex::new(()));
    let crash = Arc::new(RwLock::new(()));
    let clients = [
        get_loop(port, stop.clone(), tally.clone(), crash.clone()),
        get_loop(port, stop.clone(), tally.clone(), crash.clone()),
        job_loop(port, stop.clone(), tally.clone(), job.clone()),
    ];
    std::thread::sleep(SECS(2));

    let daemon_pid = s.daemon().pid();
    let mut exe_is_a = true;
    let kinds = [
        "config", "crash", "now", "upgrade", "config", "crash", "now", "upgrade", "config", "now",
    ];
    for (i, kind) in kinds.iter().enumerate() {
        match *kind {
            "config" => {
                s.conf
                    .env
                    .insert("STANDIN_GENERATION".into(), i.to_string());
                s.reload();
                pid = wait_new_ui(&s, pid, "the UI restarted for the config change");
            }
            "crash" => {
                // Between two jobs: a job in flight would die with the UI (and
                // rightly be answered 502); small GETs are in flight all the time.
                // The next job waits until the daemon has seen the UI gone: one
                // sent while the killed process is still being torn down could
                // be accepted by its socket and lost with it (also rightly 502).
                let _between = job.lock().unwrap();
                let no_get_out = crash.write().unwrap();
                kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill the UI");
                drop(no_get_out);
                s.wait(SECS(10), "the daemon to see the UI gone", || {
                    (ready_pid(&s) != Some(pid)).then_some(())
                });
                drop(_between);
                pid = wait_new_ui(&s, pid, "the UI restarted after its crash");
            }
            "now" => {
                // GETs stay out: the stop lets their answers finish first.
                let _between = job.lock().unwrap();
                let (code, text) = s.cli(&["restart", "--now"]);
                assert_eq!(code, 0, "restart --now: {text}");
                // As for the crash: the next job once the UI is seen stopping.
                s.wait(SECS(10), "the daemon to stop the UI", || {
                    (ready_pid(&s) != Some(pid)).then_some(())
                });
                drop(_between);
                pid = wait_new_ui(&s, pid, "the UI restarted at once");
            }
            "upgrade" => {
                // The handoff waits for the requests in flight, jobs included.
                exe_is_a = !exe_is_a;
                let next = if exe_is_a { &a } else { &b };
                s.conf.executable = Some(next.clone());
                s.reload();
                let want = std::fs::canonicalize(next).unwrap();
                s.wait(SECS(30), "the daemon to run the new binary", || {
                    let exe = std::fs::read_link(format!("/proc/{daemon_pid}/exe")).ok()?;
                    (exe == want && ready_pid(&s).is_some()).then_some(())
                });
                assert_eq!(ready_pid(&s), Some(pid), "a self-upgrade keeps the UI");
            }
            _ => unreachable!(),
        }
        // Some traffic on each new UI before the next restart.
        std::thread::sleep(Duration::from_millis(1500));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client thread");
    }
    let failures = tally.failures.lock().unwrap().clone();
    let status = s.status_json();
    let front = &status["front"];
    let (gets, jobs) = (
        tally.gets.load(Ordering::Relaxed),
        tally.jobs.load(Ordering::Relaxed),
    );
    eprintln!("front door: {gets} GETs, {jobs} jobs across 10 restarts; front = {front}");
    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:#?}\n{}",
        failures.len(),
        s.diagnostics()
    );
    assert_eq!(s.daemon().pid(), daemon_pid);
    assert!(
        gets > 200 && jobs > 8,
        "too little traffic: {gets} GETs, {jobs} jobs"
    );
    // The clients really were held through the restarts, not just lucky.
    assert!(front["held_total"].as_u64().unwrap() > 5, "{front}");
    assert_eq!(front["rejected"]["ui-gone"], 0, "{front}");
    assert_eq!(front["held_now"], 0, "{front}");
    let launches: Vec<_> = events(&s.records(), "listening")
        .iter()
        .map(|r| r.v["port"].as_u64().unwrap())
        .collect();
    assert!(
        launches.iter().all(|p| *p != u64::from(port)),
        "the UI never binds ui.port itself: {launches:?}"
    );
    assert_eq!(
        launches.len(),
        9,
        "1 start + 8 restarts (2 upgrades keep the UI)"
    );
}

/// Waits until the UI with `pid` got `GET path` (`/sdapi/v1/options?…`, told
/// apart by its query).
fn wait_for_options_get(s: &Scenario, pid: i64, path: &str, what: &str) {
    let query = path.split_once('?').map_or("", |(_, q)| q);
    s.wait(SECS(10), what, || {
        let asked = s.requests("GET", "/sdapi/v1/options");
        let this = |r: &&Rec| r.v["query"].as_str() == Some(query);
        asked
            .iter()
            .filter(this)
            .any(|r| i64::from(r.pid) == pid)
            .then_some(())
    });
}

/// The UI is stopped only once the answers it is sending are out: a slow GET in
/// flight at `restart` (up to 5 s) and at `restart --now` (which does not wait
/// for jobs: up to 1 s) arrives whole. An answer that takes longer than the
/// bound does not keep the UI from restarting.
#[test]
fn a_planned_restart_lets_the_answers_in_flight_finish() {
    let mut s = Scenario::new("front-drain", "forge");
    s.start();
    let port = s.conf.port;
    let mut pid = ready_pid(&s).expect("ready after READY=1");
    for (how, path) in [
        (&["restart"][..], "/sdapi/v1/options?stand_in_body_delay=2"),
        (
            &["restart", "--now"][..],
            "/sdapi/v1/options?stand_in_body_delay=0.6",
        ),
    ] {
        let slow = std::thread::spawn(move || request(port, "GET", path, &[], b"", SECS(60)));
        wait_for_options_get(&s, pid, path, "the UI to get the slow GET");
        let (code, text) = s.cli(how);
        assert_eq!(code, 0, "{how:?}: {text}");
        let answer = slow.join().unwrap();
        match answer {
            Ok(a) if a.status == 200 => {
                let v: Value = serde_json::from_slice(&a.body).expect("the whole JSON");
                assert!(v.is_object(), "{v}");
            }
            other => panic!("{how:?}: the slow answer: {other:?}\n{}", s.diagnostics()),
        }
        pid = wait_new_ui(&s, pid, "the UI restarted");
    }
    // An answer longer than the bound: the restart goes ahead without it.
    let path = "/sdapi/v1/options?stand_in_body_delay=600";
    let _endless = std::thread::spawn(move || request(port, "GET", path, &[], b"", SECS(700)));
    wait_for_options_get(&s, pid, path, "the UI to get the endless GET");
    let (code, text) = s.cli(&["restart"]);
    assert_eq!(code, 0, "restart: {text}");
    wait_new_ui(&s, pid, "the UI restarted past the endless answer");
}

/// Opens a websocket to `path` with extra header lines; returns the answer head
/// and the stream.
fn ws_handshake(port: u16, path: &str, extra: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(SECS(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let head = read_head(&mut s);
    (head, s)
}

#[test]
fn while_the_ui_starts_requests_are_held_pages_shown_and_websockets_closed() {
    let mut s = Scenario::new("front-closed", "comfyui");
    s.conf.env.insert("STANDIN_START_DELAY".into(), "6".into());
    s.conf.front.insert("max_held".into(), 2.into());
    s.conf.front.insert("hold_timeout".into(), "2s".into());
    s.write_config();
    s.spawn();
    let port = s.conf.port;
    s.wait(SECS(10), "the front door to listen", || {
        TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    });

    // A browser gets the restarting page, which reloads itself.
    let page = request(
        port,
        "GET",
        "/",
        &[("Accept", "text/html,*/*")],
        b"",
        SECS(5),
    )
    .unwrap();
    assert_eq!(page.status, 503);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.header("retry-after").is_some());
    let html = page.text();
    assert!(
        html.contains("The UI is restarting") && html.contains("location.reload()"),
        "{html}"
    );
    let front = request(
        port,
        "GET",
        "/.well-known/sd-webui-supervisor/front",
        &[],
        b"",
        SECS(5),
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&front.body).unwrap();
    assert_eq!(v["ready"], false, "{v}");

    // A websocket is accepted and closed with 1012 (Service Restart).
    let (head, mut ws) = ws_handshake(port, "/ws?clientId=t", "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, payload) = ws_frame(&mut ws).expect("a close frame");
    assert_eq!(op, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1012);

    // Two API requests are held (max_held = 2); a third is answered at once.
    let t0 = Instant::now();
    let held: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || request(port, "GET", "/queue", &[], b"", SECS(10))))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let third = request(port, "GET", "/queue", &[], b"", SECS(5)).unwrap();
    assert_eq!(third.status, 503, "{}", third.text());
    assert!(third.text().contains("front.max_held"), "{}", third.text());
    assert!(t0.elapsed() < SECS(2));
    // ... and the held ones get 503 with Retry-After after hold_timeout (2 s).
    for h in held {
        let a: Answer = h.join().unwrap().expect("an answer");
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.header("retry-after").is_some());
        assert!(a.text().contains("hold_timeout"), "{}", a.text());
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(1900),
        "{:?}",
        t0.elapsed()
    );

    // Once ready, a held request goes through, and a websocket is relayed.
    let late = std::thread::spawn(move || {
        let deadline = Instant::now() + SECS(30);
        loop {
            let a = request(port, "GET", "/queue", &[], b"", SECS(10)).unwrap();
            if a.status == 200 || Instant::now() > deadline {
                return a;
            }
        }
    });
    let a = late.join().unwrap();
    assert_eq!(a.status, 200, "{}", a.text());
    let q: Value = serde_json::from_slice(&a.body).unwrap();
    assert!(q["queue_running"].is_array(), "{q}");
    let (head, mut ws) = ws_handshake(port, "/ws?clientId=t", "");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (op, payload) = ws_frame(&mut ws).expect("the UI's first message");
    assert_eq!(op, 1, "a text frame");
    let msg: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(msg["type"], "status", "{msg}");

    // The UI crashes: the relayed websocket ends (the frontend reconnects).
    let pid = s.status_json()["ui_pid"].as_i64().unwrap();
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    ws.set_read_timeout(Some(SECS(10))).unwrap();
    let mut rest = Vec::new();
    let ended = ws.read_to_end(&mut rest);
    assert!(ended.is_ok(), "the websocket ends with the UI: {ended:?}");

    let st = s.status_json();
    support::control::assert_fits_schema(&st);
    let f = &st["front"]["rejected"];
    assert_eq!(f["restarting-page"], 1, "{f}");
    assert_eq!(f["websocket-closed"], 1, "{f}");
    assert_eq!(f["hold-full"], 1, "{f}");
    // The two above, and the late client's holds while the UI still started.
    assert!(f["hold-timeout"].as_u64().unwrap() >= 2, "{f}");
    assert_eq!(st["front"]["websockets_total"], 1, "{st}");
}

#[test]
fn a_job_whose_ui_crashes_is_answered_502_and_not_sent_again() {
    let mut s = Scenario::new("front-502", "forge");
    s.start();
    let port = s.conf.port;
    let job = std::thread::spawn(move || {
        let body = json!({"prompt": "dies", "stand_in_seconds": 30.0}).to_string();
        request(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            &[],
            body.as_bytes(),
            SECS(60),
        )
    });
    let start = s.wait_event("job_start", 1, SECS(10));
    kill(Pid::from_raw(start.pid as i32), Signal::SIGKILL).unwrap();
    let a = job.join().unwrap().expect("an answer");
    assert_eq!(a.status, 502, "{}", a.text());
    let v: Value = serde_json::from_slice(&a.body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("crashed"), "{v}");
    s.wait_listening(2, SECS(30));
    std::thread::sleep(SECS(1));
    assert_eq!(
        events(&s.records(), "job_start").len(),
        1,
        "never sent twice"
    );
}

#[test]
fn with_auth_every_route_and_the_websocket_need_credentials() {
    let mut s = Scenario::new("front-auth", "comfyui");
    let secret_pw = "pw-Zq8Kx1";
    let token = "tok-Hw5Jr7Lm";
    let auth = s.path("front-auth");
    std::fs::write(&auth, format!("# users\nalice:{secret_pw}\n{token}\n")).unwrap();
    s.conf
        .front
        .insert("auth_file".into(), auth.display().to_string().into());
    s.start();
    let port = s.conf.port;
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("alice:{secret_pw}")
        )
    );
    let bearer = format!("Bearer {token}");
    let routes = [
        ("GET", "/"),
        ("GET", "/queue"),
        ("GET", "/history"),
        ("GET", "/system_stats"),
        ("GET", "/view?filename=x.png&type=output"),
        ("GET", "/api/queue"),
        ("POST", "/prompt"),
        ("GET", "/.well-known/sd-webui-supervisor/front"),
        ("GET", "/file=/etc/passwd"),
    ];
    for (method, path) in routes {
        let none = request(port, method, path, &[], b"", SECS(5)).unwrap();
        assert_eq!(none.status, 401, "{method} {path} without credentials");
        assert!(
            none.header("www-authenticate")
                .unwrap()
                .starts_with("Basic")
        );
        for good in [&basic, &bearer] {
            let a = request(port, method, path, &[("Authorization", good)], b"", SECS(5)).unwrap();
            assert_ne!(a.status, 401, "{method} {path} with credentials");
        }
    }
    let (head, _) = ws_handshake(port, "/ws", "");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (head, _) = ws_handshake(port, "/ws", &format!("Authorization: {basic}\r\n"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // The UI never sees the front door's credentials (nor did the prompt go
    // through without them).
    assert!(!s.requests("POST", "/prompt").is_empty());

    // Wrong credentials: 401 until the address has used up its attempts, then 429
    // even for the right ones.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let a = request(
            port,
            "GET",
            "/queue",
            &[("Authorization", "Bearer wrong")],
            b"",
            SECS(5),
        )
        .unwrap();
        statuses.push(a.status);
    }
    assert!(
        statuses.contains(&401) && statuses.ends_with(&[429, 429]),
        "{statuses:?}"
    );
    let a = request(
        port,
        "GET",
        "/queue",
        &[("Authorization", &bearer)],
        b"",
        SECS(5),
    )
    .unwrap();
    assert_eq!(a.status, 429);
    assert!(a.header("retry-after").is_some());

    let status = s.status_json().to_string();
    let log = s.daemon().log();
    let config = std::fs::read_to_string(&s.config).unwrap();
    for secret in [secret_pw, token] {
        assert!(!log.contains(secret), "the log shows a secret");
        assert!(!status.contains(secret), "the status shows a secret");
        assert!(
            !config.contains(secret),
            "the config holds only the file's path"
        );
    }
    // The counters as an operator scrapes them.
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--unix-socket"])
        .arg(&s.conf.socket)
        .arg("http://localhost/metrics")
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let scrape = support::control::scrape(&text);
    let sample = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|x| x.metric == name && x.labels.get(label.0) == Some(label.1))
            .map(|x| match x.value {
                prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
                _ => -1.0,
            })
    };
    let p = "sd_webui_supervisor_front";
    assert!(
        sample(&format!("{p}_rejected_total"), ("reason", "unauthorized")).unwrap() >= 11.0,
        "{text}"
    );
    assert!(
        sample(&format!("{p}_rejected_total"), ("reason", "rate-limited")).unwrap() >= 3.0,
        "{text}"
    );
    assert!(
        sample(&format!("{p}_requests_total"), ("class", "2xx")).unwrap() >= 1.0,
        "{text}"
    );
    assert!(
        support::control::has_metric(&text, &format!("{p}_latency_seconds_count")),
        "{text}"
    );
    assert!(!text.contains(secret_pw) && !text.contains(token));
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.daemon().pid())).unwrap();
    assert!(!String::from_utf8_lossy(&cmdline).contains(secret_pw));
}

#[test]
fn a_taken_ui_port_stops_the_daemon_at_start_with_the_reason() {
    let s = support::Scene::new("front-taken");
    let _holder = std::net::TcpListener::bind(("127.0.0.1", s.conf.port)).expect("bind");
    let mut d = s.daemon().spawn();
    let status = d.wait_exit(SECS(20));
    assert!(!status.success(), "{status:?}");
    let log = d.log();
    assert!(
        log.contains(&format!(
            "front door: cannot listen on 127.0.0.1:{} (ui.port)",
            s.conf.port
        )),
        "{log}"
    );
    assert!(s.record().starts().is_empty(), "no UI launched");
}
