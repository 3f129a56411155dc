//! `sd-webui-supervisor run --config …` as a child, with its log in a file;
//! dropping it SIGKILLs the daemon and every process of its UI, even when the test
//! panicked (and then prints the log's tail).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::env::daemon_bin;
use super::notify::NotifySocket;
use super::procs::kill_marked;
use super::wait::wait_for;

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
    /// A daemon on `config`, logging to `log`; `marker` (`KEY=VALUE`) is in the
    /// environment of every process of its UI (see [`kill_marked`]).
    pub fn new(config: PathBuf, log: PathBuf, marker: String) -> DaemonBuilder {
        DaemonBuilder {
            bin: daemon_bin(),
            config,
            log,
            marker,
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

    /// Removes an environment variable the daemon would get (e.g. the
    /// `NO_COLOR=1` the tests set by default).
    pub fn without_env(mut self, key: &str) -> DaemonBuilder {
        self.env.push((key.into(), None));
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
        // `DAEMON_LOG=sd_webui_supervisor=debug` when a failure needs more.
        let level = std::env::var("DAEMON_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .unwrap_or_else(|_| "info".into());
        cmd.env("RUST_LOG", level).env("NO_COLOR", "1");
        // No system bus: the host's logind would list every test job's sleep
        // lock. A test that wants a bus sets DBUS_SYSTEM_BUS_ADDRESS itself.
        let no_bus = self.log.with_file_name("no-system-bus");
        cmd.env(
            "DBUS_SYSTEM_BUS_ADDRESS",
            format!("unix:path={}", no_bus.display()),
        );
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

    /// Stops the daemon as a service manager would (SIGTERM), waits up to
    /// `timeout` for it to exit on its own, then SIGKILLs what is left.
    pub fn terminate(mut self, timeout: Duration) -> Option<ExitStatus> {
        self.signal(Signal::SIGTERM);
        super::wait::poll_until(timeout, || self.try_exit())
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the daemon's log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// How many times the daemon launched a UI (its log's "UI launched" lines;
    /// a UI stopped before Python got going leaves no `start` record).
    pub fn launches(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("UI launched"))
            .count()
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
            eprintln!("---- daemon log ({}), last lines ----", self.log.display());
            eprintln!("{}", self.log_tail(60));
        }
    }
}
