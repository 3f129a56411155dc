//! A real systemd as PID 1 in private namespaces, through the project's harness
//! `scripts/systemd-sandbox` (one implementation for the Rust tests and
//! `tests/nix/check.sh`). For the tests about systemd itself: `systemctl`,
//! `journalctl`, `busctl`, `systemd-analyze security`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};

use super::env::{repo_root, skip};
use super::wait::poll_until;

/// One sandbox at a time in a test binary: each boots its own systemd on the
/// machine's one cgroup tree.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The harness script.
pub fn tool() -> PathBuf {
    repo_root().join("scripts/systemd-sandbox")
}

/// `Err(what is missing)` when this machine cannot boot a sandbox (not root, no
/// `unshare`, systemd older than 254…).
pub fn available() -> Result<(), String> {
    let out = Command::new(tool())
        .arg("check")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", tool().display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let gaps = String::from_utf8_lossy(&out.stdout);
        Err(format!(
            "systemd sandbox: {}",
            gaps.trim().lines().collect::<Vec<_>>().join("; ")
        ))
    }
}

/// A booted sandbox; dropping it kills everything inside and removes what it made.
pub struct Sandbox {
    state: PathBuf,
    _turn: MutexGuard<'static, ()>,
}

impl Sandbox {
    /// Boots a sandbox keeping its bookkeeping in `state`, with `dirs` visible
    /// inside at their own paths (the repository and target dir always are), and
    /// `dbus_policies` added to its system bus. `None` (the test skipped, with the
    /// reason printed; a failure under `CI=true`) when this machine cannot.
    pub fn boot(state: &Path, dirs: &[&Path], dbus_policies: &[&Path]) -> Option<Sandbox> {
        if let Err(why) = available() {
            skip(&why);
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let policies = std::env::join_paths(dbus_policies).expect("policy paths without ':'");
        let out = Command::new(tool())
            .arg("start")
            .arg(state)
            .args(dirs)
            .env("SANDBOX_DBUS_POLICY", policies)
            .output()
            .expect("run scripts/systemd-sandbox start");
        let sandbox = Sandbox {
            state: state.to_path_buf(),
            _turn: turn,
        };
        assert!(
            out.status.success(),
            "systemd-sandbox start failed: {}{}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(state.join("console.log")).unwrap_or_default()
        );
        Some(sandbox)
    }

    /// Runs a command inside (as root).
    pub fn exec(&self, args: &[&str]) -> Output {
        Command::new(tool())
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run scripts/systemd-sandbox exec")
    }

    /// Starts a command inside with its stdout piped (for monitors that run while
    /// the test goes on).
    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new(tool())
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run scripts/systemd-sandbox exec")
    }

    /// Runs a command inside and returns its stdout; panics if it fails.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in the sandbox failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Copies unit files into the sandbox's `/run/systemd/system` and reloads.
    pub fn install(&self, units: &[&Path]) {
        let out = Command::new(tool())
            .arg("install")
            .arg(&self.state)
            .args(units)
            .output()
            .expect("run scripts/systemd-sandbox install");
        assert!(
            out.status.success(),
            "installing {units:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `systemctl show -P <property> <unit>`.
    pub fn property(&self, unit: &str, property: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-P", property, unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The unit's journal (`journalctl -u <unit>`), for failure messages.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "--no-pager", "-u", unit]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The sandbox's bookkeeping folder.
    pub fn state(&self) -> &Path {
        &self.state
    }

    /// Starts the sandbox's own systemd-logind (a static unit the sandbox's
    /// target does not pull in) and waits until it answers on the system bus.
    /// `Err(why)` where this systemd has no logind or it cannot run here.
    pub fn start_logind(&self) -> Result<(), String> {
        let unit = self.exec(&["systemctl", "cat", "systemd-logind.service"]);
        if !unit.status.success() {
            return Err(format!(
                "this systemd has no systemd-logind.service: {}",
                String::from_utf8_lossy(&unit.stderr).trim()
            ));
        }
        let start = self.exec(&["systemctl", "start", "systemd-logind.service"]);
        if !start.status.success() {
            return Err(format!(
                "systemd-logind does not start in the sandbox: {}\n{}",
                String::from_utf8_lossy(&start.stderr).trim(),
                self.journal("systemd-logind.service")
            ));
        }
        let answers = poll_until(std::time::Duration::from_secs(10), || {
            let call = self.exec(&LIST_INHIBITORS);
            call.status.success().then_some(())
        });
        answers.ok_or_else(|| {
            format!(
                "systemd-logind runs but does not answer ListInhibitors:\n{}",
                self.journal("systemd-logind.service")
            )
        })
    }

    /// logind's inhibitor locks now (`ListInhibitors`), every holder's.
    pub fn inhibitors(&self) -> Vec<InhibitorLock> {
        let out = self.run(&LIST_INHIBITORS);
        let doc: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ListInhibitors answered {out:?}: {e}"));
        let rows = doc["data"][0].as_array().cloned().unwrap_or_default();
        rows.iter()
            .map(|r| {
                let s = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                InhibitorLock {
                    what: s(0),
                    who: s(1),
                    why: s(2),
                    mode: s(3),
                    uid: r[4].as_u64().unwrap_or(u64::MAX),
                    pid: r[5].as_u64().unwrap_or(0),
                }
            })
            .collect()
    }
}

/// `busctl call … ListInhibitors` with JSON output.
const LIST_INHIBITORS: [&str; 7] = [
    "busctl",
    "--json=short",
    "call",
    "org.freedesktop.login1",
    "/org/freedesktop/login1",
    "org.freedesktop.login1.Manager",
    "ListInhibitors",
];

/// One of logind's inhibitor locks, as `ListInhibitors` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InhibitorLock {
    /// `sleep`, `shutdown`, `idle`, … (colon-separated).
    pub what: String,
    /// Who took it.
    pub who: String,
    /// Why, in the taker's words.
    pub why: String,
    /// `block` or `delay`.
    pub mode: String,
    /// The taker's uid.
    pub uid: u64,
    /// The taker's pid.
    pub pid: u64,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Services and systemd itself; not the host kernel's ring buffer.
            let out = self.exec(&[
                "journalctl",
                "--no-pager",
                "-n",
                "80",
                "_TRANSPORT=stdout",
                "+",
                "_TRANSPORT=journal",
                "+",
                "_TRANSPORT=syslog",
            ]);
            eprintln!(
                "--- the sandbox's journal (tail, without the kernel):\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let _ = Command::new(tool()).arg("stop").arg(&self.state).output();
    }
}
