//! Self-upgrade in place (issue 13), outside systemd: the daemon runs binary copy
//! A; the config names copy B and a reload hands over by `execve`. The UI (the
//! stand-in) keeps its PID and its running job; the daemon keeps its PID and runs
//! B; the pending restart, uptime and queue carry over. A binary that cannot take
//! over (missing, not executable, failing its check, reading an older state
//! version) is a rejected reload and changes nothing.

mod support;

use support::env::binary_copy;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::env::BIN;
use support::http::txt2img;
use support::record::events;
use support::scene::Scenario;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// `/proc/PID/exe`.
fn exe_of(pid: i32) -> PathBuf {
    std::fs::read_link(format!("/proc/{pid}/exe")).expect("read /proc/PID/exe")
}

/// `status --json` through the control socket.
fn status(s: &Scenario) -> Value {
    s.status_json()
}

/// `reload` through the control socket: exit code and stderr+stdout.
fn reload_cli(s: &Scenario) -> (i32, String) {
    s.cli(&["reload"])
}

/// The port the first UI listens on (its private one, behind the front door).
fn ui_port(s: &Scenario) -> u16 {
    let listening = s.wait_event("listening", 1, SECS(20));
    u16::try_from(listening.v["port"].as_u64().expect("a port")).expect("a port number")
}

/// Starts a forge stand-in under copy A with `executable = A`.
fn start_on_a(name: &str) -> (Scenario, PathBuf, PathBuf) {
    let mut s = Scenario::new(name, "forge");
    let a = binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = binary_copy(s.dir(), "sd-webui-supervisor-b");
    s.conf.executable = Some(a.clone());
    s.start_with(|d| d.binary(&a));
    (s, a, b)
}

#[test]
fn a_new_binary_takes_over_while_a_job_runs() {
    let (mut s, a, b) = start_on_a("handoff-job");
    let first = s.wait_listening(1, SECS(20));
    let pid = s.daemon().pid();
    assert_eq!(exe_of(pid), a);
    // Straight to the UI's own port, past the front door: a handoff waits for
    // the front door's requests (tests/front_door.rs); this is about the UI's job.
    let job = txt2img(ui_port(&s), 4.0);
    s.wait_event("job_start", 1, SECS(10));
    s.wait(SECS(5), "the busy queue in status", || {
        let st = status(&s);
        (st["queue"]["running"] == 1).then_some(())
    });
    let before = status(&s);

    s.conf.executable = Some(b.clone());
    // Waits for READY=1 after RELOADING=1: from the new binary.
    s.reload();

    assert_eq!(exe_of(pid), b, "the daemon runs B under the same PID");
    let after = status(&s);
    assert_eq!(
        after["ui_pid"], first.pid,
        "the UI was adopted, not restarted"
    );
    assert!(
        after["uptime_seconds"].as_u64() >= before["uptime_seconds"].as_u64(),
        "uptime carried over: {before} → {after}"
    );
    assert_eq!(after["state"], "ready");
    s.wait(SECS(5), "the queue reported by the new binary", || {
        (status(&s)["queue"]["running"] == 1).then_some(())
    });
    assert_eq!(
        job.join().expect("the job thread"),
        Ok(200),
        "the job completed\n{}",
        s.diagnostics()
    );
    assert!(s.daemon.as_mut().expect("daemon").try_exit().is_none());
    let recs = s.records();
    assert_eq!(events(&recs, "start").len(), 1, "one UI start only");
    assert!(events(&recs, "signal").is_empty(), "the UI got no signal");
    let log = s.daemon().log_tail(200);
    assert!(log.contains("adopted the running UI"), "{log}");
    s.wait(SECS(5), "an idle queue after the job", || {
        (status(&s)["queue"]["running"] == 0).then_some(())
    });
    assert_eq!(status(&s)["restart_pending"], Value::Null);
}

/// The UI's output pipes are handed over too: after the handoff the UI keeps
/// printing, its lines still reach the daemon's output (tagged, redacted) and
/// no print of the UI fails (with the read ends closed on exec, they would meet
/// EPIPE, or kill a UI that does not ignore SIGPIPE).
#[test]
fn the_ui_keeps_its_output_relayed_and_redacted_after_the_handoff() {
    const PASSWORD: &str = "Pw-4b1d93aa";
    let mut s = Scenario::new("handoff-output", "forge");
    let a = binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = binary_copy(s.dir(), "sd-webui-supervisor-b");
    let auth = s.path("api-auth");
    std::fs::write(&auth, format!("sup:{PASSWORD}\n")).expect("write the auth file");
    s.conf.ui_extra.insert(
        "api_auth_file".into(),
        toml::Value::String(auth.display().to_string()),
    );
    s.conf
        .env
        .insert("STANDIN_PRINT_REQUESTS".into(), "1".into());
    s.conf.executable = Some(a.clone());
    s.start_with(|d| d.binary(&a));
    let first = s.wait_listening(1, SECS(20));
    s.conf.executable = Some(b.clone());
    s.reload();
    assert_eq!(exe_of(s.daemon().pid()), b);

    // A request only this test makes, after the handoff.
    let marker = "/after-the-handoff";
    let _ = support::http::http(s.conf.port, "GET", marker, None, SECS(5));
    let line = format!("request GET {marker} COMMANDLINE_ARGS=--api-auth sup:***");
    s.wait(SECS(10), "the UI's lines from after the handoff", || {
        let log = s.daemon().log();
        let ours: Vec<&str> = log.lines().filter(|l| l.contains(&line)).collect();
        (ours.len() >= 2).then_some(())
    });
    let log = s.daemon().log();
    assert!(
        !log.contains(PASSWORD),
        "password in the daemon's output:\n{log}"
    );
    assert!(
        log.lines()
            .filter(|l| l.contains(&line))
            .all(|l| l.starts_with(&format!("ui[{}]: ", first.pid))),
        "the UI's lines are tagged with its pid:\n{log}"
    );
    let recs = s.records();
    assert!(
        events(&recs, "print_failed").is_empty(),
        "the UI could not print after the handoff: {:?}",
        events(&recs, "print_failed")
    );
    assert_eq!(status(&s)["ui_pid"], first.pid, "the UI was not replaced");
    assert_eq!(events(&recs, "start").len(), 1, "one UI start only");
}

#[test]
fn a_pending_restart_survives_the_handoff() {
    let (mut s, _a, b) = start_on_a("handoff-pending");
    let first = s.wait_listening(1, SECS(20));
    let job = txt2img(ui_port(&s), 5.0);
    s.wait_event("job_start", 1, SECS(10));
    s.conf.extra_args = vec!["--cuda-malloc".into()];
    s.reload();
    let pending = status(&s)["restart_pending"].clone();
    assert_eq!(pending["reasons"], serde_json::json!(["ui.extra_args"]));

    s.conf.executable = Some(b.clone());
    s.reload();
    let pid = s.daemon().pid();
    assert_eq!(exe_of(pid), b);
    let after = status(&s);
    assert_eq!(after["ui_pid"], first.pid);
    assert_eq!(
        after["restart_pending"], pending,
        "same reasons, same deadline"
    );
    assert!(
        after["status_line"]
            .as_str()
            .is_some_and(|l| l.contains("restart pending (ui.extra_args changed)"))
    );
    // The new binary carries the restart out once the job is done.
    assert_eq!(job.join().expect("the job thread"), Ok(200));
    let second = s.wait_listening(2, SECS(20));
    assert!(second.argv().iter().any(|a| a == "--cuda-malloc"));
    assert!(s.daemon.as_mut().expect("daemon").try_exit().is_none());
}

#[test]
fn binaries_that_cannot_take_over_are_rejected() {
    let (s, a, _b) = start_on_a("handoff-bad");
    let first = s.wait_listening(1, SECS(20));
    let pid = s.daemon().pid();
    let dir = s.dir();
    let missing = dir.join("no-such-binary");
    let not_exec = dir.join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\nexit 0\n").expect("write");
    std::fs::set_permissions(&not_exec, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let fails = dir.join("fails-check");
    std::fs::write(&fails, "#!/bin/sh\necho 'cannot read this' >&2\nexit 1\n").expect("write");
    std::fs::set_permissions(&fails, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // An older build: passes its check but reads only state version 0.
    let older = dir.join("older-state");
    std::fs::write(&older, "#!/bin/sh\necho 'state-version 0'\n").expect("write");
    std::fs::set_permissions(&older, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let cases = [
        (&missing, "does not exist"),
        (&not_exec, "is not an executable file"),
        (
            &fails,
            "failed its handoff check (exit 1): cannot read this",
        ),
        (&older, "reads handoff state version 0"),
    ];
    let mut conf = s.conf.clone();
    for (exe, why) in cases {
        conf.executable = Some(exe.clone());
        support::config::write_atomic(&s.config, &conf.render());
        let (code, text) = reload_cli(&s);
        assert_eq!(code, 1, "reload to {} must fail: {text}", exe.display());
        assert!(text.contains(why), "{why:?} not in {text:?}");
        let st = status(&s);
        assert_eq!(st["last_reload"]["result"], "rejected");
        assert!(
            st["status_line"].as_str().is_some_and(|l| l.contains(why)),
            "status line: {}",
            st["status_line"]
        );
        assert_eq!(st["ui_pid"], first.pid);
        assert_eq!(exe_of(pid), a, "A keeps running");
    }
    let log = s.daemon().log_tail(200);
    assert!(log.contains("does not exist"), "the log says why: {log}");
    let recs = s.records();
    assert_eq!(
        events(&recs, "start").len(),
        1,
        "the UI was never restarted"
    );
    assert!(events(&recs, "signal").is_empty(), "the UI got no signal");
}

#[test]
fn a_sighup_during_the_handoff_is_answered_by_the_new_binary() {
    let (s, _a, b) = start_on_a("handoff-sighup");
    s.wait_listening(1, SECS(20));
    let pid = s.daemon().pid();
    let ready = s.notify.ready_count();
    let reloading = |s: &Scenario| {
        s.notify
            .messages()
            .iter()
            .filter(|m| m.lines().any(|l| l == "RELOADING=1"))
            .count()
    };
    let reloads = reloading(&s);
    let mut conf = s.conf.clone();
    conf.executable = Some(b.clone());
    support::config::write_atomic(&s.config, &conf.render());
    s.daemon().signal(nix::sys::signal::Signal::SIGHUP);
    // The old binary has read the first SIGHUP; the second lands while it
    // checks B, hands over or execs, and must neither kill nor be lost.
    s.wait(SECS(5), "RELOADING=1 for the first SIGHUP", || {
        (reloading(&s) > reloads).then_some(())
    });
    s.daemon().signal(nix::sys::signal::Signal::SIGHUP);
    // Both SIGHUPs are answered: READY=1 comes after the last RELOADING=1
    // (reloads that began in the old binary are all answered by the new one's
    // READY=1), and at least two reload cycles were announced.
    let settled = |s: &Scenario| {
        let m = s.notify.messages();
        let last_reloading = m
            .iter()
            .rposition(|m| m.lines().any(|l| l == "RELOADING=1"));
        let last_ready = m.iter().rposition(|m| m.lines().any(|l| l == "READY=1"));
        (reloading(s) >= reloads + 2 && last_ready > last_reloading).then_some(())
    };
    s.wait(SECS(10), "READY=1 for both SIGHUPs", || settled(&s));
    std::thread::sleep(Duration::from_millis(300));
    s.wait(SECS(1), "no reload left unanswered", || settled(&s));
    assert!(s.notify.ready_count() > ready);
    assert_eq!(exe_of(pid), b);
    let recs = s.records();
    assert_eq!(events(&recs, "start").len(), 1);
}

/// A private session bus (`dbus-daemon --session`), killed on drop.
struct SessionBus {
    child: std::process::Child,
    address: String,
}

impl SessionBus {
    fn start() -> SessionBus {
        use std::io::BufRead;
        let mut child = Command::new("dbus-daemon")
            .args(["--session", "--print-address", "--nofork"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (Debian package dbus-daemon)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the bus address");
        SessionBus {
            child,
            address: line.trim().to_owned(),
        }
    }

    /// The `UiPid` property, read through the bus name; `None` when nobody
    /// owns the name.
    fn ui_pid(&self) -> Option<u64> {
        let out = Command::new("busctl")
            .arg(format!("--address={}", self.address))
            .args([
                "get-property",
                "io.github.sd_webui_supervisor.Supervisor1",
                "/io/github/sd_webui_supervisor/Supervisor1",
                "io.github.sd_webui_supervisor.Supervisor1",
                "UiPid",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().strip_prefix("u ")?.parse().ok()
    }
}

impl Drop for SessionBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dbus_name_moves_to_the_new_binary() {
    let bus = SessionBus::start();
    let mut s = Scenario::new("handoff-dbus", "forge");
    let a = binary_copy(s.dir(), "sd-webui-supervisor-a");
    let b = binary_copy(s.dir(), "sd-webui-supervisor-b");
    s.conf.executable = Some(a.clone());
    s.conf.dbus = "session".into();
    s.start_with(|d| {
        d.binary(&a)
            .env("DBUS_SESSION_BUS_ADDRESS", bus.address.clone())
    });
    let first = s.wait_listening(1, SECS(20));
    s.wait(SECS(5), "UiPid on the bus", || {
        (bus.ui_pid() == Some(u64::from(first.pid))).then_some(())
    });
    s.conf.executable = Some(b.clone());
    s.reload();
    assert_eq!(exe_of(s.daemon().pid()), b);
    s.wait(SECS(5), "the new binary answering on the bus", || {
        (bus.ui_pid() == Some(u64::from(first.pid))).then_some(())
    });
}

/// The binary and its download helper installed side by side in `dir/name/`,
/// as a package puts them in its `bin/`.
fn install_copy(dir: &Path, name: &str) -> PathBuf {
    let bin = dir.join(name);
    std::fs::create_dir_all(&bin).expect("create the bin folder");
    let helper = env!("CARGO_BIN_EXE_sd-webui-supervisor-fetch");
    for (from, to) in [
        (BIN, "sd-webui-supervisor"),
        (helper, "sd-webui-supervisor-fetch"),
    ] {
        if std::fs::hard_link(from, bin.join(to)).is_err() {
            std::fs::copy(from, bin.join(to)).expect("copy the binary");
        }
    }
    bin.join("sd-webui-supervisor")
}

/// The processes holding `part` open, with their programs.
fn part_writers(part: &Path) -> Vec<(i32, PathBuf)> {
    support::procs::holding(part)
        .into_iter()
        .filter_map(|pid| Some((pid, std::fs::read_link(format!("/proc/{pid}/exe")).ok()?)))
        .collect()
}

/// A download in flight across a self-upgrade: the old binary's helper is
/// stopped before the `execve` (else two writers would append to one `.part`),
/// the new binary's helper resumes it, and the file is whole.
#[test]
fn a_download_in_flight_is_resumed_by_the_new_binary() {
    use sha2::Digest;
    let body: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let hex = hex::encode(sha2::Sha256::digest(&body));
    let srv = support::download_server::Server::start("127.0.0.1", body.clone());
    *srv.behaviour.slow.lock().expect("lock") = Some(Duration::from_millis(40));
    let mut s = Scenario::new("handoff-download", "forge");
    let a = install_copy(s.dir(), "a");
    let b = install_copy(s.dir(), "b");
    let mut files = toml::Table::new();
    let mut model = toml::Table::new();
    model.insert("url".into(), srv.url("/file").into());
    model.insert("sha256".into(), hex.clone().into());
    files.insert("big.safetensors".into(), model.into());
    s.conf.downloads.insert("checkpoints".into(), files.into());
    s.conf.executable = Some(a.clone());
    s.start_with(|d| d.binary(&a));
    let cache = s.conf.data_dir.join(".sd-webui-supervisor/downloads");
    let part = cache.join(format!("{hex}.part"));
    s.wait(SECS(30), "a quarter of the download", || {
        (std::fs::metadata(&part).map_or(0, |m| m.len()) > 1_000_000).then_some(())
    });
    let old = part_writers(&part);
    assert!(
        !old.is_empty()
            && old
                .iter()
                .all(|(_, exe)| exe.starts_with(s.dir().join("a"))),
        "the writer before the handoff is A's helper: {old:?}"
    );

    s.conf.executable = Some(b.clone());
    s.reload();
    assert_eq!(exe_of(s.daemon().pid()), b);
    for (pid, _) in &old {
        s.wait(SECS(5), "the old helper gone", || {
            (!support::procs::alive(*pid)).then_some(())
        });
    }
    let new = part_writers(&part);
    assert!(
        new.len() <= 1
            && new
                .iter()
                .all(|(_, exe)| exe.starts_with(s.dir().join("b"))),
        "writers after the handoff: {new:?}"
    );
    *srv.behaviour.slow.lock().expect("lock") = None;
    s.wait(SECS(60), "the download done", || {
        (status(&s)["downloads"][0]["state"] == "done").then_some(())
    });
    assert!(
        std::fs::read(cache.join(&hex)).expect("the cached file") == body,
        "the file differs from what was served"
    );
}

/// The socket inodes in `pid`'s descriptor table (`socket:[N]` links).
fn sockets_of(pid: i32) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(link) = std::fs::read_link(e.path()) {
                let link = link.to_string_lossy().into_owned();
                if link.starts_with("socket:") {
                    out.insert(link);
                }
            }
        }
    }
    out
}

/// The descriptors a new binary takes over (the front door's listener, the
/// control sockets, the UI's pipes) are close-on-exec again once owned: a UI
/// started after the handoff inherits none of them. (A UI holding `ui.port`'s
/// listener would keep the port when the supervisor is gone, with nobody
/// accepting.)
#[test]
fn a_ui_started_after_the_handoff_inherits_none_of_the_daemons_sockets() {
    let (mut s, _a, b) = start_on_a("handoff-fds");
    let first = s.wait_listening(1, SECS(20));
    s.conf.executable = Some(b.clone());
    s.reload();
    let pid = s.daemon().pid();
    assert_eq!(exe_of(pid), b);
    let (code, out) = s.cli(&["restart", "--now"]);
    assert_eq!(code, 0, "{out}");
    let second = s.wait_listening(2, SECS(30));
    assert_ne!(second.pid, first.pid, "a new UI");
    let ui = i32::try_from(second.pid).expect("a pid");
    let shared: Vec<String> = sockets_of(pid)
        .intersection(&sockets_of(ui))
        .cloned()
        .collect();
    assert!(
        shared.is_empty(),
        "the new UI (pid {ui}) holds the daemon's sockets {shared:?}\n{}",
        s.diagnostics()
    );
}
