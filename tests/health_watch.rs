//! `[health]` (issue "GPU citizenship and health"), against the real binary and
//! the stand-in UI:
//! - a Forge job whose progress stops is interrupted after `stall_timeout`; the
//!   UI is kept when the interrupt ends the job, restarted `stall_grace` later
//!   when it does not (a UI stuck in a CUDA call);
//! - a ComfyUI prompt whose progress the supervisor sees on `/ws` is
//!   interrupted by its id; another client's prompt, whose progress it cannot
//!   see, is never judged;
//! - a CUDA error in the UI's output restarts the UI once idle (the running
//!   job finishes first); an out-of-memory error that progress followed does
//!   not; `gpu_errors = false` only counts.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::http::{Answer, request};
use support::record::{Rec, events};
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const JSON: [(&str, &str); 1] = [("Content-Type", "application/json")];

/// A Forge or ComfyUI scenario with `[health]` set and quick probes.
fn scenario(name: &str, flavor: &str, health: &[(&str, &str)], env: &[(&str, &str)]) -> Scenario {
    let mut s = Scenario::new(name, flavor);
    s.conf.poll_interval = Some("200ms".into());
    s.conf.idle_grace = Some("300ms".into());
    s.conf.policy = "when-idle".into();
    let mut keys = toml::Table::new();
    for (k, v) in health {
        let value = match *v {
            "true" => toml::Value::Boolean(true),
            "false" => toml::Value::Boolean(false),
            text => toml::Value::String(text.into()),
        };
        keys.insert((*k).into(), value);
    }
    s.conf.sections.insert("health".into(), keys);
    for (k, v) in env {
        s.conf.env.insert((*k).into(), (*v).into());
    }
    s.start();
    s
}

/// Sends a txt2img of `seconds` in a thread; its answer comes from `join`.
fn txt2img(s: &Scenario, seconds: u32) -> std::thread::JoinHandle<std::io::Result<Answer>> {
    let port = s.conf.port;
    let body = format!(r#"{{"prompt":"p","steps":20,"stand_in_seconds":{seconds}}}"#);
    std::thread::spawn(move || {
        request(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            &JSON,
            body.as_bytes(),
            SECS(120),
        )
    })
}

fn interrupts(s: &Scenario, path: &str) -> Vec<Rec> {
    s.requests("POST", path)
}

fn first(s: &Scenario, event: &str) -> Rec {
    events(&s.records(), event)
        .first()
        .map(|r| (*r).clone())
        .unwrap_or_else(|| panic!("no {event} record\n{}", s.diagnostics()))
}

#[test]
fn a_stalled_forge_job_is_interrupted_and_the_ui_kept() {
    let s = scenario(
        "stall-forge",
        "forge",
        &[("stall_timeout", "2s"), ("stall_grace", "3s")],
        &[("STANDIN_STALL_AFTER", "0.5")],
    );
    let job = txt2img(&s, 60);
    s.wait(SECS(30), "the interrupt", || {
        (!interrupts(&s, "/sdapi/v1/interrupt").is_empty()).then_some(())
    });
    let answer = job.join().unwrap().expect("the job is answered");
    assert_eq!(answer.status, 200, "an interrupted txt2img answers 200");
    // Its last progress was at most its start (20 steps in 60 s, stalled at 0.5 s).
    let started = first(&s, "job_start");
    let interrupt = &interrupts(&s, "/sdapi/v1/interrupt")[0];
    let quiet = interrupt.t - started.t;
    assert!(
        quiet >= 1.9,
        "interrupted {quiet:.2}s after the job started; the timeout is 2s"
    );
    let st = s.status_json();
    assert_eq!(st["health"]["stalled_jobs"], 1, "{st}");
    // The interrupt ended the job: no restart, not even after the grace.
    std::thread::sleep(SECS(4));
    assert_eq!(s.starts().len(), 1, "{}", s.diagnostics());
    let st = s.status_json();
    assert_eq!(st["health"]["stalled_since_unix"], Value::Null, "{st}");
    assert_eq!(st["restarts"]["stall"].as_u64().unwrap_or(0), 0, "{st}");
}

#[test]
fn a_job_stuck_through_its_interrupt_restarts_the_ui_after_the_grace() {
    let s = scenario(
        "stall-deaf",
        "forge",
        &[("stall_timeout", "2s"), ("stall_grace", "3s")],
        &[("STANDIN_STALL_AFTER", "0.5"), ("STANDIN_STALL_DEAF", "1")],
    );
    let job = txt2img(&s, 60);
    s.wait(SECS(30), "the interrupt", || {
        (!interrupts(&s, "/sdapi/v1/interrupt").is_empty()).then_some(())
    });
    let line = s.wait(SECS(10), "the stall in the status line", || {
        let st = s.status_json();
        let line = st["status_line"].as_str()?.to_string();
        line.contains("job stalled: no progress since")
            .then_some(line)
    });
    assert!(line.contains("interrupted"), "{line}");
    s.wait_listening(2, SECS(60));
    let interrupt = &interrupts(&s, "/sdapi/v1/interrupt")[0];
    let second = &s.starts()[1];
    assert!(
        second.t - interrupt.t >= 2.9,
        "restarted {:.2}s after the interrupt; the grace is 3s",
        second.t - interrupt.t
    );
    let st = s.status_json();
    assert_eq!(st["restarts"]["stall"], 1, "{st}");
    // The stuck job died with its UI; its client got an answer, not a hang.
    let answer = job.join().unwrap();
    assert!(
        answer.map_or(true, |a| a.status != 200),
        "the stuck job did not finish"
    );
}

#[test]
fn a_comfyui_prompt_is_interrupted_by_its_id_and_another_clients_is_not_judged() {
    let s = scenario(
        "stall-comfy",
        "comfyui",
        &[("stall_timeout", "2s"), ("stall_grace", "30s")],
        &[("STANDIN_STALL_AFTER", "0.5")],
    );
    let port = s.conf.port;
    let prompt = |extra: &str| {
        let body = format!(
            r#"{{"prompt":{{"9":{{"class_type":"SaveImage","inputs":{{}}}}}},"stand_in_seconds":60{extra}}}"#
        );
        let a = request(port, "POST", "/prompt", &JSON, body.as_bytes(), SECS(30)).expect("queued");
        assert_eq!(a.status, 200, "{}", a.text());
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        v["prompt_id"].as_str().unwrap().to_string()
    };
    // Sent without a client id: its progress reaches every socket, ours too.
    let api = prompt("");
    s.wait(SECS(30), "the interrupt", || {
        (!interrupts(&s, "/interrupt").is_empty()).then_some(())
    });
    assert_eq!(
        interrupts(&s, "/interrupt")[0].v["body"]["prompt_id"],
        api.as_str()
    );
    // A browser's prompt: its progress goes to the browser's socket only, so
    // the supervisor sees none, and silence is not a stall.
    let browser = prompt(r#","client_id":"someone-else""#);
    s.wait(SECS(30), "the browser's prompt to run and stall", || {
        events(&s.records(), "job_stalled")
            .len()
            .eq(&2)
            .then_some(())
    });
    std::thread::sleep(SECS(5));
    assert_eq!(
        interrupts(&s, "/interrupt").len(),
        1,
        "the browser's prompt {browser} was not interrupted"
    );
    assert_eq!(s.starts().len(), 1);
    assert_eq!(s.status_json()["health"]["stalled_jobs"], 1);
}

#[test]
fn a_cuda_error_restarts_the_ui_once_the_job_is_done() {
    let s = scenario(
        "gpu-error",
        "forge",
        &[],
        &[(
            "STANDIN_JOB_OUTPUT",
            "RuntimeError: CUDA error: an illegal memory access was encountered",
        )],
    );
    let job = txt2img(&s, 3);
    let st = s.wait(SECS(20), "the UI marked unhealthy", || {
        let st = s.status_json();
        st["health"]["gpu_error"].is_string().then_some(st)
    });
    assert!(
        st["status_line"]
            .as_str()
            .unwrap()
            .contains("restart pending (CUDA error in the UI's output)"),
        "{st}"
    );
    let answer = job.join().unwrap().expect("the job is answered");
    assert_eq!(answer.status, 200, "the running job finished first");
    s.wait_listening(2, SECS(60));
    let end = first(&s, "job_end");
    assert!(s.starts()[1].t > end.t, "the restart came after the job");
    let st = s.status_json();
    assert_eq!(st["restarts"]["gpu-error"], 1, "{st}");
    assert_eq!(st["health"]["gpu_faults"], 1, "{st}");
}

#[test]
fn an_oom_followed_by_progress_and_a_switched_off_watch_do_not_restart() {
    for (name, health, line) in [
        (
            "gpu-oom",
            &[][..],
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        ),
        (
            "gpu-off",
            &[("gpu_errors", "false")][..],
            "RuntimeError: CUDA error: an illegal memory access was encountered",
        ),
    ] {
        let s = scenario(name, "forge", health, &[("STANDIN_JOB_OUTPUT", line)]);
        let job = txt2img(&s, 3);
        let answer = job.join().unwrap().expect("the job is answered");
        assert_eq!(answer.status, 200);
        s.wait(SECS(10), "the fault counted", || {
            (s.status_json()["health"]["gpu_faults"] == 1).then_some(())
        });
        std::thread::sleep(SECS(3));
        let st = s.status_json();
        assert_eq!(
            s.starts().len(),
            1,
            "{name}: no restart: {st}\n{}",
            s.diagnostics()
        );
        assert_eq!(st["health"]["gpu_error"], Value::Null, "{name}: {st}");
        assert_eq!(st["restart_pending"], Value::Null, "{name}: {st}");
    }
}
