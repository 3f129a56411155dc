//! Benchmark (not a test) for issue 2: what the supervisor costs while it watches an
//! idle UI, and how much downtime it adds to a UI restart.
//!
//!     cargo bench --bench supervisor
//!
//! 1. Idle: the supervisor (this build, i.e. release under `cargo bench`; and the
//!    debug build beside it when one exists) supervises the idle stand-in UI for
//!    60 s (`SDWS_BENCH_IDLE_SECS`), with `WATCHDOG_USEC` as under the shipped unit
//!    (`WatchdogSec=60s`). RSS is `VmRSS` from /proc/<pid>/status sampled every
//!    second; CPU% is utime+stime from /proc/<pid>/stat over the window.
//!    Goal (issue 10): ≤ 6 MB RSS, ≤ 0.1 % CPU. Baseline: the stand-in's own figures.
//! 2. Restart downtime: `restart.policy = "immediately"`, a stand-in that starts
//!    instantly; each round changes `ui.extra_args` and sends SIGHUP, 12 rounds
//!    (`SDWS_BENCH_RESTARTS`). Downtime runs from the old stand-in's `exit` record
//!    to (a) the new UI process's exec (a one-line `sh` wrapper stamps the time, then
//!    execs Python) — the supervisor-added part, goal ≤ 100 ms — and (b) the new
//!    stand-in's `start` record, which adds Python's own interpreter start-up
//!    (printed separately as the baseline).

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::procs::status_bytes;
use support::{NotifySocket, Scene, pid, t};

const MB: f64 = 1024.0 * 1024.0;

/// Clock ticks per second for /proc/<pid>/stat.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: i32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state(0) ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime(11) stime(12).
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / clk_tck()
}

/// Proportional set size (shared pages split among their users) from
/// /proc/<pid>/smaps_rollup: the fair figure for the guard, whose pages are
/// mostly the supervisor's, shared copy-on-write since the fork.
fn pss_bytes(pid: i32) -> f64 {
    fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb * 1024.0)
}

/// One process watched over the idle window.
struct Watched {
    label: String,
    pid: i32,
    cpu0: f64,
    rss_max: f64,
    rss_sum: f64,
    samples: u32,
}

impl Watched {
    fn new(label: String, pid: i32) -> Watched {
        Watched {
            label,
            pid,
            cpu0: cpu_secs(pid),
            rss_max: 0.0,
            rss_sum: 0.0,
            samples: 0,
        }
    }

    fn sample(&mut self) {
        let rss = status_bytes(self.pid, "VmRSS");
        self.rss_max = self.rss_max.max(rss);
        self.rss_sum += rss;
        self.samples += 1;
    }

    fn report(&self, wall: f64, goal: bool) {
        let cpu = (cpu_secs(self.pid) - self.cpu0) / wall * 100.0;
        let hwm = status_bytes(self.pid, "VmHWM");
        let mean = self.rss_sum / f64::from(self.samples.max(1));
        let (rss_goal, cpu_goal) = if goal {
            (
                verdict(self.rss_max <= 6.0 * MB, "goal ≤ 6 MB"),
                verdict(cpu <= 0.1, "goal ≤ 0.1 %"),
            )
        } else {
            ("baseline".to_string(), "baseline".to_string())
        };
        println!(
            "  {:<34} RSS {:>6.2} MB max, {:>6.2} MB mean, peak {:>6.2} MB   [{rss_goal}]",
            self.label,
            self.rss_max / MB,
            mean / MB,
            hwm / MB
        );
        let tick = 100.0 / clk_tck() / wall;
        println!(
            "  {:<34} CPU {:>6.3} % over {wall:.0} s (±{tick:.3} %)          [{cpu_goal}]",
            "", cpu
        );
    }
}

fn verdict(ok: bool, goal: &str) -> String {
    format!("{goal}: {}", if ok { "met" } else { "MISSED" })
}

/// A daemon of `bin` supervising an idle stand-in; returns it with its notify socket.
fn idle_daemon(scene: &Scene, bin: &Path) -> (support::Daemon, NotifySocket) {
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene
        .daemon()
        .binary(bin)
        .notify(&notify)
        .env("WATCHDOG_USEC", "60000000")
        .spawn();
    notify.wait("READY=1", Duration::from_secs(60), |n| n.is_ready());
    notify.wait_status("ready; idle", Duration::from_secs(30));
    (daemon, notify)
}

fn bench_idle(release: &Path, debug: Option<&Path>) {
    let secs = support::env::env_or("SDWS_BENCH_IDLE_SECS", 60);
    println!("\n== idle supervision: {secs} s with an idle stand-in (queue probe every 2 s) ==");
    let mut builds = vec![("release", release.to_path_buf())];
    if let Some(d) = debug {
        builds.push(("debug", d.to_path_buf()));
    }
    let mut running = Vec::new();
    let mut watched = Vec::new();
    for (label, bin) in &builds {
        let scene = Scene::new(&format!("bench-idle-{label}"));
        let (daemon, notify) = idle_daemon(&scene, bin);
        let ui = pid(&scene.record().starts()[0]);
        // Let the start-up settle before the window opens.
        std::thread::sleep(Duration::from_secs(2));
        watched.push((
            Watched::new(format!("supervisor ({label} build)"), daemon.pid()),
            true,
        ));
        for guard in support::guards_of(daemon.pid()) {
            watched.push((
                Watched::new(format!("its UI group's guard ({label})"), guard),
                false,
            ));
        }
        watched.push((
            Watched::new(format!("stand-in UI (python, {label} run)"), ui),
            false,
        ));
        running.push((scene, daemon, notify));
    }
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(secs) {
        for (w, _) in &mut watched {
            w.sample();
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let wall = began.elapsed().as_secs_f64();
    for (w, goal) in &watched {
        w.report(wall, *goal);
    }
    for (_, daemon, _) in &running {
        let guards = support::guards_of(daemon.pid());
        let guard_pss: f64 = guards.iter().map(|&g| pss_bytes(g)).sum();
        println!(
            "  supervisor {} + guard: PSS {:.2} MB + {:.2} MB (shared pages counted once)",
            daemon.pid(),
            pss_bytes(daemon.pid()) / MB,
            guard_pss / MB
        );
    }
    for (scene, _, notify) in &running {
        let starts = scene.record().starts().len();
        let last = notify.statuses().last().cloned().unwrap_or_default();
        println!(
            "  ({}: {starts} start(s), status {last:?})",
            scene.dir().display()
        );
    }
}

fn stats(label: &str, mut v: Vec<f64>, goal_ms: Option<f64>, note: &str) {
    v.sort_by(f64::total_cmp);
    let (min, med, max) = (v[0], v[v.len() / 2], v[v.len() - 1]);
    let goal = match goal_ms {
        Some(g) => format!("[{}]", verdict(max <= g, &format!("goal ≤ {g:.0} ms"))),
        None => format!("[{note}]"),
    };
    println!("  {label:<46} min {min:>7.1}  median {med:>7.1}  max {max:>7.1} ms  {goal}");
}

fn bench_restart(bin: &Path) {
    let rounds = support::env::env_or("SDWS_BENCH_RESTARTS", 12) as usize;
    println!(
        "\n== restart downtime: {rounds} restarts by ui.extra_args change + SIGHUP, restart.policy = \"immediately\" =="
    );
    let mut scene = Scene::new("bench-restart");
    scene.policy = "immediately".into();
    let exec_log = scene.dir().join("exec.log");
    scene.command = vec![
        "/bin/sh".into(),
        "-c".into(),
        format!(
            "date +%s.%N >> '{}'; exec '{}' '{}' \"$@\"",
            exec_log.display(),
            support::python3().display(),
            support::stand_in().display()
        ),
        "sh".into(),
    ];
    let notify = NotifySocket::bind(scene.dir());
    let daemon = scene.daemon().binary(bin).notify(&notify).spawn();
    notify.wait("READY=1", Duration::from_secs(60), |n| n.is_ready());
    notify.wait_status("ready; idle", Duration::from_secs(30));
    let record = scene.record();

    let (mut to_exec, mut to_start, mut python, mut to_ready) = (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        let old = record.starts().last().cloned().expect("a running stand-in");
        let n = record.starts().len();
        scene.extra_args = vec!["--timeout-keep-alive".into(), (30 + round).to_string()];
        scene.write_config();
        let mark = notify.len();
        daemon.signal(Signal::SIGHUP);
        let new = record.wait_starts(n + 1, Duration::from_secs(30))[n].clone();
        let exit = record.wait_event("the old stand-in's exit", Duration::from_secs(10), |e| {
            e["event"] == "exit" && pid(e) == pid(&old)
        });
        let (_, ready) = notify.wait_from(mark, "ready again", Duration::from_secs(30), |m| {
            m.status().is_some_and(|s| s.starts_with("ready; idle"))
        });
        let execs: Vec<f64> = fs::read_to_string(&exec_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        let exec_t = execs[n];
        to_exec.push((exec_t - t(&exit)) * 1000.0);
        to_start.push((t(&new) - t(&exit)) * 1000.0);
        python.push((t(&new) - exec_t) * 1000.0);
        to_ready.push((support::unix_secs(ready.at) - t(&exit)) * 1000.0);
    }
    stats(
        "old UI exit → new UI exec'd (supervisor-added)",
        to_exec,
        Some(100.0),
        "",
    );
    stats(
        "old UI exit → new stand-in `start` record",
        to_start,
        None,
        "includes the stand-in's Python start-up",
    );
    stats(
        "  of which Python start-up (exec → `start`)",
        python,
        None,
        "the UI's own cost, baseline",
    );
    stats(
        "old UI exit → supervisor sees the new UI ready",
        to_ready,
        None,
        "includes start-up and the 250 ms readiness poll",
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this binary
    // without it: then only say how to run it, instead of spending two minutes.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "benches/supervisor.rs: a benchmark; run it with `cargo bench --bench supervisor`"
        );
        return;
    }
    let release = PathBuf::from(env!("CARGO_BIN_EXE_sd-webui-supervisor"));
    let debug = release
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("debug/sd-webui-supervisor"))
        .filter(|d| d.exists() && *d != release);
    println!("supervisor binary: {}", release.display());
    if let Some(d) = &debug {
        let age = fs::metadata(d)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|m| m.elapsed().ok())
            .map_or("?".into(), |a| format!("{:.0} min", a.as_secs_f64() / 60.0));
        println!(
            "debug binary for comparison: {} (built {age} ago)",
            d.display()
        );
    }
    bench_idle(&release, debug.as_deref());
    bench_restart(&release);
}
