//! One queue, many GPUs (issue "an instance per GPU behind one front door,
//! with rolling restarts"). Against the real binary and two stand-in ComfyUI
//! instances on two (fake) GPUs, with every request sent through the front
//! door:
//! - 20 prompts are spread over both instances (the stand-in's `job_end`
//!   records, per UI process), and each prompt's `/history/<id>` is answered by
//!   the instance that ran it;
//! - a config change restarts them one after the other: a GET loop and a
//!   prompt loop see 0 failed requests, and the two UIs are never down at the
//!   same time (from the stand-ins' own records of their stops and starts);
//! - a SIGKILLed instance leaves the other serving, and comes back.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sd_webui_supervisor::control::client::Client;
use serde_json::{Value, json};
use support::env::fake_gpus;
use support::http::http;
use support::record::{Rec, events};
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Two ComfyUI instances, `gpu0` on GPU 0 and `gpu1` on GPU 1 (a fake `/dev`
/// and `nvidia-smi`), behind the front door; started, both ready.
fn two_instances(name: &str) -> Scenario {
    start_two(Scenario::new(name, "comfyui"), None)
}

/// [`two_instances`] for a scenario made by the caller, started under
/// `binary` when given.
fn start_two(mut s: Scenario, binary: Option<std::path::PathBuf>) -> Scenario {
    s.conf.poll_interval = Some("200ms".into());
    s.conf.idle_grace = Some("300ms".into());
    let mut instances = toml::Table::new();
    for (name, gpu) in [("gpu0", 0), ("gpu1", 1)] {
        let mut t = toml::Table::new();
        t.insert("gpus".into(), toml::Value::Array(vec![gpu.into()]));
        instances.insert(name.into(), toml::Value::Table(t));
    }
    s.conf.sections.insert("instances".into(), instances);
    let (dev, smi) = fake_gpus(s.dir(), 2);
    s.start_with(|b| {
        let b = b
            .env("SD_WEBUI_SUPERVISOR_DEV_DIR", &dev)
            .env("SD_WEBUI_SUPERVISOR_NVIDIA_SMI", &smi);
        match &binary {
            Some(exe) => b.binary(exe),
            None => b,
        }
    });
    s.wait(SECS(60), "both instances ready", || {
        (ready_count(&s) == 2).then_some(())
    });
    s
}

/// How many instances the status says are ready.
fn ready_count(s: &Scenario) -> usize {
    s.status_json()["instances"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|i| i["state"] == "ready").count())
}

/// The ready instances' UI pids, by name.
fn pids(s: &Scenario) -> BTreeMap<String, i64> {
    let st = s.status_json();
    st["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["state"] == "ready")
        .filter_map(|i| Some((i["name"].as_str()?.to_owned(), i["ui_pid"].as_i64()?)))
        .collect()
}

/// A prompt of `seconds` through the front door; its prompt id.
fn submit(s: &Scenario, tag: &str, seconds: f64) -> Result<String, String> {
    let body = json!({
        "prompt": {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag}}},
        "stand_in_seconds": seconds,
    });
    let (status, answer) = http(s.conf.port, "POST", "/prompt", Some(&body), SECS(120))
        .map_err(|e| format!("POST /prompt: {e}"))?;
    if status != 200 {
        return Err(format!(
            "POST /prompt: {status} {}",
            String::from_utf8_lossy(&answer)
        ));
    }
    let v: Value = serde_json::from_slice(&answer).map_err(|e| e.to_string())?;
    v["prompt_id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "no prompt_id".into())
}

/// Completed prompts per UI process (pid), over every stand-in so far.
fn completed_by_pid(recs: &[Rec]) -> BTreeMap<u32, Vec<String>> {
    let mut by = BTreeMap::<u32, Vec<String>>::new();
    for r in events(recs, "job_end") {
        if r.completed() {
            by.entry(r.pid).or_default().push(r.id().to_owned());
        }
    }
    by
}

#[test]
fn twenty_prompts_spread_over_both_instances_and_each_history_comes_from_its_own() {
    let s = two_instances("inst-spread");
    let st = s.status_json();
    assert!(
        st["status_line"]
            .as_str()
            .is_some_and(|l| l.starts_with("ready: 2/2 instances")),
        "status line: {}",
        st["status_line"]
    );
    // Each instance runs on its own GPU, writes into its own folder.
    let starts = s.starts();
    assert_eq!(starts.len(), 2, "two UIs started");
    for (name, gpu) in [("gpu0", "0"), ("gpu1", "1")] {
        let start = starts
            .iter()
            .find(|r| {
                r.argv()
                    .iter()
                    .any(|a| a.contains(&format!("instances/{name}/")))
            })
            .unwrap_or_else(|| panic!("a UI with instances/{name}/ in its argv: {starts:?}"));
        assert_eq!(
            start.v["env"]["CUDA_VISIBLE_DEVICES"].as_str(),
            Some(gpu),
            "{name}'s GPU: {:?}",
            start.v
        );
    }

    let ids: Vec<String> = (0..20)
        .map(|i| submit(&s, &format!("p{i}"), 0.5).expect("accepted"))
        .collect();
    s.wait(SECS(60), "20 prompts done", || {
        let done: usize = completed_by_pid(&s.records()).values().map(Vec::len).sum();
        (done >= 20).then_some(())
    });
    let by_pid = completed_by_pid(&s.records());
    let counts: Vec<usize> = by_pid.values().map(Vec::len).collect();
    assert_eq!(counts.len(), 2, "both UIs ran prompts: {by_pid:?}");
    let (max, min) = (counts.iter().max(), counts.iter().min());
    println!("balance: {counts:?} (max {max:?}, min {min:?})");
    assert!(
        counts.iter().all(|n| *n >= 8),
        "20 prompts split {counts:?}, not about evenly"
    );
    // Each prompt's history is asked of the instance that ran it (the other
    // answers `{}` for an id it does not know).
    for id in &ids {
        let (status, body) = http(
            s.conf.port,
            "GET",
            &format!("/history/{id}"),
            None,
            SECS(10),
        )
        .expect("history");
        let v: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(status, 200);
        assert!(v.get(id).is_some(), "/history/{id} through the door: {v}");
    }
    // Per-instance status (as the published schema says) and metrics.
    let st = s.status_json();
    let schema: Value =
        serde_json::from_str(include_str!("../docs/status.schema.json")).expect("the schema");
    let wrong = support::schema::violations(&schema, &st);
    assert!(
        wrong.is_empty(),
        "status against docs/status.schema.json: {wrong:?}"
    );
    let routed = st["front"]["routed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(routed.len(), 2, "routed per instance: {}", st["front"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let metrics = rt
        .block_on(Client::new(&s.conf.socket).metrics())
        .expect("GET /metrics");
    for name in ["gpu0", "gpu1"] {
        assert!(
            metrics.contains(&format!(
                "sd_webui_supervisor_instance_up{{instance=\"{name}\"}} 1"
            )),
            "metrics for {name}:\n{metrics}"
        );
    }
}

#[test]
fn a_config_change_restarts_the_instances_one_after_the_other_with_no_failed_request() {
    // A start that takes a while, as a real UI's does: the other instance
    // must wait it out.
    let mut s = Scenario::new("inst-roll", "comfyui");
    s.conf
        .env
        .insert("STANDIN_START_DELAY".into(), "1.5".into());
    let mut s = start_two(s, None);
    let before = pids(&s);
    assert_eq!(before.len(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let port = s.conf.port;
    let mut loops = Vec::new();
    for kind in ["get", "get"] {
        let (stop, failed, served) = (stop.clone(), failed.clone(), served.clone());
        let dir = s.dir().to_path_buf();
        loops.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let result = http(port, "GET", "/system_stats", None, SECS(60));
                match result {
                    Ok((200, _)) => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        let _ = fs::write(dir.join(format!("failed-{kind}")), format!("{other:?}"));
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }));
    }
    std::thread::sleep(SECS(1));
    // A 2 s prompt on each instance: without the rolling rule both would
    // be idle, and restarted, at the same moment.
    submit(&s, "long-a", 2.0).expect("accepted");
    submit(&s, "long-b", 2.0).expect("accepted");
    // A change that needs a restart of every instance.
    s.conf.extra_args.push("--preview-method".into());
    s.conf.extra_args.push("auto".into());
    s.write_config();
    s.reload();
    // One takes its turn: it drains (no new work) while its prompt ends,
    // then is stopped; the other serves meanwhile.
    let turn = s.wait(SECS(30), "one instance draining", || {
        let st = s.status_json();
        st["instances"]
            .as_array()?
            .iter()
            .find_map(|i| (i["draining"] == true).then(|| i["name"].as_str().map(String::from))?)
    });
    let serving = if turn == "gpu0" { "gpu1" } else { "gpu0" };
    println!("{turn} takes the first turn");
    let turn_pid = u32::try_from(before[&turn]).expect("pid");
    s.wait(SECS(30), "the draining instance stopped", || {
        s.records()
            .iter()
            .any(|r| r.pid == turn_pid && r.event == "signal")
            .then_some(())
    });
    let during: Vec<String> = (0..4)
        .map(|i| submit(&s, &format!("during{i}"), 0.1).expect("accepted during the roll"))
        .collect();
    s.wait(SECS(90), "both instances restarted", || {
        let now = pids(&s);
        (now.len() == 2 && now.iter().all(|(k, pid)| before.get(k) != Some(pid))).then_some(())
    });
    std::thread::sleep(SECS(1));
    stop.store(true, Ordering::SeqCst);
    for l in loops {
        l.join().expect("request loop");
    }
    let (served, failed) = (served.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    println!("requests through the rolling restart: {served} answered, {failed} failed");
    assert_eq!(failed, 0, "failed requests during the rolling restart");
    assert!(served > 50, "the loops ran: {served}");
    // From the stand-ins' own records: each old UI's stop (SIGINT) to its
    // successor listening is one instance down; the two never overlap.
    let recs = s.records();
    let mut down = Vec::new();
    for old in before.values() {
        let old = u32::try_from(*old).expect("pid");
        let stopped = recs
            .iter()
            .find(|r| r.pid == old && r.event == "signal")
            .unwrap_or_else(|| panic!("the old UI {old} was stopped"))
            .t;
        let back = recs
            .iter()
            .filter(|r| r.event == "listening" && r.t > stopped)
            .map(|r| r.t)
            .fold(f64::INFINITY, f64::min);
        down.push((stopped, back));
    }
    down.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!("down windows: {down:?}");
    assert!(
        down[0].1 <= down[1].0,
        "both instances were down at once: {down:?}"
    );
    // What came in while one drained went to the other.
    let serving_pid = u32::try_from(before[serving]).expect("pid");
    for id in &during {
        let ran = events(&recs, "job_end")
            .into_iter()
            .find(|r| r.id() == id && r.completed())
            .unwrap_or_else(|| panic!("prompt {id} ran"));
        assert_eq!(
            ran.pid, serving_pid,
            "prompt {id} went to {serving} ({turn} drained)"
        );
    }
    let new_argv: Vec<Vec<String>> = s.starts().iter().skip(2).map(Rec::argv).collect();
    assert!(
        new_argv
            .iter()
            .all(|a| a.windows(2).any(|w| w == ["--preview-method", "auto"])),
        "the new UIs run the new config: {new_argv:?}"
    );
}

#[test]
fn a_killed_instance_leaves_the_other_serving_and_comes_back() {
    let s = two_instances("inst-kill");
    let before = pids(&s);
    let victim = before["gpu1"];
    kill(
        Pid::from_raw(i32::try_from(victim).expect("pid")),
        Signal::SIGKILL,
    )
    .expect("SIGKILL");
    s.wait(SECS(10), "the supervisor saw gpu1 down", || {
        (ready_count(&s) == 1).then_some(())
    });
    let line = s.status_json()["status_line"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(line.starts_with("degraded: 1/2 instances ready"), "{line}");
    // Every prompt sent now is taken, by the instance still up.
    let ids: Vec<String> = (0..6)
        .map(|i| submit(&s, &format!("k{i}"), 0.2).expect("accepted while one instance is down"))
        .collect();
    assert_eq!(ids.len(), 6);
    s.wait(SECS(60), "gpu1 back", || {
        (ready_count(&s) == 2).then_some(())
    });
    let ran_on = s.wait(SECS(30), "the 6 prompts done", || {
        let recs = s.records();
        let done: Vec<_> = events(&recs, "job_end")
            .into_iter()
            .filter(|r| r.completed() && ids.contains(&r.id().to_owned()))
            .map(|r| r.pid)
            .collect();
        (done.len() == 6).then_some(done)
    });
    let gpu0 = u32::try_from(before["gpu0"]).expect("pid");
    assert!(
        ran_on.iter().all(|pid| *pid == gpu0),
        "sent while gpu1 was down, run by gpu0 ({gpu0}): {ran_on:?}"
    );
    let after = pids(&s);
    assert_eq!(after["gpu0"], before["gpu0"], "gpu0 kept running");
    assert_ne!(after["gpu1"], victim, "gpu1 was started again");
}

#[test]
fn a_new_supervisor_binary_waits_for_every_instance_to_be_idle_then_restarts_the_service() {
    let mut s = Scenario::new("inst-upgrade", "comfyui");
    let a = support::env::binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = support::env::binary_copy(s.dir(), "sd-webui-supervisor-b");
    s.conf.executable = Some(a.clone());
    let mut s = start_two(s, Some(a));
    // A 3 s prompt on each instance.
    let ids = [
        submit(&s, "up-a", 3.0).expect("accepted"),
        submit(&s, "up-b", 3.0).expect("accepted"),
    ];
    s.wait(SECS(10), "both running", || {
        (events(&s.records(), "job_start").len() >= 2).then_some(())
    });
    s.conf.executable = Some(b);
    s.write_config();
    s.sighup();
    let st = s.wait(SECS(10), "the upgrade pending", || {
        let st = s.status_json();
        st["restart_pending"].is_object().then_some(st)
    });
    assert!(
        st["restart_pending"]["reasons"]
            .to_string()
            .contains("supervisor upgrade (instances)"),
        "{}",
        st["restart_pending"]
    );
    let status = s.daemon.as_mut().expect("the daemon").wait_exit(SECS(30));
    assert_eq!(
        status.code(),
        Some(i32::from(
            sd_webui_supervisor::handoff::EXIT_SERVICE_RESTART
        )),
        "the daemon exits for systemd to start the new binary"
    );
    let recs = s.records();
    for id in &ids {
        assert!(
            events(&recs, "job_end")
                .iter()
                .any(|r| r.id() == id && r.completed()),
            "prompt {id} ran to its end before the service restarted"
        );
    }
}

#[test]
fn forge_instances_keep_their_settings_and_images_apart_and_share_the_txt2img_work() {
    let mut s = Scenario::new("inst-forge", "forge");
    s.conf.poll_interval = Some("200ms".into());
    let s = start_two(s, None);
    let data = s.conf.data_dir.clone();
    for name in ["gpu0", "gpu1"] {
        let own = data.join("instances").join(name);
        let start = s
            .starts()
            .into_iter()
            .find(|r| {
                r.argv()
                    .iter()
                    .any(|a| a.starts_with(&own.display().to_string()))
            })
            .unwrap_or_else(|| panic!("a UI with {name}'s folder in its argv"));
        let argv = start.argv();
        let settings = own.join("config.json");
        assert!(
            argv.windows(2)
                .any(|w| w[0] == "--ui-settings-file" && w[1] == settings.display().to_string()),
            "{name}: {argv:?}"
        );
        // Its managed settings file, with the image folders of its own.
        let text = fs::read_to_string(&settings).expect("the instance's config.json");
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            v["outdir_samples"].as_str(),
            Some(own.join("outputs/samples").display().to_string().as_str()),
            "{name}: {v}"
        );
        assert_eq!(
            v["CLIP_stop_at_last_layers"], 2,
            "the shared [settings] too: {v}"
        );
    }
    // 8 txt2img of 1 s from 4 clients: both UIs take some.
    let port = s.conf.port;
    let clients: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..2 {
                    let body = json!({"prompt": "a", "steps": 2, "stand_in_seconds": 1.0});
                    let (status, _) =
                        http(port, "POST", "/sdapi/v1/txt2img", Some(&body), SECS(60))
                            .expect("txt2img");
                    assert_eq!(status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client");
    }
    let recs = s.records();
    let mut by_pid = BTreeMap::<u32, usize>::new();
    for r in events(&recs, "job_end") {
        *by_pid.entry(r.pid).or_default() += 1;
    }
    assert_eq!(
        by_pid.len(),
        2,
        "both Forge instances ran txt2img: {by_pid:?}"
    );
}

#[test]
fn a_new_binary_while_the_leaders_ui_is_down_still_waits_for_the_others_jobs() {
    let mut s = Scenario::new("inst-upgrade-down", "comfyui");
    let a = support::env::binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = support::env::binary_copy(s.dir(), "sd-webui-supervisor-b");
    s.conf.executable = Some(a.clone());
    let mut s = start_two(s, Some(a));
    let leader_pid = pids(&s)["gpu0"];
    // The leader's UI dies and stays down a while (its next start waits
    // out the crash backoff); gpu1 runs a 4 s prompt.
    let follower_pid = u32::try_from(pids(&s)["gpu1"]).expect("pid");
    submit(&s, "busy0", 4.0).expect("accepted");
    submit(&s, "busy1", 4.0).expect("accepted");
    s.wait(SECS(10), "a prompt running on gpu1", || {
        events(&s.records(), "job_start")
            .iter()
            .any(|r| r.pid == follower_pid)
            .then_some(())
    });
    kill(
        Pid::from_raw(i32::try_from(leader_pid).expect("pid")),
        Signal::SIGKILL,
    )
    .expect("SIGKILL");
    s.wait(SECS(10), "gpu0 down", || {
        (ready_count(&s) == 1).then_some(())
    });
    s.conf.executable = Some(b);
    s.write_config();
    let daemon = Pid::from_raw(s.daemon().pid());
    kill(daemon, Signal::SIGHUP).expect("SIGHUP");
    let status = s.daemon.as_mut().expect("the daemon").wait_exit(SECS(30));
    assert_eq!(
        status.code(),
        Some(i32::from(
            sd_webui_supervisor::handoff::EXIT_SERVICE_RESTART
        ))
    );
    let recs = s.records();
    let ends: Vec<&Rec> = events(&recs, "job_end");
    assert!(
        ends.iter().any(|r| r.completed() && r.pid == follower_pid),
        "gpu1's prompt ran to its end before the service restarted: {ends:?}"
    );
}
