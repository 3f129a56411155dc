//! A reload that needs a UI restart waits for the UI's queue (issue 4, "Must show"):
//! the stand-in UI runs jobs, the config changes under it (SIGHUP), and its record
//! shows when the stop signal came relative to the jobs.
//!
//! Policies: `when-idle` (no signal until the queue has been empty for `idle_grace`,
//! then within `idle_grace` + 250 ms), `deadline` (restart anyway, interrupting),
//! `manual` (never), `immediately` (at once). Several reloads while a restart is
//! pending merge into one restart with the newest config.

mod support;

use std::time::Duration;

use support::{Rec, Scenario, comfy_prompt, events, now_unix, txt2img};

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The tests' `restart.idle_grace`, in seconds.
const GRACE: f64 = 1.0;
/// Slack allowed after the grace for the stop to begin (issue 4's bound).
const SLACK: f64 = 0.25;

/// The signal records so far.
fn signals(s: &Scenario) -> Vec<Rec> {
    events(&s.records(), "signal")
        .into_iter()
        .cloned()
        .collect()
}

/// Asserts the stop signal came after `queue_empty` and within the grace + slack.
fn assert_stop_timely(s: &Scenario, sig: &Rec, queue_empty: f64) {
    let after = sig.t - queue_empty;
    assert!(
        after >= GRACE,
        "the UI was signalled {after:.3} s after its queue emptied, before idle_grace {GRACE} s\n{}",
        s.diagnostics()
    );
    assert!(
        after <= GRACE + SLACK,
        "the stop began {after:.3} s after the queue emptied; goal: <= idle_grace + {SLACK} s = {:.2} s\n{}",
        GRACE + SLACK,
        s.diagnostics()
    );
}

#[test]
fn forge_restart_waits_for_the_running_txt2img() {
    let mut s = Scenario::new("forge-waits", "forge");
    s.start();
    let first = s.wait_listening(1, SECS(20));
    let job = txt2img(s.conf.port, 5.0);
    let started = s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload(); // returns once READY=1 came: the reload never waits for the queue
    let reloaded = now_unix();
    s.wait(
        SECS(3),
        "STATUS with the pending restart while busy",
        || {
            let st = s.notify.status();
            (st.contains("busy: 1 running, 0 queued")
                && st.contains("restart pending (ui.extra_args changed), waits for idle"))
            .then_some(())
        },
    );

    let ended = s.wait_event("job_end", 1, SECS(15));
    assert!(
        reloaded < ended.t,
        "the reload was answered only after the job ended"
    );
    assert_eq!(ended.id(), started.id());
    assert!(ended.completed(), "the job was interrupted: {:?}", ended.v);
    assert_eq!(job.join().expect("the job thread"), Ok(200));

    let sig = s.wait_event("signal", 1, SECS(10));
    assert_eq!(sig.pid, first.pid, "the signal went to the first stand-in");
    assert_eq!(sig.signal(), "SIGINT");
    assert_stop_timely(&s, &sig, ended.t);

    let second = s.wait_listening(2, SECS(20));
    assert!(
        second.argv().contains(&"--cuda-malloc".to_string()),
        "the new stand-in runs the new args: {:?}",
        second.argv()
    );
    assert!(!first.argv().contains(&"--cuda-malloc".to_string()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.starts().len(), 2, "exactly one restart");
    assert_eq!(signals(&s).len(), 1, "one stop signal in all");
    s.wait(SECS(3), "STATUS without the pending restart", || {
        let st = s.notify.status();
        (st.starts_with("ready; idle") && !st.contains("restart pending")).then_some(())
    });
}

#[test]
fn comfyui_restart_waits_for_the_running_and_the_queued_prompt() {
    let mut s = Scenario::new("comfy-waits", "comfyui");
    s.start();
    let first = s.wait_listening(1, SECS(20));
    let a = comfy_prompt(s.conf.port, 2.5);
    let b = comfy_prompt(s.conf.port, 2.5);
    s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload();
    s.wait(SECS(3), "STATUS with one running and one queued", || {
        let st = s.notify.status();
        (st.contains("busy: 1 running, 1 queued")
            && st.contains("restart pending (ui.extra_args changed)"))
        .then_some(())
    });

    let last = s.wait_event("job_end", 2, SECS(15));
    let recs = s.records();
    let ends = events(&recs, "job_end");
    let ids: Vec<&str> = ends.iter().map(|r| r.id()).collect();
    assert_eq!(ids, [a.as_str(), b.as_str()], "both prompts ran, in order");
    assert!(
        ends.iter().all(|r| r.completed()),
        "a prompt was interrupted"
    );
    assert!(
        signals(&s).iter().all(|sig| sig.t >= last.t),
        "a signal reached the stand-in before its queue emptied"
    );

    let sig = s.wait_event("signal", 1, SECS(10));
    assert_eq!(sig.pid, first.pid);
    assert_eq!(sig.signal(), "SIGINT");
    assert_stop_timely(&s, &sig, last.t);
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.starts().len(), 2, "exactly one restart");
}

/// ComfyUI broadcasts its queue length on `/ws`: the supervisor hears the queue
/// empty at once instead of at its next poll. With a 30 s `poll_interval` the
/// stop still begins right after the grace.
#[test]
fn comfyui_queue_broadcast_ends_the_wait_without_waiting_for_a_poll() {
    let mut s = Scenario::new("comfy-ws", "comfyui");
    s.conf.poll_interval = Some("30s".into());
    s.start();
    let first = s.wait_listening(1, SECS(20));
    let _job = comfy_prompt(s.conf.port, 1.5);
    s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload();
    let ended = s.wait_event("job_end", 1, SECS(10));
    assert!(ended.completed(), "the prompt was interrupted");
    let sig = s.wait_event("signal", 1, SECS(20));
    assert_eq!(sig.pid, first.pid);
    let after = sig.t - ended.t;
    // Polling alone would stop it up to 30 s late; the exact bound is
    // `comfyui_restart_waits_for_the_running_and_the_queued_prompt`'s.
    assert!(
        (GRACE..GRACE + 5.0).contains(&after),
        "the stop began {after:.3} s after the queue emptied (idle_grace {GRACE} s, poll 30 s)\n{}",
        s.diagnostics()
    );
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
}

#[test]
fn reloads_while_pending_merge_into_one_restart_with_the_newest_config() {
    let mut s = Scenario::new("merge", "forge");
    s.start();
    s.wait_listening(1, SECS(20));
    let job = txt2img(s.conf.port, 4.0);
    s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload();
    s.conf
        .env
        .insert("STANDIN_JOB_SECONDS".into(), "0.5".into());
    s.reload();
    s.conf.extra_args = vec!["--pin-shared-memory".into()];
    s.reload();
    s.wait(SECS(3), "STATUS naming both pending changes", || {
        s.notify
            .status()
            .contains("restart pending (ui.extra_args, ui.environment changed)")
            .then_some(())
    });
    assert!(signals(&s).is_empty(), "a reload signalled the busy UI");

    let ended = s.wait_event("job_end", 1, SECS(15));
    assert!(ended.completed());
    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let sig = s.wait_event("signal", 1, SECS(10));
    assert!(sig.t >= ended.t);
    let second = s.wait_listening(2, SECS(20));
    let argv = second.argv();
    assert!(
        argv.contains(&"--pin-shared-memory".to_string()),
        "{argv:?}"
    );
    assert!(!argv.contains(&"--cuda-malloc".to_string()), "{argv:?}");
    assert_eq!(second.v["env"]["STANDIN_JOB_SECONDS"], "0.5");
    std::thread::sleep(Duration::from_millis(1500)); // > idle_grace: a second restart would show
    assert_eq!(s.starts().len(), 2, "three reloads, one restart");
    assert_eq!(signals(&s).len(), 1);
}

#[test]
fn deadline_restarts_a_busy_ui() {
    let mut s = Scenario::new("deadline", "forge");
    s.conf.deadline = Some("2s".into());
    s.start();
    let first = s.wait_listening(1, SECS(20));
    let job = txt2img(s.conf.port, 8.0);
    let started = s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    let t0 = now_unix();
    s.reload();
    s.wait(SECS(2), "STATUS with the deadline", || {
        let st = s.notify.status();
        (st.contains("restart pending (ui.extra_args changed), waits for idle, deadline "))
            .then_some(())
    });
    let sig = s.wait_event("signal", 1, SECS(6));
    assert_eq!(sig.pid, first.pid);
    let after = sig.t - t0;
    assert!(
        (2.0..=2.5).contains(&after),
        "the deadline (2 s) restart began {after:.3} s after the reload\n{}",
        s.diagnostics()
    );
    assert!(
        sig.t < started.t + 8.0,
        "the job was done before the deadline"
    );
    // That is the deadline's purpose: the job is interrupted, and the front
    // door tells its client so (502), not sending it again.
    let answer = job.join().expect("the job thread");
    assert_eq!(answer, Ok(502), "the interrupted job's answer");
    assert!(
        events(&s.records(), "job_end")
            .iter()
            .all(|r| !r.completed()),
        "no job completed"
    );
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
}

#[test]
fn manual_policy_never_restarts_and_says_so() {
    let mut s = Scenario::new("manual", "forge");
    s.conf.policy = "manual".into();
    s.start();
    s.wait_listening(1, SECS(20));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload();
    s.wait(SECS(3), "STATUS with the manual restart", || {
        s.notify
            .status()
            .contains(
                "restart pending (ui.extra_args changed), manual: run 'sd-webui-supervisor restart'",
            )
            .then_some(())
    });
    // Idle for 3 s: thirty queue probes, three times the idle grace.
    std::thread::sleep(SECS(3));
    assert_eq!(s.starts().len(), 1, "manual restarted the UI");
    assert!(signals(&s).is_empty(), "manual signalled the UI");
    let st = s.notify.status();
    assert!(
        st.starts_with("ready; idle") && st.contains("manual: run 'sd-webui-supervisor restart'"),
        "{st}"
    );
}

#[test]
fn immediately_policy_restarts_at_once_even_while_busy() {
    let mut s = Scenario::new("immediately", "forge");
    s.conf.policy = "immediately".into();
    s.start();
    s.wait_listening(1, SECS(20));
    let job = txt2img(s.conf.port, 5.0);
    s.wait_event("job_start", 1, SECS(10));

    s.conf.extra_args = vec!["--cuda-malloc".into()];
    let t0 = now_unix();
    s.reload();
    let sig = s.wait_event("signal", 1, SECS(3));
    assert!(
        sig.t - t0 < 0.5,
        "immediately: the stop began {:.3} s after the reload",
        sig.t - t0
    );
    assert_eq!(job.join().expect("the job thread"), Ok(502), "interrupted");
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
}

/// Waits until the first job ended or the stand-in got a signal; returns the job's
/// end, if it came.
fn job_end_or_signal(s: &Scenario, timeout: Duration) -> Option<Rec> {
    s.wait(timeout, "the job's end or a signal", || {
        let recs = s.records();
        let end = events(&recs, "job_end").first().map(|r| (*r).clone());
        let sig = !events(&recs, "signal").is_empty();
        (end.is_some() || sig).then_some(end)
    })
}

/// Asserts the job ran to completion with no signal before its end.
fn assert_job_survived(
    s: &Scenario,
    end: Option<Rec>,
    job: std::thread::JoinHandle<Result<u16, String>>,
) {
    let sig = signals(s);
    let Some(end) = end else {
        panic!(
            "the UI was stopped while its job ran: {:?}\n{}",
            sig.first().map(|r| &r.v),
            s.diagnostics()
        );
    };
    assert!(end.completed(), "the job was interrupted");
    assert!(
        sig.iter().all(|r| r.t >= end.t),
        "a signal reached the UI before its job ended\n{}",
        s.diagnostics()
    );
    assert_eq!(job.join().expect("the job thread"), Ok(200));
}

/// The first Forge queue probe (pending-tasks, then progress: its last request) after `after`.
fn next_queue_probe(s: &Scenario, after: f64) -> Rec {
    s.wait(SECS(5), "a queue probe", || {
        s.requests("GET", "/sdapi/v1/progress")
            .into_iter()
            .find(|r| r.t > after)
    })
}

/// A job that arrives after the idle grace began must reset it. Here the queue is
/// probed every 2 s, the grace is 1 s: the probe that starts the grace sees an
/// idle queue, then a 3 s job arrives; the restart is due 1 s later, and the
/// supervisor must look at the queue again before stopping the UI.
#[test]

fn a_job_submitted_during_the_idle_grace_is_not_killed() {
    let mut s = Scenario::new("grace-job", "forge");
    s.conf.poll_interval = Some("2s".into());
    s.start();
    s.wait_listening(1, SECS(20));
    // Reload right after a queue probe was answered, so that none is in flight
    // across the reload: the next one, ~2 s later, starts the grace.
    next_queue_probe(&s, now_unix());
    std::thread::sleep(Duration::from_millis(100));
    s.conf.extra_args = vec!["--cuda-malloc".into()];
    // The core probes the queue as soon as a restart becomes pending, often before
    // `reload` has returned: look for that probe from before the reload on.
    let before_reload = now_unix();
    s.reload();
    // The first queue probe after the reload (pending-tasks, then progress) sees
    // the queue empty: the grace starts.
    let probe = next_queue_probe(&s, before_reload);
    std::thread::sleep(Duration::from_millis(50));
    let job = txt2img(s.conf.port, 3.0);
    let started = s.wait_event("job_start", 1, SECS(5));
    assert!(
        started.t - probe.t < 0.5,
        "the job started {:.3} s after the probe: too late to test the grace",
        started.t - probe.t
    );
    let end = job_end_or_signal(&s, SECS(10));
    assert_job_survived(&s, end, job);
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().contains(&"--cuda-malloc".to_string()));
}

/// A UI answers requests as soon as it listens, before the supervisor's next
/// readiness probe (every 250 ms) notices: a job it accepted then is a running
/// generation like any other, and a reload must not restart the UI under it.
/// The race is set up from the record: submit a job the moment the stand-in
/// listens, then reload; an attempt counts when the daemon's log shows the reload
/// handled before "UI is ready".
#[test]

fn a_job_accepted_by_a_starting_ui_is_not_killed_by_a_reload() {
    for attempt in 1..=5 {
        let mut s = Scenario::new("starting-job", "forge");
        s.write_config();
        s.spawn();
        let l = s.wait_event("listening", 1, SECS(20));
        let job = txt2img(s.conf.port, 2.0);
        s.wait_event("job_start", 1, SECS(5));
        s.conf.extra_args = vec!["--cuda-malloc".into()];
        s.write_config();
        s.daemon().signal(nix::sys::signal::Signal::SIGHUP);
        s.wait(SECS(5), "the reload in the log", || {
            s.daemon()
                .log_tail(100)
                .contains("sd_webui_supervisor::supervisor::reconfigure")
                .then_some(())
        });
        let log = s.daemon().log();
        let reload_at = log.find("sd_webui_supervisor::supervisor::reconfigure");
        let ready_at = log.find("UI is ready");
        let decisive = match (reload_at, ready_at) {
            (Some(r), Some(ready)) => r < ready,
            (Some(_), None) => true,
            _ => false,
        };
        if !decisive {
            eprintln!(
                "attempt {attempt}: the supervisor saw the UI ready before it handled the reload \
                 ({:.3} s after the UI listened); again",
                now_unix() - l.t
            );
            drop(job);
            continue;
        }
        let end = job_end_or_signal(&s, SECS(10));
        assert_job_survived(&s, end, job);
        return;
    }
    eprintln!(
        "inconclusive: in 5 attempts the supervisor always saw the UI ready before the reload"
    );
}
