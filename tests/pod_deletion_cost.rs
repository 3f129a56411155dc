//! The Pod's deletion cost (`kubernetes.pod_deletion_cost`,
//! docs/containers.md#kubernetes), with the real binary, the stand-in UI and a
//! fake Kubernetes API server on loopback that records every request:
//!
//! - the supervisor PATCHes its own Pod (`/api/v1/namespaces/<ns>/pods/<name>`,
//!   `application/merge-patch+json`, the service account's bearer token) with
//!   the annotation at the jobs running and waiting: 0 at the start, 3 with one
//!   job running and two waiting, back to 0 once idle; only on a change, at
//!   most once a second; the status and `/metrics` say what was accepted;
//! - a rotated token (the kubelet rewrites the file) is what the next patch
//!   carries;
//! - an API server that answers 500 is retried with a backoff, warned about
//!   once, shown in the status, and once it recovers gets the latest value;
//! - the token never appears in the daemon's log, not even where the API
//!   server's error message repeats it.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sd_webui_supervisor::control::client::Client;
use sd_webui_supervisor::kube::{ANNOTATION, API_ENV, SERVICE_ACCOUNT_ENV};
use serde_json::Value;
use support::control::scrape;
use support::http::read_head;
use support::{Scenario, txt2img};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const NAMESPACE: &str = "gpu-pool";
const POD: &str = "sd-webui-7d9f-abcde";

/// One request the fake API server got.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Value,
    /// The status it was answered with.
    answered: u16,
}

impl Seen {
    /// The annotation's value in the merge patch, checking the patch's shape:
    /// nothing but that one annotation.
    fn cost(&self) -> String {
        let annotations = self.body["metadata"]["annotations"]
            .as_object()
            .unwrap_or_else(|| panic!("not a metadata.annotations patch: {}", self.body));
        assert_eq!(annotations.len(), 1, "{}", self.body);
        assert_eq!(
            self.body.as_object().map(|o| o.len()),
            Some(1),
            "{}",
            self.body
        );
        assert_eq!(self.body["metadata"].as_object().map(|o| o.len()), Some(1));
        annotations[ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("the annotation as a string: {}", self.body))
            .to_string()
    }
}

#[derive(Default)]
struct State {
    seen: Vec<Seen>,
    /// Answer every request with 500 (and an error message that repeats the
    /// token the request carried, as a careless proxy might).
    failing: bool,
}

/// A fake API server on 127.0.0.1: records each request, answers 200 with a
/// Pod, or 500 while failing. One request per connection.
#[derive(Clone)]
struct FakeApi {
    port: u16,
    state: Arc<Mutex<State>>,
}

impl FakeApi {
    fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake API server");
        let port = listener.local_addr().expect("its address").port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = Arc::clone(&shared);
                std::thread::spawn(move || serve(stream, &state));
            }
        });
        FakeApi { port, state }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    fn set_failing(&self, failing: bool) {
        self.state.lock().unwrap().failing = failing;
    }
}

fn serve(mut stream: TcpStream, state: &Mutex<State>) {
    let _ = stream.set_read_timeout(Some(SECS(10)));
    let head = read_head(&mut stream);
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let length: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let content_type = header("content-type");
    let authorization = header("authorization");
    let mut body = vec![0; length];
    if stream.read_exact(&mut body).is_err() {
        return;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (code, answer) = {
        let mut st = state.lock().unwrap();
        let (code, answer) = if st.failing {
            let token = authorization.clone().unwrap_or_default();
            let message = format!("etcdserver: request timed out (request carried {token})");
            (
                500,
                serde_json::json!({"kind": "Status", "status": "Failure", "message": message, "code": 500}),
            )
        } else {
            (
                200,
                serde_json::json!({"kind": "Pod", "metadata": {"name": POD, "namespace": NAMESPACE}}),
            )
        };
        st.seen.push(Seen {
            at: Instant::now(),
            method,
            path,
            content_type,
            authorization,
            body,
            answered: code,
        });
        (code, answer.to_string())
    };
    let reason = if code == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    );
}

/// A service account directory as the kubelet mounts it: `token` and
/// `namespace` (no `ca.crt`: the fake server is plain HTTP).
fn service_account(dir: &Path, token: &str) {
    std::fs::create_dir_all(dir).expect("the service account dir");
    write_token(dir, token);
    std::fs::write(dir.join("namespace"), NAMESPACE).expect("namespace");
}

/// Replaces the token as the kubelet rotates it: a new file renamed over the
/// old one.
fn write_token(dir: &Path, token: &str) {
    let tmp = dir.join("..token.tmp");
    std::fs::write(&tmp, format!("{token}\n")).expect("token");
    std::fs::rename(&tmp, dir.join("token")).expect("rename the token");
}

/// A token that appears nowhere else.
fn token(name: &str) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.{name}-{}-{}",
        std::process::id(),
        support::now_unix() as u64
    )
}

/// The scenario with `[kubernetes] pod_deletion_cost = true`, started against
/// `api` with the service account in `sa`.
fn start(name: &str, api: &FakeApi, token: &str) -> Scenario {
    let mut s = Scenario::new(name, "forge");
    s.conf.poll_interval = Some("100ms".into());
    let mut table = toml::Table::new();
    table.insert("pod_deletion_cost".into(), true.into());
    s.conf.sections.insert("kubernetes".into(), table);
    let sa = s.path("serviceaccount");
    service_account(&sa, token);
    let url = api.url();
    s.start_with(|b| {
        b.env(API_ENV, url)
            .env(SERVICE_ACCOUNT_ENV, sa.as_os_str())
            .env("POD_NAME", POD)
            .without_env("POD_NAMESPACE")
            .env("RUST_LOG", "info,sd_webui_supervisor=debug")
    });
    s
}

/// Waits until the fake server has seen a patch matching `f`; returns it.
fn wait_patch(s: &Scenario, api: &FakeApi, what: &str, f: impl Fn(&Seen) -> bool) -> Seen {
    s.wait(SECS(30), what, || {
        api.seen().into_iter().rev().find(|p| f(p))
    })
}

fn metric(s: &Scenario, name: &str) -> Option<f64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let text = rt
        .block_on(Client::new(&s.conf.socket).metrics())
        .expect("GET /metrics");
    scrape(&text)
        .samples
        .into_iter()
        .find(|m| m.metric == name)
        .and_then(|m| match m.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn assert_no_token_in_log(s: &Scenario, tokens: &[&str]) {
    let log = s.daemon().log();
    for t in tokens {
        assert!(
            !log.contains(t),
            "the token {t} is in the daemon's log:\n{log}"
        );
    }
}

#[test]
fn the_annotation_follows_the_queue_and_the_rotated_token() {
    let api = FakeApi::start();
    let first_token = token("first");
    let s = start("deletion-cost-queue", &api, &first_token);
    let sa = s.path("serviceaccount");

    // At the start: 0 (whatever an earlier container left there).
    let zero = wait_patch(&s, &api, "the first patch", |p| p.answered == 200);
    assert_eq!(zero.method, "PATCH");
    assert_eq!(
        zero.path,
        format!("/api/v1/namespaces/{NAMESPACE}/pods/{POD}")
    );
    assert_eq!(
        zero.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        zero.authorization.as_deref(),
        Some(format!("Bearer {first_token}").as_str())
    );
    assert_eq!(zero.cost(), "0");
    assert_eq!(
        zero.body,
        serde_json::json!({"metadata": {"annotations": {ANNOTATION: "0"}}})
    );

    // One job runs, two wait: 3.
    let jobs = vec![txt2img(s.conf.port, 6.0)];
    s.wait_event("job_start", 1, SECS(10));
    let jobs: Vec<_> = jobs
        .into_iter()
        .chain([txt2img(s.conf.port, 1.5), txt2img(s.conf.port, 1.5)])
        .collect();
    let three = wait_patch(&s, &api, "the cost at 3", |p| p.cost() == "3");
    assert_eq!(three.answered, 200);
    let status = s.wait(SECS(10), "the status to say 3", || {
        let st = s.status_json();
        (st["pod_deletion_cost"]["value"] == 3).then_some(st)
    });
    let cost = &status["pod_deletion_cost"];
    assert_eq!(cost["pod"], format!("{NAMESPACE}/{POD}"));
    assert_eq!(cost["error"], Value::Null);
    assert_eq!(cost["failures"], 0);
    support::control::assert_fits_schema(&status);
    assert_eq!(
        metric(&s, "sd_webui_supervisor_pod_deletion_cost"),
        Some(3.0)
    );
    let (code, text) = s.cli(&["status"]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("Pod cost:  3 on pod {NAMESPACE}/{POD}\n")),
        "{text}"
    );

    // The kubelet rotates the token while the first job runs: the next patch
    // (2, once it is done) carries the new one.
    let second_token = token("second");
    write_token(&sa, &second_token);
    let rotated_at = Instant::now();
    for job in jobs {
        assert_eq!(job.join().expect("a job"), Ok(200));
    }
    // Idle again: 0.
    let idle = wait_patch(&s, &api, "the cost back at 0", |p| {
        p.at > three.at && p.cost() == "0"
    });
    assert_eq!(idle.answered, 200);
    s.wait(SECS(10), "the status to say 0", || {
        (s.status_json()["pod_deletion_cost"]["value"] == 0).then_some(())
    });

    let patches = api.seen();
    let after_rotation: Vec<&Seen> = patches.iter().filter(|p| p.at > rotated_at).collect();
    assert!(!after_rotation.is_empty(), "{patches:?}");
    for p in &after_rotation {
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!("Bearer {second_token}").as_str()),
            "a patch after the rotation: {p:?}"
        );
    }
    let costs: Vec<String> = patches.iter().map(Seen::cost).collect();
    eprintln!("patched costs: {costs:?}");
    // Only on a change, and at most one a second.
    for pair in patches.windows(2) {
        assert_ne!(
            pair[0].cost(),
            pair[1].cost(),
            "the same value twice: {costs:?}"
        );
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(900),
            "two patches {gap:?} apart: {costs:?}"
        );
    }
    assert!(patches.iter().all(|p| p.answered == 200));
    assert_no_token_in_log(&s, &[&first_token, &second_token]);
}

#[test]
fn a_failing_api_server_is_retried_and_then_gets_the_latest_value() {
    let api = FakeApi::start();
    api.set_failing(true);
    let secret = token("failing");
    let s = start("deletion-cost-failing", &api, &secret);

    // The start's 0 fails; one job runs and one waits meanwhile.
    wait_patch(&s, &api, "a failed patch", |p| p.answered == 500);
    let jobs = vec![txt2img(s.conf.port, 12.0)];
    s.wait_event("job_start", 1, SECS(10));
    let jobs: Vec<_> = jobs
        .into_iter()
        .chain([txt2img(s.conf.port, 1.0)])
        .collect();
    // Tried again (with a backoff), and again.
    s.wait(SECS(20), "three failed patches", || {
        (api.seen().iter().filter(|p| p.answered == 500).count() >= 3).then_some(())
    });
    let failed = api.seen();
    let gaps: Vec<Duration> = failed.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(
        gaps.windows(2).all(|g| g[1] >= g[0]),
        "the backoff grows: {gaps:?}"
    );
    let status = s.status_json();
    let cost = &status["pod_deletion_cost"];
    assert_eq!(cost["value"], Value::Null, "nothing accepted yet: {cost}");
    let error = cost["error"].as_str().expect("the error in the status");
    assert!(error.contains("500"), "{error}");
    assert!(!error.contains(&secret), "the token in the status: {error}");
    assert!(cost["failures"].as_u64().expect("failures") >= 3, "{cost}");
    support::control::assert_fits_schema(&status);
    assert!(metric(&s, "sd_webui_supervisor_pod_deletion_cost_failures_total").unwrap() >= 3.0);
    assert_eq!(metric(&s, "sd_webui_supervisor_pod_deletion_cost"), None);

    // The API server recovers: the next patch is the latest value, 2 (the
    // 0 it failed to take is long out of date).
    let recovered_at = Instant::now();
    api.set_failing(false);
    let ok = wait_patch(&s, &api, "a patch after the recovery", |p| {
        p.answered == 200
    });
    assert!(ok.at > recovered_at);
    assert_eq!(ok.cost(), "2", "{:?}", api.seen());
    let status = s.wait(SECS(10), "the status to say 2", || {
        let st = s.status_json();
        (st["pod_deletion_cost"]["value"] == 2).then_some(st)
    });
    assert_eq!(status["pod_deletion_cost"]["error"], Value::Null);
    for job in jobs {
        assert_eq!(job.join().expect("a job"), Ok(200));
    }
    wait_patch(&s, &api, "the cost back at 0", |p| {
        p.answered == 200 && p.at > ok.at && p.cost() == "0"
    });

    // One warning for the many failures, one line when it recovered.
    let log = s.daemon().log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("cannot patch the Pod's deletion cost"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("500"), "{log}");
    assert!(log.contains("patched again"), "{log}");
    assert_no_token_in_log(&s, &[&secret]);
}
