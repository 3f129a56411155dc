//! Autoscaling on the queue (issue "GPU citizenship and health"): the gauge
//! `queue_oldest_wait_seconds` rises while a job waits and falls back to 0,
//! in the status and in `/metrics` of the real binary; and the KEDA example
//! (deploy/kubernetes/autoscaling) scales the example Deployment on metrics
//! the binary really serves.

mod support;

use std::time::Duration;

use sd_webui_supervisor::control::client::Client;
use serde_json::Value;
use support::control::scrape;
use support::http::request;
use support::repo_root;
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn metrics(s: &Scenario) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(Client::new(&s.conf.socket).metrics())
        .expect("GET /metrics")
}

fn gauge(text: &str, name: &str) -> Option<f64> {
    scrape(text)
        .samples
        .iter()
        .find(|m| m.metric == name)
        .and_then(|m| match m.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => Some(v),
            _ => None,
        })
}

fn txt2img(port: u16, seconds: u32) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let body = format!(r#"{{"prompt":"p","stand_in_seconds":{seconds}}}"#);
        let headers = [("Content-Type", "application/json")];
        let a = request(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            &headers,
            body.as_bytes(),
            SECS(60),
        );
        assert_eq!(a.expect("answered").status, 200);
    })
}

#[test]
fn the_oldest_wait_rises_while_a_job_waits_and_falls_to_zero() {
    let mut s = Scenario::new("oldest-wait", "forge");
    s.conf.poll_interval = Some("200ms".into());
    s.start();
    let port = s.conf.port;
    // Once the queue was probed: 0, nothing waits.
    let idle = s.wait(SECS(10), "the first queue probe", || {
        gauge(
            &metrics(&s),
            "sd_webui_supervisor_queue_oldest_wait_seconds",
        )
    });
    assert_eq!(idle, 0.0);

    let first = txt2img(port, 5);
    s.wait_event("job_start", 1, SECS(10));
    let second = txt2img(port, 1);
    // The second job waits for the first: its wait grows.
    let waited = s.wait(SECS(10), "the second job's wait to pass 2 s", || {
        let st = s.status_json();
        let w = st["queue_oldest_wait_seconds"].as_f64()?;
        (st["queue"]["pending"] == 1 && w >= 2.0).then_some(w)
    });
    let text = metrics(&s);
    let gauge_now =
        gauge(&text, "sd_webui_supervisor_queue_oldest_wait_seconds").expect("the gauge");
    assert!(gauge_now >= waited, "{gauge_now} < {waited}");
    assert!(
        gauge_now < 10.0,
        "timed from its first sighting: {gauge_now}"
    );
    first.join().unwrap();
    second.join().unwrap();
    s.wait(SECS(10), "the wait back at 0", || {
        (s.status_json()["queue_oldest_wait_seconds"] == 0.0).then_some(())
    });
}

#[test]
fn the_keda_example_scales_the_deployment_on_served_metrics() {
    let dir = repo_root().join("deploy/kubernetes");
    let read = |name: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(name)).expect(name);
        serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let scaled = read("autoscaling/scaledobject.yaml");
    let deployment = read("deployment.yaml");
    assert_eq!(scaled["kind"], "ScaledObject");
    assert_eq!(
        scaled["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let label = deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
        .as_str()
        .expect("the pods' name label");

    let mut s = Scenario::new("keda-metrics", "comfyui");
    s.start();
    // The queue gauges appear with the first queue probe.
    let served: Vec<String> = s.wait(SECS(10), "the first queue probe", || {
        let names: Vec<String> = scrape(&metrics(&s))
            .samples
            .into_iter()
            .map(|m| m.metric)
            .collect();
        names
            .iter()
            .any(|m| m == "sd_webui_supervisor_queue_pending")
            .then_some(names)
    });
    let triggers = scaled["spec"]["triggers"].as_array().expect("triggers");
    assert!(triggers.len() >= 2, "depth and wait");
    for t in triggers {
        assert_eq!(t["type"], "prometheus");
        let query = t["metadata"]["query"].as_str().expect("a query");
        let metric = query
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find(|w| w.starts_with("sd_webui_supervisor_"))
            .unwrap_or_else(|| panic!("no supervisor metric in {query}"));
        assert!(
            served.iter().any(|m| m == metric),
            "{metric} is not served: {served:?}"
        );
        assert!(
            query.contains(&format!("app_kubernetes_io_name=\"{label}\"")),
            "{query}"
        );
        let threshold: f64 = t["metadata"]["threshold"]
            .as_str()
            .and_then(|v| v.parse().ok())
            .expect("a numeric threshold string");
        assert!(threshold > 0.0);
    }
}
