//! Helpers for the reload tests and the reload benchmark: a config writer, the
//! daemon under test (spawned from the real binary, killed with its UI group on
//! drop), a fake `NOTIFY_SOCKET`, the stand-in UI's record, a tiny HTTP client for
//! submitting jobs, and waits that always end.
//!
//! Every scenario lives in its own directory under the target dir (a systemd unit
//! with `PrivateTmp=` cannot see `/tmp`), uses its own free port, and reads what
//! happened from the stand-in's record (`STANDIN_RECORD`, one JSON object a line,
//! each with `pid` and `t` = the stand-in's `time.time()`).

#![allow(dead_code)] // each test binary uses a different part

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Absolute path of the stand-in UI.
pub fn stand_in() -> PathBuf {
    root().join("examples/stand_in_ui.py")
}

/// `python3`, resolved on `PATH` to an absolute path (a unit's `PATH` may differ).
pub fn python3() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .map_or_else(|| "/usr/bin/python3".into(), |p| p.display().to_string())
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// Wall-clock seconds, comparable with the record's `t`.
pub fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A fresh scenario directory under the target dir.
pub fn scenario_dir(name: &str) -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reload");
    std::fs::create_dir_all(&base).expect("create the scenario base dir");
    tempfile::Builder::new()
        .prefix(&format!("{name}-"))
        .tempdir_in(base)
        .expect("create a scenario dir")
}

/// Polls `f` every 10 ms until it returns `Some`, or `None` after `timeout`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`poll_until`], panicking on the timeout.
pub fn wait_for<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll_until(timeout, f)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

// ---------------------------------------------------------------------------------
// The config file

/// The parts of a config file the reload tests change; rendered as TOML.
#[derive(Debug, Clone)]
pub struct Conf {
    /// `forge`, `a1111` or `comfyui` (also the stand-in's `STANDIN_FLAVOR`).
    pub flavor: String,
    /// Program and script.
    pub command: Vec<String>,
    pub port: u16,
    pub extra_args: Vec<String>,
    /// `[ui] environment`, besides `STANDIN_FLAVOR` and `STANDIN_RECORD`.
    pub env: BTreeMap<String, String>,
    pub data_dir: PathBuf,
    pub record: PathBuf,
    pub socket: PathBuf,
    /// `[models.<kind>]`: file name → target.
    pub models: BTreeMap<String, BTreeMap<String, PathBuf>>,
    pub settings: toml::Table,
    pub policy: String,
    pub idle_grace: String,
    pub deadline: String,
    pub poll_interval: String,
    pub stop_timeout: String,
    /// `control.dbus` (default `off`).
    pub dbus: String,
    /// `[supervisor] executable` (self-upgrade), if set.
    pub executable: Option<PathBuf>,
    /// `[supervisor] unit_fingerprint`, if set.
    pub unit_fingerprint: Option<String>,
}

impl Conf {
    /// A config for the stand-in in `dir`, restart `when-idle` with a 1 s grace
    /// polled every 100 ms, a deadline far away.
    pub fn new(flavor: &str, dir: &Path) -> Conf {
        let mut settings = toml::Table::new();
        if flavor != "comfyui" {
            settings.insert("CLIP_stop_at_last_layers".into(), 2.into());
            settings.insert("samples_format".into(), "png".into());
        }
        Conf {
            flavor: flavor.into(),
            command: vec![python3(), stand_in().display().to_string()],
            port: free_port(),
            extra_args: Vec::new(),
            env: BTreeMap::new(),
            data_dir: dir.join("data"),
            record: dir.join("record.jsonl"),
            socket: dir.join("control.sock"),
            models: BTreeMap::new(),
            settings,
            policy: "when-idle".into(),
            idle_grace: "1s".into(),
            deadline: "1h".into(),
            poll_interval: "100ms".into(),
            stop_timeout: "10s".into(),
            dbus: "off".into(),
            executable: None,
            unit_fingerprint: None,
        }
    }

    /// The TOML text.
    pub fn render(&self) -> String {
        let mut env = self.env.clone();
        env.insert("STANDIN_FLAVOR".into(), self.flavor.clone());
        env.insert("STANDIN_RECORD".into(), self.record.display().to_string());
        let mut ui = toml::Table::new();
        ui.insert("flavor".into(), self.flavor.clone().into());
        ui.insert("command".into(), self.command.clone().into());
        ui.insert("port".into(), i64::from(self.port).into());
        ui.insert("extra_args".into(), self.extra_args.clone().into());
        ui.insert(
            "environment".into(),
            toml::Value::Table(env.into_iter().map(|(k, v)| (k, v.into())).collect()),
        );
        ui.insert("startup_timeout".into(), "1m".into());
        ui.insert("stop_timeout".into(), self.stop_timeout.clone().into());
        let mut data = toml::Table::new();
        data.insert("dir".into(), self.data_dir.display().to_string().into());
        let mut restart = toml::Table::new();
        restart.insert("policy".into(), self.policy.clone().into());
        restart.insert("idle_grace".into(), self.idle_grace.clone().into());
        restart.insert("deadline".into(), self.deadline.clone().into());
        restart.insert("poll_interval".into(), self.poll_interval.clone().into());
        let mut control = toml::Table::new();
        control.insert("socket".into(), self.socket.display().to_string().into());
        control.insert("dbus".into(), self.dbus.clone().into());
        let mut doc = toml::Table::new();
        doc.insert("ui".into(), ui.into());
        doc.insert("data".into(), data.into());
        if !self.models.is_empty() {
            let models: toml::Table = self
                .models
                .iter()
                .map(|(kind, files)| {
                    let files: toml::Table = files
                        .iter()
                        .map(|(n, p)| (n.clone(), p.display().to_string().into()))
                        .collect();
                    (kind.clone(), files.into())
                })
                .collect();
            doc.insert("models".into(), models.into());
        }
        if !self.settings.is_empty() {
            doc.insert("settings".into(), self.settings.clone().into());
        }
        doc.insert("restart".into(), restart.into());
        doc.insert("control".into(), control.into());
        let mut supervisor = toml::Table::new();
        if let Some(exe) = &self.executable {
            supervisor.insert("executable".into(), exe.display().to_string().into());
        }
        if let Some(fp) = &self.unit_fingerprint {
            supervisor.insert("unit_fingerprint".into(), fp.clone().into());
        }
        if !supervisor.is_empty() {
            doc.insert("supervisor".into(), supervisor.into());
        }
        toml::to_string(&doc).expect("the config renders as TOML")
    }

    /// The settings as the JSON values the UI should hold.
    pub fn settings_json(&self) -> serde_json::Map<String, Value> {
        self.settings
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::to_value(v).expect("a TOML value is JSON"),
                )
            })
            .collect()
    }
}

/// Writes `text` to `path` atomically (temp file in the same dir, then rename), the
/// way NixOS activation and most editors replace a file.
pub fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write the temp config");
    std::fs::rename(&tmp, path).expect("rename the config into place");
}

/// Rewrites `path` in place (truncate and write), like `echo > file`.
pub fn write_in_place(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write the config in place");
}

// ---------------------------------------------------------------------------------
// The stand-in's record

/// One line of the record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub event: String,
    pub pid: u32,
    pub t: f64,
    pub v: Value,
}

impl Rec {
    /// `request`: the path; else "".
    pub fn path(&self) -> &str {
        self.v["path"].as_str().unwrap_or("")
    }
    pub fn method(&self) -> &str {
        self.v["method"].as_str().unwrap_or("")
    }
    pub fn is_request(&self, method: &str, path: &str) -> bool {
        self.event == "request" && self.method() == method && self.path() == path
    }
    /// `start`: the argv.
    pub fn argv(&self) -> Vec<String> {
        self.v["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// `job_start`/`job_end`: the job id.
    pub fn id(&self) -> &str {
        self.v["id"].as_str().unwrap_or("")
    }
    pub fn completed(&self) -> bool {
        self.v["completed"].as_bool().unwrap_or(false)
    }
    pub fn signal(&self) -> &str {
        self.v["signal"].as_str().unwrap_or("")
    }
}

/// Every complete line of the record (a missing file is an empty record).
pub fn read_record(path: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(parse_line)
        .collect()
}

/// One record line, if it is one.
fn parse_line(line: &str) -> Option<Rec> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Rec {
        event: v["event"].as_str().unwrap_or("").to_string(),
        pid: v["pid"].as_u64().unwrap_or(0) as u32,
        t: v["t"].as_f64().unwrap_or(0.0),
        v,
    })
}

/// Reads a growing record incrementally (for tight loops over long runs).
pub struct RecordTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl RecordTail {
    pub fn new(path: &Path) -> RecordTail {
        RecordTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn poll(&mut self) -> Vec<Rec> {
        use std::io::{Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        let done = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..done).collect();
        lines.lines().filter_map(parse_line).collect()
    }
}

/// The records of one kind.
pub fn events<'a>(recs: &'a [Rec], event: &str) -> Vec<&'a Rec> {
    recs.iter().filter(|r| r.event == event).collect()
}

// ---------------------------------------------------------------------------------
// A fake NOTIFY_SOCKET

/// A datagram socket standing in for systemd's notify socket: every datagram is
/// kept with its arrival time.
pub struct NotifySink {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySink {
    pub fn bind(path: PathBuf) -> NotifySink {
        let sock = UnixDatagram::bind(&path).expect("bind the fake notify socket");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    m.lock().unwrap().push((Instant::now(), text));
                }
            }
        });
        NotifySink {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// Every datagram so far.
    pub fn messages(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// The `STATUS=` values so far, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.messages()
            .iter()
            .flat_map(|m| {
                m.lines()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last `STATUS=` value.
    pub fn status(&self) -> String {
        self.statuses().pop().unwrap_or_default()
    }

    /// How many datagrams carried `READY=1`.
    pub fn ready_count(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.lines().any(|l| l == "READY=1"))
            .count()
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------
// The daemon

/// A running `sd-webui-supervisor run`. Dropping it SIGKILLs the daemon, then
/// every UI process group the record shows started, so nothing outlives a test,
/// even a failing one.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    record: PathBuf,
}

impl Daemon {
    pub fn spawn(config: &Path, log: PathBuf, record: PathBuf, notify: Option<&Path>) -> Daemon {
        Daemon::spawn_bin(Path::new(BIN), config, log, record, notify, &[])
    }

    /// Like [`Daemon::spawn`], running the binary at `bin` (a copy, for handoffs).
    pub fn spawn_bin(
        bin: &Path,
        config: &Path,
        log: PathBuf,
        record: PathBuf,
        notify: Option<&Path>,
        env: &[(String, String)],
    ) -> Daemon {
        let out = std::fs::File::create(&log).expect("create the daemon log");
        let mut cmd = Command::new(bin);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            // `DAEMON_LOG=sd_webui_supervisor=debug` when a failure needs more.
            .env(
                "RUST_LOG",
                std::env::var("DAEMON_LOG").unwrap_or("info".into()),
            )
            .env("NO_COLOR", "1")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup the log"))
            .stderr(out);
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let child = cmd.spawn().expect("the sd-webui-supervisor binary runs");
        Daemon { child, log, record }
    }

    pub fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).expect("signal the daemon");
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The daemon's exit status, once it exited.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// How many times the daemon launched a UI (its log's "UI launched" lines;
    /// a UI stopped before Python got going leaves no `start` record).
    pub fn launches(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("UI launched"))
            .count()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for r in events(&read_record(&self.record), "start") {
            // Each stand-in is its own process group's leader.
            let _ = killpg(Pid::from_raw(r.pid as i32), Signal::SIGKILL);
        }
    }
}

// ---------------------------------------------------------------------------------
// A scenario: dir + config + daemon + notify socket

/// One scenario: its directory, its config (as last written), the daemon and the
/// fake notify socket. On a panic, its drop prints the daemon's log and the record.
pub struct Scenario {
    pub conf: Conf,
    pub config: PathBuf,
    pub notify: NotifySink,
    pub daemon: Option<Daemon>,
    pub dir: tempfile::TempDir,
    /// Extra environment of the daemon (e.g. `DBUS_SESSION_BUS_ADDRESS`).
    pub daemon_env: Vec<(String, String)>,
}

impl Scenario {
    /// A scenario for `flavor`, not started; adjust `conf` before [`Scenario::start`].
    pub fn new(name: &str, flavor: &str) -> Scenario {
        let dir = scenario_dir(name);
        let conf = Conf::new(flavor, dir.path());
        let config = dir.path().join("config.toml");
        let notify = NotifySink::bind(dir.path().join("notify.sock"));
        Scenario {
            conf,
            config,
            notify,
            daemon: None,
            dir,
            daemon_env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `conf` to the config file (atomically).
    pub fn write_config(&self) {
        write_atomic(&self.config, &self.conf.render());
    }

    /// Writes the config, starts the daemon, waits for `READY=1` (the UI answers).
    pub fn start(&mut self) {
        self.start_bin(Path::new(BIN));
    }

    /// [`Scenario::start`] with the binary at `bin`.
    pub fn start_bin(&mut self, bin: &Path) {
        self.write_config();
        self.daemon = Some(Daemon::spawn_bin(
            bin,
            &self.config,
            self.path("daemon.log"),
            self.conf.record.clone(),
            Some(&self.notify.path),
            &self.daemon_env,
        ));
        self.wait(Duration::from_secs(30), "READY=1 at start", || {
            (self.notify.ready_count() >= 1).then_some(())
        });
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon was started")
    }

    /// SIGHUP, then waits until the reload answered (`READY=1` after `RELOADING=1`).
    pub fn sighup(&self) {
        let before = self.notify.ready_count();
        self.daemon().signal(Signal::SIGHUP);
        self.wait(Duration::from_secs(10), "READY=1 after the reload", || {
            (self.notify.ready_count() > before).then_some(())
        });
    }

    /// Writes the config and reloads with SIGHUP.
    pub fn reload(&self) {
        self.write_config();
        self.sighup();
    }

    pub fn records(&self) -> Vec<Rec> {
        read_record(&self.conf.record)
    }

    /// Like [`wait_for`], with the daemon's log and the record in the panic message.
    pub fn wait<T>(&self, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
        poll_until(timeout, f).unwrap_or_else(|| {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.diagnostics()
            )
        })
    }

    /// Waits for the `n`-th (1-based) record of `event` and returns it.
    pub fn wait_event(&self, event: &str, n: usize, timeout: Duration) -> Rec {
        self.wait(timeout, &format!("{event} record #{n}"), || {
            events(&self.records(), event)
                .get(n - 1)
                .map(|r| (*r).clone())
        })
    }

    /// The requests of `method path` the stand-ins got so far.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Rec> {
        self.records()
            .into_iter()
            .filter(|r| r.is_request(method, path))
            .collect()
    }

    /// The stand-ins started so far.
    pub fn starts(&self) -> Vec<Rec> {
        events(&self.records(), "start")
            .into_iter()
            .cloned()
            .collect()
    }

    /// Waits until the `n`-th stand-in listens; returns its `start` record.
    pub fn wait_listening(&self, n: usize, timeout: Duration) -> Rec {
        let l = self.wait_event("listening", n, timeout);
        self.starts()
            .into_iter()
            .find(|s| s.pid == l.pid)
            .expect("a start record for the listening stand-in")
    }

    /// Daemon log tail, notify messages and record tail for a failure message.
    pub fn diagnostics(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.daemon {
            let _ = writeln!(s, "--- daemon log (tail):\n{}", d.log_tail(60));
        }
        let _ = writeln!(s, "--- STATUS= lines:");
        for st in self.notify.statuses() {
            let _ = writeln!(s, "  {st}");
        }
        let _ = writeln!(s, "--- record (tail):");
        let text = std::fs::read_to_string(&self.conf.record).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        for l in &lines[lines.len().saturating_sub(40)..] {
            let l: String = l.chars().take(300).collect();
            let _ = writeln!(s, "  {l}");
        }
        s
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Kept for a post-mortem: the record, the daemon's log, the config.
            self.dir.disable_cleanup(true);
            eprintln!(
                "scenario {} failed (directory kept):\n{}",
                self.dir.path().display(),
                self.diagnostics()
            );
        }
        // The daemon (and its UI) go before the directory does.
        self.daemon.take();
    }
}

// ---------------------------------------------------------------------------------
// Jobs over HTTP

/// A minimal HTTP/1.1 request (`Connection: close`); returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    http_on(s, port, method, path, body, timeout)
}

/// Like [`http`], on a connection already made (to tell "nothing listens" from
/// "the request failed").
pub fn http_on(
    mut s: TcpStream,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, raw[text_end + 4..].to_vec()))
}

/// `GET` a JSON document.
pub fn get_json(port: u16, path: &str) -> Value {
    let (status, body) =
        http(port, "GET", path, None, Duration::from_secs(10)).expect("GET from the stand-in");
    assert_eq!(status, 200, "GET {path}");
    serde_json::from_slice(&body).expect("a JSON answer")
}

/// Starts a Forge/A1111 `txt2img` of `seconds` in a thread (the request blocks until
/// the job is done); the thread returns the HTTP status or the I/O error.
pub fn txt2img(port: u16, seconds: f64) -> JoinHandle<Result<u16, String>> {
    std::thread::spawn(move || {
        let body = serde_json::json!({"prompt": "x", "stand_in_seconds": seconds});
        http(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            Some(&body),
            Duration::from_secs(120),
        )
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
    })
}

/// Queues a ComfyUI prompt of `seconds`; returns its prompt id.
pub fn comfy_prompt(port: u16, seconds: f64) -> String {
    let body = serde_json::json!({
        "prompt": {"1": {"class_type": "SaveImage", "inputs": {}}},
        "client_id": "t",
        "stand_in_seconds": seconds,
    });
    let (status, answer) = http(
        port,
        "POST",
        "/prompt",
        Some(&body),
        Duration::from_secs(10),
    )
    .expect("POST /prompt");
    assert_eq!(status, 200, "POST /prompt");
    let v: Value = serde_json::from_slice(&answer).expect("a JSON answer");
    v["prompt_id"].as_str().expect("a prompt_id").to_string()
}

/// A tiny seeded xorshift64* generator, so a failing soak run can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// Uniform in `[lo, hi)`.
    pub fn range_f64(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// p-th percentile (0..=100) of `xs`, nearest rank.
pub fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}
