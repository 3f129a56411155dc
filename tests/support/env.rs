//! Where things are, and small facts about the machine a test runs on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");

/// The repository root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The daemon binary cargo built for this test run.
pub fn daemon_bin() -> PathBuf {
    PathBuf::from(BIN)
}

/// Absolute path of the stand-in UI.
pub fn stand_in() -> PathBuf {
    repo_root().join("examples/stand_in_ui.py")
}

/// A Python 3 interpreter every user can run (a unit may run the stand-in as
/// another user): the system's `/usr/bin/python3` where there is one, else the
/// real interpreter behind `python3` on `PATH` (its `sys.executable`, not a
/// pyenv/asdf shim, which needs its own environment). Absolute, as a unit's
/// `PATH` may differ.
pub fn python3() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let system = PathBuf::from("/usr/bin/python3");
        if system.is_file() {
            return system;
        }
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 runs (the stand-in UI needs it)");
        assert!(out.status.success(), "python3 failed: {out:?}");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// A TCP port that was free a moment ago, never the same twice in one test
/// process. Not from the kernel's ephemeral range (`bind :0`): a port from there
/// may be taken by any outgoing connection before the daemon binds it, and with
/// many daemons and UIs connecting side by side that happens. Not from the band
/// just below it either, where the daemon picks its UIs' private ports; the
/// 7,000 ports below that, from a place of this process's own.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SPAN: u32 = 7_000;
    let ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let from = ephemeral.saturating_sub(10_000 + SPAN).max(1024);
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(from + offset.wrapping_add(n) % SPAN).expect("a port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {from}..{}", from + SPAN)
}

/// Seconds since the epoch, like the stand-in's `t` (`time.time()`).
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// Wall-clock seconds now, comparable with the record's `t`.
pub fn now_unix() -> f64 {
    unix_secs(SystemTime::now())
}

/// A copy of the binary under test at `dir/name` (a hard link: same content,
/// another path, which is all a self-upgrade looks at).
pub fn binary_copy(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if fs::hard_link(BIN, &path).is_err() {
        fs::copy(BIN, &path).expect("copy the binary");
    }
    path
}

/// Writes an executable shell script.
pub fn write_script(path: &Path, body: &str) {
    fs::write(path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod script");
}

/// Whether this run is CI's (`CI=true` or `CI=1`): there a missing prerequisite
/// fails the test instead of skipping it.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A test that cannot run here says why and returns; under CI it fails instead.
/// The reason also goes to the file `$SDWS_SKIP_LOG` names, where
/// `scripts/test.sh` counts it (cargo shows a passing test's output to no one).
pub fn skip(why: &str) {
    assert!(
        !under_ci(),
        "CI=true, so this test may not be skipped: {why}"
    );
    eprintln!("SKIPPED: {why}");
    if let Some(log) = std::env::var_os("SDWS_SKIP_LOG") {
        let test = std::thread::current().name().unwrap_or("?").to_string();
        let line = format!("{test}: {why}\n");
        let _ = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
    }
}

/// A benchmark's count from the environment (`FRONT_BENCH_GETS=…`), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A fake `/dev` with the NVIDIA nodes of GPUs `0..n` and a fake `nvidia-smi`
/// under `dir`, for the GPU preflight (`SD_WEBUI_SUPERVISOR_DEV_DIR`,
/// `SD_WEBUI_SUPERVISOR_NVIDIA_SMI`); returns both paths.
pub fn fake_gpus(dir: &Path, n: u32) -> (PathBuf, PathBuf) {
    let dev = dir.join("dev");
    fs::create_dir_all(&dev).expect("fake /dev");
    let nodes = ["nvidiactl".to_string(), "nvidia-uvm".to_string()];
    for node in nodes
        .into_iter()
        .chain((0..n).map(|i| format!("nvidia{i}")))
    {
        fs::write(dev.join(node), "").expect("fake device node");
    }
    let smi = dir.join("nvidia-smi");
    write_script(
        &smi,
        "echo 'NVIDIA-SMI 550.54.14  Driver Version: 550.54.14'",
    );
    (dev, smi)
}
