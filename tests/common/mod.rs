//! Shared helpers for the integration tests that run the real daemon against the
//! stand-in UI (`examples/stand_in_ui.py`).
//!
//! - [`Scene`]: a scratch directory with a config for one daemon (free port, data
//!   dir, control socket, the stand-in's record file), written as TOML.
//! - [`Daemon`]: `sd-webui-supervisor run --config …` as a child, with its log in
//!   the scene; dropping it SIGKILLs the daemon and every process of its UI, even
//!   when the test panicked (and then prints the log's tail).
//! - [`Record`]: the stand-in's JSON-lines record (`start`, `listening`, `request`,
//!   `signal`, `exit`, …).
//! - [`NotifySocket`]: a fake `$NOTIFY_SOCKET` (a unix datagram socket) that keeps
//!   every datagram with its arrival time.
//! - [`wait_for`]: poll a condition with a deadline; every wait in the tests is bounded.
//!
//! Each test binary uses a different subset of this module.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------
// Paths and small utilities

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The daemon binary cargo built for this test run.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sd-webui-supervisor"))
}

/// Absolute path of the stand-in UI.
pub fn stand_in() -> PathBuf {
    repo_root().join("examples/stand_in_ui.py")
}

/// The real Python 3 interpreter (not a pyenv/asdf shim, which needs its own
/// environment): what `python3` on `PATH` reports as `sys.executable`.
pub fn python3() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs (the stand-in UI needs it)");
        assert!(out.status.success(), "python3 failed: {out:?}");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A TCP port that was free a moment ago (bind 127.0.0.1:0, read it, close).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`
/// with `what` in the message.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_with(|| what.to_string(), timeout, check)
}

/// Like [`wait_for`], with the panic message computed at the timeout (so it can show
/// what was seen instead).
pub fn wait_for_with<T>(
    what: impl Fn() -> String,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {}", what());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Seconds since the epoch, like the stand-in's `t` (`time.time()`).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

// ---------------------------------------------------------------------------------
// Processes, seen through /proc

/// `/proc/<pid>/stat`: (state, ppid, pgrp), or `None` when the process is gone.
pub fn proc_stat(pid: i32) -> Option<(char, i32, i32)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything: split after ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// Whether `pid` is a live process: it exists and is not a zombie (the machine's
/// init may not reap orphans, so a dead orphan can linger as a zombie).
pub fn alive(pid: i32) -> bool {
    proc_stat(pid).is_some_and(|(state, _, _)| state != 'Z' && state != 'X')
}

/// The guards `parent` forked for its UI's group (named `sd-webui-guard`; see
/// src/process/guard.rs).
pub fn guards_of(parent: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            proc_stat(pid).is_some_and(|(_, ppid, _)| ppid == parent)
                && fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == "sd-webui-guard")
        })
        .collect()
}

/// Every pid under /proc.
fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Live (non-zombie) processes of process group `pgid`, with their state.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&p| {
            proc_stat(p)
                .is_some_and(|(state, _, pgrp)| pgrp == pgid && state != 'Z' && state != 'X')
        })
        .collect()
}

/// Live processes whose environment holds exactly `entry` (`KEY=VALUE`). The
/// stand-in's unique `STANDIN_RECORD=…` marks every process of a test's UI, its
/// children included, whatever group they ended up in.
pub fn live_processes_with_env(entry: &str) -> Vec<i32> {
    let needle = entry.as_bytes();
    all_pids()
        .into_iter()
        .filter(|&p| {
            alive(p)
                && fs::read(format!("/proc/{p}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == needle))
        })
        .collect()
}

/// SIGKILLs every live process marked with `entry` (see [`live_processes_with_env`])
/// and their process groups.
pub fn kill_marked(entry: &str) {
    for pid in live_processes_with_env(entry) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        if let Some((_, _, pgrp)) = proc_stat(pid)
            && pgrp == pid
        {
            let _ = killpg(Pid::from_raw(pgrp), Signal::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------------
// A scene: one daemon's config and scratch files

/// Where one daemon's files live and what its config says.
pub struct Scene {
    dir: TempDir,
    /// The UI's port.
    pub port: u16,
    /// `ui.flavor`.
    pub flavor: String,
    /// `ui.command` (default: the real python3 and the stand-in).
    pub command: Vec<String>,
    /// `ui.environment` (the stand-in's `STANDIN_RECORD` is always added).
    pub environment: BTreeMap<String, String>,
    /// `ui.gpus`.
    pub gpus: Option<Vec<u32>>,
    /// `ui.extra_args`.
    pub extra_args: Vec<String>,
    /// `ui.startup_timeout`.
    pub startup_timeout: String,
    /// `ui.stop_timeout`.
    pub stop_timeout: String,
    /// `restart.policy`.
    pub restart_policy: String,
    /// More `[ui]` keys, written as given (e.g. `api_auth_file`).
    pub ui_extra: toml::Table,
    /// More `[control]` keys, written as given (e.g. `http_listen`).
    pub control_extra: toml::Table,
}

impl Scene {
    /// A scene in a fresh directory under the system temp dir.
    pub fn new(name: &str) -> Scene {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sdws-{name}-"))
            .tempdir()
            .expect("create a temp dir");
        Scene::with_dir(dir)
    }

    /// A scene under cargo's per-target scratch dir (`target/tmp`), for processes
    /// that cannot see the host's /tmp (systemd units with PrivateTmp, the sandbox).
    pub fn in_target_dir(name: &str) -> Scene {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        fs::create_dir_all(&base).expect("create CARGO_TARGET_TMPDIR");
        let dir = tempfile::Builder::new()
            .prefix(&format!("sdws-{name}-"))
            .tempdir_in(&base)
            .expect("create a dir under CARGO_TARGET_TMPDIR");
        // tempfile makes it 0700; a unit running as another user must get in.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        Scene::with_dir(dir)
    }

    fn with_dir(dir: TempDir) -> Scene {
        Scene {
            dir,
            port: free_port(),
            flavor: "forge".into(),
            command: vec![
                python3().display().to_string(),
                stand_in().display().to_string(),
            ],
            environment: BTreeMap::new(),
            gpus: None,
            extra_args: Vec::new(),
            startup_timeout: "60s".into(),
            stop_timeout: "10s".into(),
            restart_policy: "immediately".into(),
            ui_extra: toml::Table::new(),
            control_extra: toml::Table::new(),
        }
    }

    /// Sets one `ui.environment` variable (builder style).
    pub fn env(mut self, key: &str, value: impl ToString) -> Scene {
        self.environment.insert(key.into(), value.to_string());
        self
    }

    /// The scene's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file (written by [`Scene::write_config`]).
    pub fn config_path(&self) -> PathBuf {
        self.dir().join("config.toml")
    }

    /// `data.dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    /// The stand-in's record file.
    pub fn record_path(&self) -> PathBuf {
        self.dir().join("record.jsonl")
    }

    /// The daemon's stdout+stderr (the UI's output goes there too).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("daemon.log")
    }

    /// `STANDIN_RECORD=<record path>`: present in the environment of every process
    /// of this scene's UI (see [`kill_marked`]).
    pub fn marker(&self) -> String {
        format!("STANDIN_RECORD={}", self.record_path().display())
    }

    /// The stand-in's record.
    pub fn record(&self) -> Record {
        Record::new(self.record_path())
    }

    /// The config as TOML.
    pub fn config_toml(&self) -> String {
        use toml::{Table, Value as T};
        let mut ui = Table::new();
        ui.insert("flavor".into(), T::String(self.flavor.clone()));
        ui.insert(
            "command".into(),
            T::Array(self.command.iter().cloned().map(T::String).collect()),
        );
        ui.insert("port".into(), T::Integer(i64::from(self.port)));
        ui.insert(
            "extra_args".into(),
            T::Array(self.extra_args.iter().cloned().map(T::String).collect()),
        );
        let mut env: Table = self
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), T::String(v.clone())))
            .collect();
        env.insert(
            "STANDIN_RECORD".into(),
            T::String(self.record_path().display().to_string()),
        );
        ui.insert("environment".into(), T::Table(env));
        if let Some(gpus) = &self.gpus {
            ui.insert(
                "gpus".into(),
                T::Array(gpus.iter().map(|g| T::Integer(i64::from(*g))).collect()),
            );
        }
        ui.insert(
            "startup_timeout".into(),
            T::String(self.startup_timeout.clone()),
        );
        ui.insert("stop_timeout".into(), T::String(self.stop_timeout.clone()));
        ui.extend(self.ui_extra.clone());
        let mut data = Table::new();
        data.insert(
            "dir".into(),
            T::String(self.data_dir().display().to_string()),
        );
        let mut restart = Table::new();
        restart.insert("policy".into(), T::String(self.restart_policy.clone()));
        let mut control = Table::new();
        control.insert(
            "socket".into(),
            T::String(self.dir().join("control.sock").display().to_string()),
        );
        control.insert("dbus".into(), T::String("off".into()));
        control.extend(self.control_extra.clone());
        let mut root = Table::new();
        root.insert("ui".into(), T::Table(ui));
        root.insert("data".into(), T::Table(data));
        root.insert("restart".into(), T::Table(restart));
        root.insert("control".into(), T::Table(control));
        toml::to_string(&root).expect("serialize the config")
    }

    /// Writes the config file and returns its path.
    pub fn write_config(&self) -> PathBuf {
        let path = self.config_path();
        fs::write(&path, self.config_toml()).expect("write the config");
        path
    }

    /// A daemon for this scene (writes the config first).
    pub fn daemon(&self) -> DaemonBuilder {
        DaemonBuilder::new(self)
    }
}

// ---------------------------------------------------------------------------------
// The daemon

/// How to start the daemon.
pub struct DaemonBuilder {
    bin: PathBuf,
    config: PathBuf,
    log: PathBuf,
    marker: String,
    env: Vec<(OsString, Option<OsString>)>,
    ignore: Vec<libc::c_int>,
    block: Vec<libc::c_int>,
}

impl DaemonBuilder {
    fn new(scene: &Scene) -> DaemonBuilder {
        DaemonBuilder {
            bin: daemon_bin(),
            config: scene.write_config(),
            log: scene.log_path(),
            marker: scene.marker(),
            env: Vec::new(),
            ignore: Vec::new(),
            block: Vec::new(),
        }
    }

    /// Runs this build of the daemon instead of the one cargo built for the test.
    pub fn binary(mut self, bin: &Path) -> DaemonBuilder {
        self.bin = bin.to_path_buf();
        self
    }

    /// Sets an environment variable of the daemon.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> DaemonBuilder {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// `$NOTIFY_SOCKET` for the daemon.
    pub fn notify(self, socket: &NotifySocket) -> DaemonBuilder {
        self.env("NOTIFY_SOCKET", socket.path())
    }

    /// Starts the daemon with these signals set to SIG_IGN (inherited through exec).
    pub fn ignoring(mut self, signals: &[Signal]) -> DaemonBuilder {
        self.ignore
            .extend(signals.iter().map(|s| *s as libc::c_int));
        self
    }

    /// Starts the daemon with these signals blocked (inherited through exec).
    pub fn blocking(mut self, signals: &[Signal]) -> DaemonBuilder {
        self.block.extend(signals.iter().map(|s| *s as libc::c_int));
        self
    }

    /// Spawns `sd-webui-supervisor run --config …`.
    pub fn spawn(self) -> Daemon {
        let log = fs::File::create(&self.log).expect("create the daemon log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        // Nothing from the test runner's own service manager or GPU setup leaks in.
        for key in [
            "NOTIFY_SOCKET",
            "WATCHDOG_USEC",
            "WATCHDOG_PID",
            "LISTEN_FDS",
            "LISTEN_PID",
            "CUDA_VISIBLE_DEVICES",
            "SD_WEBUI_SUPERVISOR_DEV_DIR",
            "SD_WEBUI_SUPERVISOR_NVIDIA_SMI",
            "SD_WEBUI_SUPERVISOR_GPU_RECHECK_SECS",
        ] {
            cmd.env_remove(key);
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let (ignore, block) = (self.ignore.clone(), self.block.clone());
        if !ignore.is_empty() || !block.is_empty() {
            // SAFETY: between fork and exec only async-signal-safe libc calls.
            unsafe {
                cmd.pre_exec(move || {
                    for &sig in &ignore {
                        if libc::signal(sig, libc::SIG_IGN) == libc::SIG_ERR {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if !block.is_empty() {
                        let mut set: libc::sigset_t = std::mem::zeroed();
                        libc::sigemptyset(&mut set);
                        for &sig in &block {
                            libc::sigaddset(&mut set, sig);
                        }
                        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("spawn sd-webui-supervisor");
        Daemon {
            child: Some(child),
            log: self.log,
            marker: self.marker,
            exit: None,
        }
    }
}

/// A running daemon. Dropping it SIGKILLs the daemon and every process of the
/// scene's UI; when the test is panicking it also prints the daemon's log.
pub struct Daemon {
    child: Option<Child>,
    log: PathBuf,
    marker: String,
    exit: Option<ExitStatus>,
}

impl Daemon {
    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.pid()), sig).expect("signal the daemon");
    }

    /// The daemon's exit status, if it exited (reaps it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none()
            && let Some(child) = self.child.as_mut()
        {
            self.exit = child.try_wait().expect("try_wait on the daemon");
        }
        self.exit
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        wait_for("the daemon to exit", timeout, || self.try_exit())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.exit.is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        // The UI dies with the daemon (PDEATHSIG) — but do not rely on what is tested.
        kill_marked(&self.marker);
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("---- daemon log ({}), last lines ----", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// The stand-in's record

/// The stand-in's JSON-lines record file.
#[derive(Clone)]
pub struct Record {
    path: PathBuf,
}

impl Record {
    /// The record at `path` (it may not exist yet).
    pub fn new(path: PathBuf) -> Record {
        Record { path }
    }

    /// Every complete event so far.
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.path).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Events named `event`.
    pub fn of(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// `start` events: one per launch of the stand-in.
    pub fn starts(&self) -> Vec<Value> {
        self.of("start")
    }

    /// Waits until `pred` holds for some event and returns the first such event.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let seen = || {
            let events = self.events();
            let tail = &events[events.len().saturating_sub(30)..];
            format!("{what}; record so far (last 30): {tail:?}")
        };
        wait_for_with(seen, timeout, || self.events().into_iter().find(&pred))
    }

    /// Waits for the `n`th (1-based) `start` event.
    pub fn wait_starts(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("{n} stand-in start(s)"), timeout, || {
            let s = self.starts();
            (s.len() >= n).then_some(s)
        })
    }
}

/// An event's `t` (unix seconds).
pub fn t(event: &Value) -> f64 {
    event["t"].as_f64().expect("record event has t")
}

/// An event's `pid`.
pub fn pid(event: &Value) -> i32 {
    event["pid"].as_i64().expect("record event has pid") as i32
}

// ---------------------------------------------------------------------------------
// A fake NOTIFY_SOCKET

/// One datagram the daemon sent.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The payload, as sent.
    pub text: String,
    /// Wall clock at arrival (comparable with the record's `t`).
    pub at: SystemTime,
    /// Monotonic arrival time.
    pub instant: Instant,
}

impl Notification {
    /// The payload's `KEY=VALUE` lines (the trailing newline sd-notify adds dropped).
    pub fn lines(&self) -> Vec<&str> {
        self.text.lines().collect()
    }

    /// The value of `key` if this datagram is exactly one `key=value` line.
    pub fn single(&self, key: &str) -> Option<&str> {
        match self.lines().as_slice() {
            [line] => line.strip_prefix(key)?.strip_prefix('='),
            _ => None,
        }
    }

    /// `STATUS=` text, when this datagram is a status update.
    pub fn status(&self) -> Option<&str> {
        self.single("STATUS")
    }

    /// Whether this datagram is exactly `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.single("READY") == Some("1")
    }
}

/// A unix datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `<dir>/notify.sock` and starts collecting datagrams.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => m.lock().unwrap().push(Notification {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        at: SystemTime::now(),
                        instant: Instant::now(),
                    }),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("recv on the fake NOTIFY_SOCKET: {e}"),
                }
            }
        });
        NotifySocket {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket's path (the daemon's `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram so far, in arrival order.
    pub fn all(&self) -> Vec<Notification> {
        self.messages.lock().unwrap().clone()
    }

    /// Every `STATUS=` text so far.
    pub fn statuses(&self) -> Vec<String> {
        self.all()
            .iter()
            .filter_map(|n| n.status().map(String::from))
            .collect()
    }

    /// Waits for the first datagram at index ≥ `from` matching `pred`; returns its
    /// index and the datagram.
    pub fn wait_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notification) -> bool,
    ) -> (usize, Notification) {
        let seen = || {
            let texts: Vec<String> = self.all().iter().map(|n| n.text.clone()).collect();
            format!("{what}; datagrams so far: {texts:?}")
        };
        wait_for_with(seen, timeout, || {
            self.all()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, n)| pred(n))
        })
    }

    /// Waits for the first datagram matching `pred`.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notification) -> bool,
    ) -> Notification {
        self.wait_from(0, what, timeout, pred).1
    }

    /// Waits for a `STATUS=` line starting with `prefix`; returns the full line.
    pub fn wait_status(&self, prefix: &str, timeout: Duration) -> String {
        self.wait_status_from(0, prefix, timeout).1
    }

    /// Like [`NotifySocket::wait_status`], from datagram index `from` on.
    pub fn wait_status_from(
        &self,
        from: usize,
        prefix: &str,
        timeout: Duration,
    ) -> (usize, String) {
        let what = format!("STATUS={prefix}…");
        let (i, n) = self.wait_from(from, &what, timeout, |n| {
            n.status().is_some_and(|s| s.starts_with(prefix))
        });
        (i, n.status().unwrap_or_default().to_string())
    }

    /// Number of datagrams so far.
    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
