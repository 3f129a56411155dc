//! Under a real systemd (PID 1 in `../shared/tools/systemd-sandbox`, issue 2, "Must
//! show"): a `Type=notify` unit running `sd-webui-supervisor run` with a stand-in
//! that takes 3 s to start — `systemctl start` returns only once it is ready,
//! `systemctl status` shows the `Status:` line, `systemctl stop` leaves no process
//! in the unit's cgroup; and a `Type=notify-reload` unit reloads at once.
//!
//! Needs root. Skipped (with a message) when not root or when the sandbox tool is
//! missing — except under `CI=true`, where a missing tool fails the test.
//! The unit cannot see the host's /tmp, so everything it needs lives under
//! cargo's target dir (`CARGO_TARGET_TMPDIR`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use common::{Scene, pid, t, unix_secs, wait_for, wait_for_with};

/// One sandbox at a time: each boots its own systemd on the shared cgroup tree.
static SANDBOX: Mutex<()> = Mutex::new(());

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The sandbox tool, or `None` (with the reason printed) when this machine cannot
/// run the test.
fn sandbox_tool() -> Option<PathBuf> {
    let tool = common::repo_root().join("../shared/tools/systemd-sandbox");
    if !tool.exists() {
        assert!(
            !under_ci(),
            "CI=true but {} is missing: the systemd tests cannot run",
            tool.display()
        );
        eprintln!("SKIPPED: {} is missing", tool.display());
        return None;
    }
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("SKIPPED: systemd-sandbox needs root");
        return None;
    }
    Some(tool)
}

/// A booted sandbox; stopped (and everything in it killed) on drop.
struct Sandbox {
    tool: PathBuf,
    state: PathBuf,
}

impl Sandbox {
    fn start(tool: PathBuf, state: &Path) -> Sandbox {
        let out = Command::new(&tool)
            .arg("start")
            .arg(state)
            .output()
            .expect("run systemd-sandbox start");
        let sandbox = Sandbox {
            tool,
            state: state.to_path_buf(),
        };
        assert!(
            out.status.success(),
            "systemd-sandbox start failed: {}{}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(state.join("console.log")).unwrap_or_default()
        );
        sandbox
    }

    /// Runs a command inside.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new(&self.tool)
            .arg("exec")
            .arg(&self.state)
            .args(args)
            .output()
            .expect("run systemd-sandbox exec")
    }

    /// Runs a command inside; panics unless it succeeds; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -P <prop> <unit>`.
    fn prop(&self, unit: &str, prop: &str) -> String {
        self.ok(&["systemctl", "show", "-P", prop, unit])
            .trim()
            .to_string()
    }

    fn install(&self, unit_file: &Path) {
        let out = Command::new(&self.tool)
            .arg("install")
            .arg(&self.state)
            .arg(unit_file)
            .output()
            .expect("run systemd-sandbox install");
        assert!(
            out.status.success(),
            "systemd-sandbox install failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn journal(&self, unit: &str) -> String {
        String::from_utf8_lossy(&self.exec(&["journalctl", "--no-pager", "-u", unit]).stdout)
            .into_owned()
    }

    /// The cgroup.procs file of `unit`'s cgroup, found by where its main process
    /// is (cgroup v2, or the v1 `name=systemd` / hybrid `unified` hierarchy).
    fn cgroup_procs_file(&self, unit: &str) -> String {
        let cg = self.prop(unit, "ControlGroup");
        assert!(!cg.is_empty(), "{unit} has no ControlGroup");
        let main = self.prop(unit, "MainPID");
        for root in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/unified",
            "/sys/fs/cgroup/systemd",
        ] {
            let file = format!("{root}{cg}/cgroup.procs");
            let out = self.exec(&["cat", &file]);
            if out.status.success()
                && String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .any(|l| l.trim() == main)
            {
                return file;
            }
        }
        panic!("no cgroup.procs of {cg} lists the main pid {main}");
    }

    /// Processes in a cgroup.procs file; none when the cgroup is gone.
    fn procs(&self, file: &str) -> Vec<String> {
        let out = self.exec(&["cat", file]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Command::new(&self.tool)
            .arg("stop")
            .arg(&self.state)
            .output();
    }
}

/// Writes `<name>.service` for the daemon and the scene's config into the scene.
fn write_unit(scene: &Scene, name: &str, kind: &str) -> PathBuf {
    let config = scene.write_config();
    let unit = scene.dir().join(format!("{name}.service"));
    let text = format!(
        "[Unit]\n\
         Description=sd-webui-supervisor integration test ({kind})\n\
         \n\
         [Service]\n\
         Type={kind}\n\
         NotifyAccess=main\n\
         ExecStart={bin} run --config {config}\n\
         Environment=RUST_LOG=info\n\
         KillMode=mixed\n\
         TimeoutStartSec=60\n\
         TimeoutStopSec=30\n\
         WatchdogSec=10\n",
        bin = common::daemon_bin().display(),
        config = config.display(),
    );
    std::fs::write(&unit, text).expect("write the unit");
    unit
}

fn unit_name(what: &str) -> String {
    format!("sdws-test-{what}-{}", std::process::id())
}

#[test]
fn notify_unit_start_waits_for_ready_status_shows_and_stop_leaves_nothing() {
    let Some(tool) = sandbox_tool() else { return };
    let _one = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let scene = Scene::in_target_dir("systemd-notify").env("STANDIN_START_DELAY", 3);
    let name = unit_name("notify");
    let unit = format!("{name}.service");
    let file = write_unit(&scene, &name, "notify");
    let sandbox = Sandbox::start(tool, &scene.dir().join("sandbox"));
    sandbox.install(&file);
    let record = scene.record();

    // systemctl start blocks until READY=1, i.e. until the stand-in answered.
    let began = Instant::now();
    sandbox.ok(&["systemctl", "start", &unit]);
    let returned = SystemTime::now();
    let took = began.elapsed();
    eprintln!("systemctl start took {took:?} (stand-in start delay 3s)");
    assert!(
        took >= Duration::from_secs(3),
        "systemctl start took {took:?}"
    );
    assert_eq!(sandbox.prop(&unit, "ActiveState"), "active");
    let status_text = sandbox.prop(&unit, "StatusText");
    assert!(
        status_text.starts_with("ready"),
        "StatusText={status_text:?}"
    );
    let listening = record
        .of("listening")
        .into_iter()
        .next()
        .expect("the stand-in listened before systemctl start returned");
    assert!(t(&listening) <= unix_secs(returned));

    // systemctl status shows the one-line status.
    let status = wait_for_with(
        || {
            format!(
                "`Status: \"ready; idle; forge…` in systemctl status ({})",
                sandbox.prop(&unit, "StatusText")
            )
        },
        Duration::from_secs(10),
        || {
            let out = sandbox.exec(&["systemctl", "status", "--no-pager", &unit]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.contains("Status: \"ready; idle; forge; 0 models\"")
                .then_some(text)
        },
    );
    assert!(status.contains("Active: active (running)"), "{status}");

    // The stand-in is in the unit's cgroup, next to the daemon.
    let procs_file = sandbox.cgroup_procs_file(&unit);
    let procs = sandbox.procs(&procs_file);
    eprintln!("{procs_file}: {procs:?}");
    assert!(
        procs.len() >= 2,
        "daemon and stand-in in {procs_file}: {procs:?}"
    );
    let ui = record.starts()[0].clone();
    assert!(
        procs.contains(&pid(&ui).to_string()),
        "stand-in {} not in {procs:?}",
        pid(&ui)
    );

    // systemctl stop: the daemon stops the UI itself (SIGINT), exits 0, nothing left.
    sandbox.ok(&["systemctl", "stop", &unit]);
    assert_eq!(sandbox.prop(&unit, "ActiveState"), "inactive");
    assert_eq!(sandbox.prop(&unit, "ExecMainStatus"), "0");
    assert_eq!(sandbox.prop(&unit, "Result"), "success");
    let left = sandbox.procs(&procs_file);
    assert!(left.is_empty(), "left in {procs_file}: {left:?}");
    let signals = record.of("signal");
    assert_eq!(signals.len(), 1, "{signals:#?}");
    assert_eq!(signals[0]["signal"], "SIGINT", "the daemon stopped the UI");
    let journal = sandbox.journal(&unit);
    for bad in [
        "Killing process",
        "left-over",
        "SIGKILL",
        "Watchdog timeout",
    ] {
        assert!(!journal.contains(bad), "{bad:?} in the journal:\n{journal}");
    }
    // The UI's output reached the journal under the unit.
    assert!(journal.contains("Running on local URL"), "{journal}");
}

#[test]
fn notify_reload_unit_reloads_at_once_and_stays_active() {
    let Some(tool) = sandbox_tool() else { return };
    let _one = SANDBOX.lock().unwrap_or_else(|e| e.into_inner());
    let scene = Scene::in_target_dir("systemd-reload");
    let name = unit_name("reload");
    let unit = format!("{name}.service");
    let file = write_unit(&scene, &name, "notify-reload");
    let sandbox = Sandbox::start(tool, &scene.dir().join("sandbox"));
    sandbox.install(&file);

    sandbox.ok(&["systemctl", "start", &unit]);
    let main = sandbox.prop(&unit, "MainPID");
    wait_for("ready; idle", Duration::from_secs(10), || {
        sandbox
            .prop(&unit, "StatusText")
            .starts_with("ready; idle")
            .then_some(())
    });

    for _ in 0..2 {
        let began = Instant::now();
        sandbox.ok(&["systemctl", "reload", &unit]);
        let took = began.elapsed();
        eprintln!("systemctl reload took {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "systemctl reload took {took:?}"
        );
        assert_eq!(sandbox.prop(&unit, "ActiveState"), "active");
        assert_eq!(sandbox.prop(&unit, "SubState"), "running");
    }
    assert_eq!(sandbox.prop(&unit, "MainPID"), main, "same daemon");
    assert_eq!(sandbox.prop(&unit, "NRestarts"), "0");
    assert_eq!(scene.record().starts().len(), 1, "the UI was not restarted");
    let journal = sandbox.journal(&unit);
    assert!(!journal.contains("Reload operation timed out"), "{journal}");

    sandbox.ok(&["systemctl", "stop", &unit]);
    assert_eq!(sandbox.prop(&unit, "ExecMainStatus"), "0");
    assert_eq!(sandbox.prop(&unit, "Result"), "success");
}
