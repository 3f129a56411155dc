//! `gpu.unload_after` (issue "GPU citizenship and health"), against the real
//! binary and the stand-in UI: once the queue has been idle that long the
//! models leave the GPU — ComfyUI `POST /free {"unload_models": true,
//! "free_memory": true}`, Forge `POST /sdapi/v1/unload-checkpoint` — once per
//! idle spell, never while a job runs; the status and metrics say so, and a
//! job makes them loaded again. A1111 is refused by check-config (it would run
//! the next job on weights left in RAM).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::http::request;
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

fn scenario(name: &str, flavor: &str, after: &str) -> Scenario {
    let mut s = Scenario::new(name, flavor);
    s.conf.poll_interval = Some("200ms".into());
    s.conf
        .gpu
        .insert("unload_after".into(), toml::Value::String(after.into()));
    s.start();
    s
}

/// Runs one job of `seconds` through the front door and waits for its answer.
fn job(s: &Scenario, seconds: f64) {
    let port = s.conf.port;
    let (path, body) = if s.conf.flavor == "comfyui" {
        (
            "/prompt",
            format!(
                r#"{{"prompt":{{"9":{{"class_type":"SaveImage","inputs":{{}}}}}},"stand_in_seconds":{seconds}}}"#
            ),
        )
    } else {
        (
            "/sdapi/v1/txt2img",
            format!(r#"{{"prompt":"p","stand_in_seconds":{seconds}}}"#),
        )
    };
    let a = request(port, "POST", path, &JSON, body.as_bytes(), SECS(60)).expect("job sent");
    assert_eq!(a.status, 200, "{}", a.text());
}

fn unloaded(s: &Scenario) -> bool {
    s.status_json()["vram"]["unloaded"] == true
}

#[test]
fn an_idle_comfyui_frees_its_models_once_per_idle_spell() {
    let s = scenario("unload-comfy", "comfyui", "2s");
    s.wait(SECS(20), "the first unload", || unloaded(&s).then_some(()));
    let frees = s.requests("POST", "/free");
    assert_eq!(frees.len(), 1, "one /free per idle spell");
    assert_eq!(
        frees[0].v["body"],
        serde_json::json!({"unload_models": true, "free_memory": true})
    );
    s.wait_event("free", 1, SECS(5));
    let st = s.status_json();
    assert!(
        st["status_line"]
            .as_str()
            .unwrap()
            .contains("models unloaded from the GPU (idle)"),
        "{st}"
    );
    // Idle on: no second call.
    std::thread::sleep(SECS(3));
    assert_eq!(s.requests("POST", "/free").len(), 1);

    // A prompt loads them again; the idle spell after it frees them again,
    // never while the prompt runs.
    job(&s, 3.0);
    s.wait(SECS(10), "the prompt to run", || {
        (!unloaded(&s)).then_some(())
    });
    s.wait(SECS(30), "the second unload", || {
        (s.requests("POST", "/free").len() == 2).then_some(())
    });
    let ended = s.wait_event("job_end", 1, SECS(10));
    let second = &s.requests("POST", "/free")[1];
    assert!(
        second.t - ended.t >= 1.9,
        "freed {:.2}s after the prompt ended; gpu.unload_after is 2s",
        second.t - ended.t
    );
    s.wait(SECS(10), "unloaded again", || unloaded(&s).then_some(()));
    assert_eq!(s.status_json()["vram"]["unloads"], 2);
    assert_eq!(s.starts().len(), 1, "no restart for it");
}

#[test]
fn an_idle_forge_unloads_its_checkpoint_and_the_next_job_runs() {
    let s = scenario("unload-forge", "forge", "1s");
    s.wait(SECS(20), "the unload", || unloaded(&s).then_some(()));
    assert_eq!(s.requests("POST", "/sdapi/v1/unload-checkpoint").len(), 1);
    job(&s, 1.5);
    // The job counted as loading the model again: after it, one more unload.
    s.wait(SECS(20), "the second unload", || {
        (s.requests("POST", "/sdapi/v1/unload-checkpoint").len() == 2).then_some(())
    });
    let st = s.status_json();
    assert_eq!(st["vram"]["unloads"], 2, "{st}");
    assert_eq!(st["restarts"], Value::Object(Default::default()), "{st}");
}
