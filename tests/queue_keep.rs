//! The queue survives (issue "pause, drain, and no ComfyUI prompt lost to a
//! forced restart or a crash"). Against the real binary and the stand-in
//! ComfyUI, with prompts sent through the front door:
//! - 5 queued prompts, a `restart --now` and a SIGKILL of the UI: each of the
//!   5 runs to its end exactly once (the stand-in's `job_end` records, shared
//!   by every UI process);
//! - `queue pause` holds a submission at the front door (the UI never sees it)
//!   until `queue resume`;
//! - a prompt running both times the UI was killed is quarantined (not run a
//!   third time; the one queued behind it still runs once) until `queue release`;
//! - a daemon killed with its UI replays the journal when started again.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use support::http::http;
use support::record::{Rec, events};
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A ComfyUI scenario behind the front door, started.
fn started(name: &str) -> Scenario {
    let mut s = Scenario::new(name, "comfyui");
    s.conf.poll_interval = Some("200ms".into());
    s.start();
    s
}

/// A prompt of `seconds` through the front door (no `client_id`, so the
/// supervisor's own socket sees its progress); its prompt id.
fn submit(s: &Scenario, tag: &str, seconds: f64) -> String {
    let body = json!({
        "prompt": {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag}}},
        "stand_in_seconds": seconds,
    });
    let (status, answer) =
        http(s.conf.port, "POST", "/prompt", Some(&body), SECS(120)).expect("POST /prompt");
    assert_eq!(
        status,
        200,
        "POST /prompt: {}",
        String::from_utf8_lossy(&answer)
    );
    let v: Value = serde_json::from_slice(&answer).expect("JSON");
    v["prompt_id"].as_str().expect("a prompt_id").to_owned()
}

/// Completed runs per prompt id, over every stand-in process so far.
fn completions(s: &Scenario) -> BTreeMap<String, usize> {
    let mut n = BTreeMap::new();
    for r in events(&s.records(), "job_end") {
        if r.completed() {
            *n.entry(r.id().to_owned()).or_default() += 1;
        }
    }
    n
}

/// Starts of `id`, over every stand-in process so far.
fn starts_of(s: &Scenario, id: &str) -> Vec<Rec> {
    events(&s.records(), "job_start")
        .into_iter()
        .filter(|r| r.id() == id)
        .cloned()
        .collect()
}

/// The ready UI's pid, if the UI is ready.
fn ready_pid(s: &Scenario) -> Option<i64> {
    let st = s.status_json();
    (st["state"] == "ready")
        .then(|| st["ui_pid"].as_i64())
        .flatten()
}

/// Waits for a ready UI other than `old`; its pid.
fn new_ui(s: &Scenario, old: i64, what: &str) -> i64 {
    s.wait(SECS(60), what, || ready_pid(s).filter(|p| *p != old))
}

/// Waits until `id` has started `n` times; the `n`-th start.
fn wait_start(s: &Scenario, id: &str, n: usize) -> Rec {
    s.wait(SECS(60), &format!("start #{n} of {id}"), || {
        starts_of(s, id).get(n - 1).cloned()
    })
}

fn sigkill(pid: i64) {
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("SIGKILL the UI");
}

#[test]
fn five_prompts_survive_restart_now_and_a_sigkill_and_each_finishes_once() {
    let s = started("keep-five");
    let ui1 = ready_pid(&s).expect("ready");
    let ids: Vec<String> = (0..5)
        .map(|i| submit(&s, &format!("five{i}"), 2.0))
        .collect();
    wait_start(&s, &ids[0], 1);
    std::thread::sleep(Duration::from_millis(500));

    let (code, text) = s.cli(&["restart", "--now"]);
    assert_eq!(code, 0, "restart --now: {text}");
    let ui2 = new_ui(&s, ui1, "a new UI after restart --now");
    // The new UI gets the 5 again, in their order; killed in the middle of the first.
    let again = wait_start(&s, &ids[0], 2);
    assert_eq!(
        i64::from(again.pid),
        ui2,
        "the first prompt runs again in the new UI"
    );
    std::thread::sleep(Duration::from_millis(700));
    sigkill(ui2);
    new_ui(&s, ui2, "a new UI after the SIGKILL");

    s.wait(SECS(120), "all 5 prompts finished", || {
        let done = completions(&s);
        ids.iter().all(|id| done.contains_key(id)).then_some(())
    });
    // Whatever is left in flight settles: nothing runs a second time.
    std::thread::sleep(SECS(4));
    let done = completions(&s);
    for id in &ids {
        assert_eq!(
            done.get(id),
            Some(&1),
            "{id} finished exactly once: {done:?}"
        );
    }
    assert_eq!(done.len(), 5, "no other prompt ran: {done:?}");
    // The order held: each prompt's last start after the one before it.
    let last_starts: Vec<f64> = ids
        .iter()
        .map(|id| starts_of(&s, id).last().map_or(0.0, |r| r.t))
        .collect();
    assert!(
        last_starts.windows(2).all(|w| w[0] < w[1]),
        "in order: {last_starts:?}"
    );
    let keep = s.wait(SECS(10), "the journal emptied", || {
        let st = s.status_json();
        (st["queue_keep"]["kept"] == 0).then(|| st["queue_keep"].clone())
    });
    assert!(
        keep["resubmitted"].as_u64().unwrap_or(0) >= 9,
        "5 sent to the second UI, at least 4 to the third: {keep}"
    );
    assert_eq!(keep["journaled"], 5, "{keep}");
    let (code, list) = s.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0, "{list}");
    let list: Value = serde_json::from_str(&list).expect("JSON");
    let finished: Vec<&str> = list["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter(|d| d["outcome"] == "succeeded")
        .filter_map(|d| d["prompt_id"].as_str())
        .collect();
    assert_eq!(finished, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn pause_holds_a_submission_at_the_front_door_until_resume() {
    let s = started("keep-pause");
    let (code, text) = s.cli(&["queue", "pause"]);
    assert_eq!(code, 0, "queue pause: {text}");
    assert!(text.contains("paused"), "{text}");
    assert_eq!(s.status_json()["queue_keep"]["paused"], true);

    let port = s.conf.port;
    let client = std::thread::spawn(move || {
        let body = json!({
            "prompt": {"9": {"class_type": "SaveImage", "inputs": {}}},
            "stand_in_seconds": 0.5,
        });
        http(port, "POST", "/prompt", Some(&body), SECS(120))
    });
    std::thread::sleep(SECS(3));
    assert!(
        s.requests("POST", "/prompt").is_empty(),
        "the UI saw no submission while paused"
    );
    assert!(
        !client.is_finished(),
        "the submission is held, not answered"
    );
    let held = s.status_json()["front"]["held_now"].as_u64();
    assert_eq!(held, Some(1), "the front door counts it held");

    let (code, text) = s.cli(&["queue", "resume"]);
    assert_eq!(code, 0, "queue resume: {text}");
    let (status, answer) = client.join().expect("client").expect("answered");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    let id = serde_json::from_slice::<Value>(&answer).expect("JSON")["prompt_id"]
        .as_str()
        .expect("prompt_id")
        .to_owned();
    assert_eq!(s.requests("POST", "/prompt").len(), 1);
    s.wait(SECS(20), "the prompt finished", || {
        (completions(&s).get(&id) == Some(&1)).then_some(())
    });
    assert_eq!(s.status_json()["queue_keep"]["paused"], false);
}

#[test]
fn a_prompt_running_at_two_crashes_is_quarantined_until_released() {
    let s = started("keep-quarantine");
    let ui1 = ready_pid(&s).expect("ready");
    let bad = submit(&s, "bad", 6.0);
    let behind = submit(&s, "behind", 1.0);
    wait_start(&s, &bad, 1);
    std::thread::sleep(SECS(1));
    sigkill(ui1);
    let ui2 = new_ui(&s, ui1, "a UI after the first crash");
    let second = wait_start(&s, &bad, 2);
    assert_eq!(i64::from(second.pid), ui2);
    std::thread::sleep(SECS(1));
    sigkill(ui2);
    new_ui(&s, ui2, "a UI after the second crash");

    s.wait(SECS(30), "the prompt quarantined", || {
        let k = s.status_json()["queue_keep"].clone();
        (k["quarantined"] == json!([bad])).then_some(())
    });
    s.wait(SECS(30), "the prompt behind it ran", || {
        completions(&s).get(&behind).copied()
    });
    std::thread::sleep(SECS(3));
    let keep = s.status_json()["queue_keep"].clone();
    assert_eq!(
        keep["kept"].as_u64(),
        Some(1),
        "only the quarantined one: {keep}"
    );
    assert_eq!(keep["quarantined"], json!([bad]));
    assert_eq!(starts_of(&s, &bad).len(), 2, "not run a third time");
    assert_eq!(
        completions(&s).get(&behind),
        Some(&1),
        "the one behind ran once"
    );
    let (code, list) = s.cli(&["queue", "list", "--json"]);
    assert_eq!(code, 0, "{list}");
    let list: Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(list["prompts"][0]["prompt_id"], bad.as_str());
    assert_eq!(list["prompts"][0]["state"], "quarantined");
    assert_eq!(list["prompts"][0]["strikes"], 2);
    let (code, text) = s.cli(&["queue", "release", "no-such-prompt"]);
    assert_ne!(code, 0, "an unknown id is refused: {text}");

    let (code, text) = s.cli(&["queue", "release", &bad]);
    assert_eq!(code, 0, "queue release: {text}");
    s.wait(SECS(30), "the released prompt finished", || {
        completions(&s).get(&bad).copied()
    });
    assert_eq!(starts_of(&s, &bad).len(), 3);
    let keep = s.wait(SECS(10), "the journal emptied", || {
        let k = s.status_json()["queue_keep"].clone();
        (k["kept"] == 0).then_some(k)
    });
    assert_eq!(keep["quarantined"], json!([]));
}

#[test]
fn a_daemon_killed_with_its_ui_replays_the_journal_when_started_again() {
    let mut s = started("keep-daemon");
    let ids: Vec<String> = (0..3).map(|i| submit(&s, &format!("d{i}"), 2.0)).collect();
    let first = wait_start(&s, &ids[0], 1);
    std::thread::sleep(Duration::from_millis(500));
    s.daemon().signal(Signal::SIGKILL);
    s.daemon.as_mut().expect("daemon").wait_exit(SECS(10));
    s.wait(
        SECS(15),
        "the UI and its guard gone with the daemon",
        || {
            let gone = !support::procs::alive(first.pid as i32)
                && std::os::unix::net::UnixStream::connect(&s.conf.socket).is_err();
            gone.then_some(())
        },
    );
    assert!(
        completions(&s).is_empty(),
        "nothing finished before the kill"
    );
    let journal = s.data_dir().join(".sd-webui-supervisor/queue.jsonl");
    assert!(journal.exists(), "the journal is on disk");

    let before = s.notify.ready_count();
    s.spawn();
    s.wait(SECS(60), "READY=1 of the second daemon", || {
        (s.notify.ready_count() > before).then_some(())
    });
    s.wait(SECS(60), "the 3 prompts finished", || {
        let done = completions(&s);
        ids.iter().all(|id| done.contains_key(id)).then_some(())
    });
    std::thread::sleep(SECS(3));
    let done = completions(&s);
    for id in &ids {
        assert_eq!(done.get(id), Some(&1), "{id} once: {done:?}");
    }
    let st = s.status_json();
    assert_eq!(st["queue_keep"]["resubmitted"], 3, "{}", st["queue_keep"]);
}

#[test]
fn a_submission_whose_answer_never_came_is_not_sent_again() {
    let s = started("keep-502");
    let ui1 = ready_pid(&s).expect("ready");
    let port = s.conf.port;
    // The UI queues the prompt and sends its answer's head, then dies before the body.
    let client = std::thread::spawn(move || {
        let body = json!({
            "prompt": {"9": {"class_type": "SaveImage", "inputs": {}}},
            "stand_in_seconds": 5.0,
        });
        http(
            port,
            "POST",
            "/prompt?stand_in_body_delay=30",
            Some(&body),
            SECS(60),
        )
    });
    let started = wait_start_any(&s);
    sigkill(ui1);
    let (status, answer) = client.join().expect("client").expect("an answer");
    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&answer));
    new_ui(&s, ui1, "a UI after the crash");
    std::thread::sleep(SECS(3));
    let st = s.status_json();
    assert_eq!(st["queue_keep"]["journaled"], 0, "{}", st["queue_keep"]);
    assert_eq!(st["queue_keep"]["resubmitted"], 0, "{}", st["queue_keep"]);
    assert_eq!(starts_of(&s, started.id()).len(), 1, "not run again");
    assert_eq!(
        s.requests("POST", "/prompt").len(),
        1,
        "nothing sent to the new UI"
    );
}

/// Waits for the first job to start anywhere; its record.
fn wait_start_any(s: &Scenario) -> Rec {
    s.wait(SECS(30), "a job start", || {
        events(&s.records(), "job_start")
            .first()
            .map(|r| (*r).clone())
    })
}

#[test]
fn queue_keys_are_checked_and_keep_false_journals_nothing() {
    let mut s = Scenario::new("keep-config", "comfyui");
    let mut queue = toml::Table::new();
    queue.insert("history".into(), 0.into());
    s.conf.sections.insert("queue".into(), queue);
    let config = s.write_config();
    let out = std::process::Command::new(support::env::BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()
        .expect("check-config");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("queue.history: 0 is out of range"), "{text}");

    let mut queue = toml::Table::new();
    queue.insert("keep".into(), false.into());
    s.conf.sections.insert("queue".into(), queue);
    s.start();
    let id = submit(&s, "off", 0.5);
    s.wait(SECS(20), "the prompt finished", || {
        completions(&s).get(&id).copied()
    });
    let keep = s.status_json()["queue_keep"].clone();
    assert_eq!(keep["enabled"], false, "{keep}");
    assert_eq!(keep["journaled"], 0, "{keep}");
    let (code, text) = s.cli(&["queue", "pause"]);
    assert_ne!(code, 0, "no journal, no pause: {text}");
    assert!(
        !s.data_dir()
            .join(".sd-webui-supervisor/queue.jsonl")
            .exists(),
        "no journal file"
    );
}
