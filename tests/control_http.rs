//! Handler tests of the HTTP control API: the `Router` driven with `oneshot`,
//! no socket, against a fake core.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use sd_webui_supervisor::control::http::router;
use sd_webui_supervisor::control::token::{Token, require_token};
use sd_webui_supervisor::control::wire::{ErrorBody, RestartReply};
use sd_webui_supervisor::supervisor::protocol::{Queue, ReloadOutcome, ReloadResult, Snapshot};
use support::control::{FakeCore, busy_pending, outcome, ready_idle, starting};
use tower::ServiceExt;

async fn send(app: axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>, Option<String>) {
    let resp = app.oneshot(req).await.expect("router answers");
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, body, ctype)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

#[tokio::test]
async fn status_is_the_snapshot_as_json() {
    let core = FakeCore::new(busy_pending());
    let (status, body, ctype) = send(router(core.handle.clone()), get("/v1/status")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype.as_deref(), Some("application/json"));
    let got: Snapshot = serde_json::from_slice(&body).unwrap();
    assert_eq!(got, busy_pending());
}

#[tokio::test]
async fn status_follows_new_snapshots() {
    let core = FakeCore::new(starting());
    core.publish(|s| *s = ready_idle());
    let (_, body, _) = send(router(core.handle.clone()), get("/v1/status")).await;
    let got: Snapshot = serde_json::from_slice(&body).unwrap();
    assert_eq!(got, ready_idle());
}

#[tokio::test]
async fn reload_applied_and_unchanged_are_200() {
    let core = FakeCore::new(ready_idle());
    for result in ["applied", "unchanged"] {
        core.set_reload(outcome(result));
        let (status, body, _) = send(router(core.handle.clone()), post("/v1/reload", "")).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        let got: ReloadOutcome = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, outcome(result));
    }
    assert_eq!(core.seen(), ["reload", "reload"]);
}

#[tokio::test]
async fn reload_rejected_is_422_with_the_errors() {
    let core = FakeCore::new(ready_idle());
    core.set_reload(outcome("rejected"));
    let (status, body, _) = send(router(core.handle.clone()), post("/v1/reload", "")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let got: ReloadOutcome = serde_json::from_slice(&body).unwrap();
    assert_eq!(got.result, ReloadResult::Rejected);
    assert_eq!(got.errors.len(), 2);
    assert!(got.errors[0].contains("ui.port"));
}

#[tokio::test]
async fn restart_defaults_to_idle_and_accepts_now() {
    let core = FakeCore::new(ready_idle());
    for (body, when) in [
        ("", "idle"),
        ("{}", "idle"),
        (r#"{"when":"idle"}"#, "idle"),
        (r#"{"when":"now"}"#, "now"),
    ] {
        let (status, answer, _) =
            send(router(core.handle.clone()), post("/v1/restart", body)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let reply: RestartReply = serde_json::from_slice(&answer).unwrap();
        assert!(reply.status_line.contains(when), "{}", reply.status_line);
    }
    assert_eq!(
        core.seen(),
        [
            "restart idle",
            "restart idle",
            "restart idle",
            "restart now"
        ]
    );
}

#[tokio::test]
async fn restart_with_a_bad_body_is_400_and_not_forwarded() {
    let core = FakeCore::new(ready_idle());
    for body in [
        r#"{"when":"later"}"#,
        "not json",
        r#"{"when":"now","x":1}"#,
        r#"["now"]"#,
        "[]",
        r#""now""#,
        "null",
        "1",
    ] {
        let (status, answer, _) =
            send(router(core.handle.clone()), post("/v1/restart", body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let err: ErrorBody = serde_json::from_slice(&answer).unwrap();
        assert!(err.error.contains("when"), "{}", err.error);
    }
    assert!(core.seen().is_empty());
}

#[tokio::test]
async fn wait_idle_answers_at_once_when_idle() {
    let core = FakeCore::new(ready_idle());
    let (status, body, _) =
        send(router(core.handle.clone()), get("/v1/wait-idle?timeout=5s")).await;
    assert_eq!(status, StatusCode::OK);
    let got: Snapshot = serde_json::from_slice(&body).unwrap();
    assert_eq!(got, ready_idle());
}

#[tokio::test]
async fn wait_idle_waits_for_the_queue_to_drain() {
    let core = FakeCore::new(busy_pending());
    let app = router(core.handle.clone());
    let waiter = tokio::spawn(send(app, get("/v1/wait-idle?timeout=10s")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    core.publish(|s| s.queue = Some(Queue::default()));
    // The pending restart (when-idle) comes next: idle means after it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiter.is_finished(),
        "answered while a restart was pending"
    );
    core.publish(|s| s.restart_pending = None);
    let (status, body, _) = waiter.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let got: Snapshot = serde_json::from_slice(&body).unwrap();
    assert_eq!(got.queue, Some(Queue::default()));
}

#[tokio::test]
async fn wait_idle_times_out_with_504() {
    let core = FakeCore::new(busy_pending());
    let (status, body, _) = send(
        router(core.handle.clone()),
        get("/v1/wait-idle?timeout=150ms"),
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(err.error.contains("idle"), "{}", err.error);
}

#[tokio::test]
async fn wait_idle_with_a_bad_timeout_is_400() {
    let core = FakeCore::new(ready_idle());
    let (status, body, _) = send(
        router(core.handle.clone()),
        get("/v1/wait-idle?timeout=soon"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(err.error.contains("soon"), "{}", err.error);
}

#[tokio::test]
async fn metrics_are_prometheus_text_from_the_snapshot() {
    let core = FakeCore::new(busy_pending());
    let (status, body, ctype) = send(router(core.handle.clone()), get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ctype.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = String::from_utf8(body).unwrap();
    let scrape = support::control::scrape(&text);
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == format!("sd_webui_supervisor_{name}")
                    && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v))
            })
            .unwrap_or_else(|| panic!("no sample {name} {label:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        }
    };
    assert_eq!(value("ui_up", None), 1.0);
    assert_eq!(value("state", Some(("state", "ready"))), 1.0);
    for other in ["starting", "backoff", "waiting", "failed", "stopping"] {
        assert_eq!(value("state", Some(("state", other))), 0.0, "{other}");
    }
    assert_eq!(value("queue_running", None), 1.0);
    assert_eq!(value("queue_pending", None), 3.0);
    assert_eq!(value("restarts_total", Some(("reason", "config"))), 2.0);
    assert_eq!(value("restarts_total", Some(("reason", "crash"))), 1.0);
    assert_eq!(value("restarts_total", Some(("reason", "requested"))), 0.0);
    assert_eq!(
        value("restarts_total", Some(("reason", "startup-timeout"))),
        0.0
    );
    assert_eq!(value("crashes_total", None), 1.0);
    assert_eq!(value("reloads_total", Some(("result", "applied"))), 3.0);
    assert_eq!(value("reloads_total", Some(("result", "rejected"))), 1.0);
    assert_eq!(value("reloads_total", Some(("result", "unchanged"))), 0.0);
    assert_eq!(value("restart_pending", None), 1.0);
    assert_eq!(value("time_to_ready_seconds", None), 12.345);
    assert_eq!(value("uptime_seconds", None), 3723.0);
    assert_eq!(value("layout_conflicts", None), 1.0);
    assert_eq!(value("pod_deletion_cost", None), 3.0);
    assert_eq!(value("pod_deletion_cost_failures_total", None), 2.0);
    for name in [
        "ui_up",
        "state",
        "queue_running",
        "queue_pending",
        "restarts_total",
        "crashes_total",
        "reloads_total",
        "restart_pending",
        "time_to_ready_seconds",
        "uptime_seconds",
        "layout_conflicts",
        "draining",
        "pod_deletion_cost",
        "pod_deletion_cost_failures_total",
    ] {
        let full = format!("sd_webui_supervisor_{name}");
        assert!(scrape.docs.contains_key(&full), "no HELP for {full}");
        assert!(
            text.contains(&format!("# TYPE {full} ")),
            "no TYPE for {full}"
        );
    }
}

#[tokio::test]
async fn metrics_leave_out_what_is_unknown() {
    let core = FakeCore::new(starting());
    let (_, body, _) = send(router(core.handle.clone()), get("/metrics")).await;
    let text = String::from_utf8(body).unwrap();
    let scrape = support::control::scrape(&text);
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    assert!(!names.contains(&"sd_webui_supervisor_queue_running"));
    assert!(!names.contains(&"sd_webui_supervisor_time_to_ready_seconds"));
    // No deletion cost kept (off, or not in a cluster): none of its families.
    assert!(!text.contains("pod_deletion_cost"), "{text}");
    assert!(text.contains("sd_webui_supervisor_ui_up 0\n"));
    assert!(text.contains("sd_webui_supervisor_state{state=\"starting\"} 1\n"));
}

#[tokio::test]
async fn unknown_routes_are_json_404() {
    let core = FakeCore::new(ready_idle());
    let (status, body, _) = send(router(core.handle.clone()), get("/v2/status")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(err.error.contains("/v2/status"));
}

#[tokio::test]
async fn a_stopped_core_is_503() {
    let handle = FakeCore::new(ready_idle()).stop();
    tokio::task::yield_now().await;
    let (status, body, _) = send(router(handle.clone()), post("/v1/reload", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let err: ErrorBody = serde_json::from_slice(&body).unwrap();
    assert!(err.error.contains("stopped"));
    let (status, _, _) = send(router(handle), post("/v1/restart", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn the_token_guard_lets_only_the_right_bearer_through() {
    let core = FakeCore::new(ready_idle());
    let token = Token::new("correct horse").unwrap();
    let app = || require_token(router(core.handle.clone()), token.clone());
    let with = |auth: Option<&str>| {
        let mut req = Request::get("/v1/status");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        req.body(Body::empty()).unwrap()
    };
    for bad in [
        None,
        Some("Bearer wrong"),
        Some("Bearer correct horsе"),
        Some("Basic Y29ycmVjdA=="),
    ] {
        let (status, body, _) = send(app(), with(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad:?}");
        let text = String::from_utf8(body).unwrap();
        assert!(!text.contains("correct horse"), "the token leaked: {text}");
    }
    let (status, _, _) = send(app(), with(Some("Bearer correct horse"))).await;
    assert_eq!(status, StatusCode::OK);
    // Reload is guarded the same way (the guard is on the whole router).
    let (status, _, _) = send(app(), post("/v1/reload", "")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(core.seen().is_empty());
}

#[tokio::test]
async fn json_fields_match_the_schema_file() {
    for snapshot in [ready_idle(), busy_pending(), starting()] {
        support::control::assert_fits_schema(&serde_json::to_value(&snapshot).unwrap());
    }
}

#[test]
fn the_schema_check_is_not_vacuous() {
    let schema = support::control::status_schema();
    let mut doc = serde_json::to_value(busy_pending()).unwrap();
    doc["state"] = "sleeping".into();
    doc["surprise"] = 1.into();
    doc["queue"]["running"] = (-1).into();
    doc["restarts"]["crash"] = "many".into();
    doc.as_object_mut().unwrap().remove("crashes");
    let problems = support::schema::violations(&schema, &doc).join("\n");
    for expected in [
        "$.state",
        "$.surprise",
        "$.queue",
        "$.restarts.crash",
        "\"crashes\"",
    ] {
        assert!(
            problems.contains(expected),
            "{expected} not caught in:\n{problems}"
        );
    }
}
