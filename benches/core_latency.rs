//! Benchmark (not a test) for issue 10: the core answers while slow work hangs.
//!
//!     cargo bench --bench core_latency
//!
//! A fake `nvidia-smi` on `PATH` sleeps 30 s (the supervisor gives it 10 s) and
//! the stand-in stops answering 3 s after it starts (`STANDIN_HANG_AFTER`). Each
//! round times 50 `sd-webui-supervisor status` and 50 `sd-webui-supervisor
//! reload` runs (each reload flips a managed setting, so it is applied: validated,
//! laid out, and the live settings sent to a UI that never answers).
//! Round 1 runs while the preflight waits on `nvidia-smi`, round 2 while the UI
//! hangs. Goal: p99 < 100 ms for each (the figure includes starting the CLI).
//! `WATCHDOG_USEC` = 1 s: the largest gap between `WATCHDOG=1` messages is
//! printed beside it (the daemon pings at half the period).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{NotifySocket, Scene, daemon_bin};

const TRIES: usize = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs the CLI `TRIES` times; returns the sorted wall times in ms.
fn time_cli(scene: &Scene, args: &[&str], before_each: &mut dyn FnMut(usize)) -> Vec<f64> {
    let socket = scene.dir().join("control.sock");
    let mut ms = Vec::with_capacity(TRIES);
    for i in 0..TRIES {
        before_each(i);
        let began = Instant::now();
        let out = Command::new(daemon_bin())
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .expect("run the CLI");
        ms.push(began.elapsed().as_secs_f64() * 1000.0);
        assert!(out.status.success(), "{args:?}: {out:?}");
    }
    ms.sort_by(f64::total_cmp);
    ms
}

fn report(round: &str, what: &str, ms: &[f64]) {
    let p99 = percentile(ms, 0.99);
    println!(
        "{round:<28} {what:<7} p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  (goal p99 < 100 ms: {})",
        percentile(ms, 0.5),
        p99,
        ms[ms.len() - 1],
        if p99 < 100.0 { "met" } else { "MISSED" }
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "benches/core_latency.rs: a benchmark; run it with `cargo bench --bench core_latency`"
        );
        return;
    }
    let mut scene = Scene::new("bench-latency").env("STANDIN_HANG_AFTER", 3);
    scene.gpus = Some(vec![0]);
    let dev = scene.dir().join("dev");
    let bin = scene.dir().join("bin");
    fs::create_dir_all(&dev).expect("mkdir dev");
    fs::create_dir_all(&bin).expect("mkdir bin");
    fs::write(dev.join("nvidiactl"), "").expect("fake nvidiactl");
    fs::write(dev.join("nvidia0"), "").expect("fake nvidia0");
    let smi = bin.join("nvidia-smi");
    fs::write(&smi, "#!/bin/sh\nexec sleep 30\n").expect("fake nvidia-smi");
    fs::set_permissions(&smi, fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let notify = NotifySocket::bind(scene.dir());
    let config = scene.config_path();
    let base = scene.config_toml();
    let write = |i: usize| {
        let text = format!("{base}\n[settings]\njpeg_quality = {}\n", 50 + i % 2);
        fs::write(&config, text).expect("write the config");
    };
    let daemon = scene
        .daemon()
        .notify(&notify)
        .env("PATH", path)
        .env("WATCHDOG_USEC", "1000000")
        .env("SD_WEBUI_SUPERVISOR_DEV_DIR", dev.as_os_str());
    write(0);
    let _daemon = daemon.spawn();
    let socket = scene.dir().join("control.sock");
    support::wait_for("the control socket", Duration::from_secs(10), || {
        socket.exists().then_some(())
    });
    println!("supervisor binary: {}", daemon_bin().display());

    let round = "nvidia-smi hangs (10 s)";
    report(round, "status", &time_cli(&scene, &["status"], &mut |_| {}));
    report(
        round,
        "reload",
        &time_cli(&scene, &["reload"], &mut |i| write(i + 1)),
    );

    let listening = scene
        .record()
        .wait_event("listening", Duration::from_secs(40), |e| {
            e["event"] == "listening"
        });
    let hang_at = listening["t"].as_f64().unwrap_or(0.0) + 3.5;
    while support::unix_secs(std::time::SystemTime::now()) < hang_at {
        std::thread::sleep(Duration::from_millis(100));
    }
    let round = "UI hangs";
    report(round, "status", &time_cli(&scene, &["status"], &mut |_| {}));
    report(
        round,
        "reload",
        &time_cli(&scene, &["reload"], &mut |i| write(i + 2)),
    );

    let pings: Vec<Instant> = notify
        .all()
        .into_iter()
        .filter(|n| n.lines().contains(&"WATCHDOG=1"))
        .map(|n| n.instant)
        .collect();
    let gap = pings
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    println!(
        "watchdog: {} pings, largest gap {:.0} ms (WATCHDOG_USEC 1000 ms: {})",
        pings.len(),
        gap.as_secs_f64() * 1000.0,
        if gap < Duration::from_secs(1) {
            "never missed"
        } else {
            "MISSED"
        }
    );
}
