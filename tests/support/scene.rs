//! A scene: one daemon's scratch directory and config ([`Scene`]); and a reload
//! scenario built on it ([`Scenario`]: scene + fake notify socket + the daemon).

use std::fmt::Write as _;
use std::fs;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::config::{Conf, write_atomic};
use super::daemon::{Daemon, DaemonBuilder};
use super::notify::NotifySocket;
use super::record::{Rec, Record, events, read_record};
use super::wait::poll_until;

/// Where one daemon's files live and what its config says (the fields of
/// [`Conf`] are reachable on the scene itself).
pub struct Scene {
    dir: TempDir,
    /// What the config file says.
    pub conf: Conf,
    /// The config file (default `<dir>/config.toml`).
    pub config: PathBuf,
}

impl Deref for Scene {
    type Target = Conf;
    fn deref(&self) -> &Conf {
        &self.conf
    }
}

impl DerefMut for Scene {
    fn deref_mut(&mut self) -> &mut Conf {
        &mut self.conf
    }
}

impl Scene {
    /// A scene in a fresh directory under the system temp dir, with
    /// [`Conf::plain`].
    pub fn new(name: &str) -> Scene {
        let dir = tempfile::Builder::new()
            .prefix(&format!("sdws-{name}-"))
            .tempdir()
            .expect("create a temp dir");
        let conf = Conf::plain(dir.path());
        Scene::with(dir, conf)
    }

    /// A scene under cargo's per-target scratch dir (`target/tmp`), for processes
    /// that cannot see the host's /tmp (systemd units with `PrivateTmp=`), with
    /// [`Conf::plain`].
    pub fn in_target_dir(name: &str) -> Scene {
        let dir = target_tmp_dir(name);
        let conf = Conf::plain(dir.path());
        Scene::with(dir, conf)
    }

    fn with(dir: TempDir, conf: Conf) -> Scene {
        let config = dir.path().join("config.toml");
        Scene { dir, conf, config }
    }

    /// Sets one `ui.environment` variable (builder style).
    pub fn env(mut self, key: &str, value: impl ToString) -> Scene {
        self.conf.env.insert(key.into(), value.to_string());
        self
    }

    /// The scene's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the scene's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// The config file (written by [`Scene::write_config`]).
    pub fn config_path(&self) -> PathBuf {
        self.config.clone()
    }

    /// `data.dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.conf.data_dir.clone()
    }

    /// The stand-in's record file.
    pub fn record_path(&self) -> PathBuf {
        self.conf.record.clone()
    }

    /// The daemon's stdout+stderr (the UI's output goes there too).
    pub fn log_path(&self) -> PathBuf {
        self.path("daemon.log")
    }

    /// `STANDIN_RECORD=<record path>`: present in the environment of every process
    /// of this scene's UI (see [`super::procs::kill_marked`]).
    pub fn marker(&self) -> String {
        format!("STANDIN_RECORD={}", self.conf.record.display())
    }

    /// The stand-in's record.
    pub fn record(&self) -> Record {
        Record::new(self.record_path())
    }

    /// The config as TOML.
    pub fn config_toml(&self) -> String {
        self.conf.render()
    }

    /// Writes the config file (atomically) and returns its path.
    pub fn write_config(&self) -> PathBuf {
        write_atomic(&self.config, &self.conf.render());
        self.config_path()
    }

    /// A daemon for this scene (writes the config first).
    pub fn daemon(&self) -> DaemonBuilder {
        self.write_config();
        self.daemon_as_is()
    }

    /// A daemon on the config file as it is now.
    pub fn daemon_as_is(&self) -> DaemonBuilder {
        DaemonBuilder::new(self.config_path(), self.log_path(), self.marker())
    }
}

/// A fresh directory under cargo's target scratch dir, open to other users (a unit
/// running as another user must get in).
fn target_tmp_dir(name: &str) -> TempDir {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    fs::create_dir_all(&base).expect("create CARGO_TARGET_TMPDIR");
    let dir = tempfile::Builder::new()
        .prefix(&format!("sdws-{name}-"))
        .tempdir_in(&base)
        .expect("create a dir under CARGO_TARGET_TMPDIR");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// One reload scenario: a scene with the reload tests' config ([`Conf::new`]), the
/// fake notify socket and the daemon. On a panic its drop keeps the directory and
/// prints the daemon's log, the `STATUS=` lines and the record.
pub struct Scenario {
    /// Directory and config (its fields are reachable on the scenario).
    pub scene: Scene,
    /// The daemon's `$NOTIFY_SOCKET`.
    pub notify: NotifySocket,
    /// The daemon, once started.
    pub daemon: Option<Daemon>,
}

impl Deref for Scenario {
    type Target = Scene;
    fn deref(&self) -> &Scene {
        &self.scene
    }
}

impl DerefMut for Scenario {
    fn deref_mut(&mut self) -> &mut Scene {
        &mut self.scene
    }
}

impl Scenario {
    /// A scenario for `flavor`, not started; adjust `conf` before [`Scenario::start`].
    pub fn new(name: &str, flavor: &str) -> Scenario {
        let dir = target_tmp_dir(name);
        let conf = Conf::new(flavor, dir.path());
        let notify = NotifySocket::bind(dir.path());
        Scenario {
            scene: Scene::with(dir, conf),
            notify,
            daemon: None,
        }
    }

    /// Starts the daemon on the config file as it is, without waiting.
    pub fn spawn(&mut self) {
        self.spawn_with(|b| b);
    }

    /// Like [`Scenario::spawn`], with the daemon adjusted first (another binary,
    /// more environment).
    pub fn spawn_with(&mut self, adjust: impl FnOnce(DaemonBuilder) -> DaemonBuilder) {
        let builder = adjust(self.scene.daemon_as_is().notify(&self.notify));
        self.daemon = Some(builder.spawn());
    }

    /// Writes the config, starts the daemon, waits for `READY=1` (the UI answers).
    pub fn start(&mut self) {
        self.start_with(|b| b);
    }

    /// Like [`Scenario::start`], with the daemon adjusted first (see
    /// [`Scenario::spawn_with`]), e.g. a copy of the binary for a self-upgrade.
    pub fn start_with(&mut self, adjust: impl FnOnce(DaemonBuilder) -> DaemonBuilder) {
        self.write_config();
        self.spawn_with(adjust);
        self.wait(Duration::from_secs(30), "READY=1 at start", || {
            (self.notify.ready_count() >= 1).then_some(())
        });
    }

    /// The running daemon.
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

    /// The record so far.
    pub fn records(&self) -> Vec<Rec> {
        read_record(&self.conf.record)
    }

    /// Like [`super::wait::wait_for`], with the daemon's log and the record in the
    /// panic message.
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

    /// Runs a client command of the binary under test against this scenario's
    /// control socket (`status --json`, `restart --now`, …): exit code and
    /// stdout+stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(super::env::BIN)
            .args(args)
            .arg("--socket")
            .arg(&self.conf.socket)
            .output()
            .expect("run the CLI");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// `status --json`, parsed.
    pub fn status_json(&self) -> serde_json::Value {
        let (code, text) = self.cli(&["status", "--json"]);
        assert_eq!(code, 0, "status failed: {text}\n{}", self.diagnostics());
        serde_json::from_str(&text).expect("status --json is JSON")
    }

    /// Daemon log tail, `STATUS=` lines and record tail for a failure message.
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
        let text = fs::read_to_string(&self.conf.record).unwrap_or_default();
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
            self.scene.dir.disable_cleanup(true);
            eprintln!(
                "scenario {} failed (directory kept):\n{}",
                self.scene.dir().display(),
                self.diagnostics()
            );
        }
        // The daemon (and its UI) go before the directory does.
        self.daemon.take();
    }
}
