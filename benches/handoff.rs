//! Self-upgrade benchmark (issue 13), against the real binary and the stand-in
//! UI, outside systemd:
//!
//! 1. Handoff time: the config names the other binary copy, then SIGHUP →
//!    the new binary answers `GET /v1/status` on the control socket; p50/p99
//!    over N handoffs (A → B → A …); goal p99 <= 100 ms.
//! 2. UI downtime through those handoffs: a prober sends `GET /internal/ping`
//!    to the UI every 10 ms and counts failures (0 by construction: the UI is
//!    never stopped).
//! 3. Baseline, the same figures for a plain restart of the service (SIGTERM,
//!    wait for the exit, start again, as `systemctl restart` does): SIGTERM →
//!    the new daemon answering status, and the UI probes that failed meanwhile.
//!
//! Run: `cargo bench --bench handoff`. `HANDOFF_BENCH_RUNS` (default 20) and
//! `HANDOFF_BENCH_RESTARTS` (default 5) change the counts.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use support::config::write_atomic;
use support::env::BIN;
use support::http::http;
use support::scene::Scenario;
use support::stats::percentile;
use support::wait::poll_until;

/// `GET /v1/status` over the control socket; true on a 200 answer.
fn status_answers(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// Probes the UI every 10 ms until dropped; counts successes and failures.
struct Prober {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Prober {
    fn start(port: u16) -> Prober {
        let (ok, failed, stop) = (
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (o, f, s) = (ok.clone(), failed.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let next = Instant::now() + Duration::from_millis(10);
                match http(port, "GET", "/internal/ping", None, Duration::from_secs(1)) {
                    Ok((200, _)) => o.fetch_add(1, Ordering::Relaxed),
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Prober {
            ok,
            failed,
            stop,
            thread: Some(thread),
        }
    }

    fn counts(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn copy_of(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    if std::fs::hard_link(BIN, &path).is_err() {
        std::fs::copy(BIN, &path).expect("copy the binary");
    }
    path
}

fn main() {
    let runs = support::env::env_or("HANDOFF_BENCH_RUNS", 20);
    let restarts = support::env::env_or("HANDOFF_BENCH_RESTARTS", 5);
    let mut s = Scenario::new("bench-handoff", "forge");
    let bins = [
        copy_of(s.dir(), "supervisor-a"),
        copy_of(s.dir(), "supervisor-b"),
    ];
    s.conf.executable = Some(bins[0].clone());
    s.start_with(|d| d.binary(&bins[0]));
    s.wait_listening(1, Duration::from_secs(30));
    let socket = s.conf.socket.clone();
    let pid = s.daemon().pid();
    let exe = || std::fs::read_link(format!("/proc/{pid}/exe")).ok();

    let prober = Prober::start(s.conf.port);
    std::thread::sleep(Duration::from_millis(200));
    let (ok0, failed0) = prober.counts();
    let mut took = Vec::new();
    for i in 0..runs {
        let target = bins[(i + 1) % 2].clone();
        let ready = s.notify.ready_count();
        s.conf.executable = Some(target.clone());
        let t0 = Instant::now();
        write_atomic(&s.config, &s.conf.render());
        s.daemon().signal(Signal::SIGHUP);
        poll_until(Duration::from_secs(10), || {
            (exe().as_ref() == Some(&target)).then_some(())
        })
        .expect("the daemon runs the new binary");
        // Queued on the handed-over listener until the new binary serves it.
        while !status_answers(&socket) {
            std::thread::sleep(Duration::from_millis(1));
        }
        took.push(t0.elapsed().as_secs_f64() * 1000.0);
        poll_until(Duration::from_secs(10), || {
            (s.notify.ready_count() > ready).then_some(())
        })
        .expect("READY=1 from the new binary");
    }
    std::thread::sleep(Duration::from_millis(100));
    let (ok1, failed1) = prober.counts();
    let p50 = percentile(&took, 50.0);
    let p99 = percentile(&took, 99.0);
    println!(
        "handoff (SIGHUP → new binary answers status), {runs} runs: p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms; goal p99 <= 100 ms: {}",
        took.iter().cloned().fold(0.0, f64::max),
        if p99 <= 100.0 { "met" } else { "NOT MET" }
    );
    println!(
        "UI downtime through {runs} handoffs: {} of {} probes (every 10 ms) failed",
        failed1 - failed0,
        (ok1 - ok0) + (failed1 - failed0)
    );

    // Baseline: stop and start the service.
    let mut back = Vec::new();
    let mut lost = 0;
    let mut probes = 0;
    for _ in 0..restarts {
        let (ok0, failed0) = prober.counts();
        let t0 = Instant::now();
        s.daemon().signal(Signal::SIGTERM);
        poll_until(Duration::from_secs(30), || {
            s.daemon.as_mut().and_then(|d| d.try_exit())
        })
        .expect("the daemon exits on SIGTERM");
        s.daemon.take();
        let bin = s
            .conf
            .executable
            .clone()
            .unwrap_or_else(|| PathBuf::from(BIN));
        s.start_with(|d| d.binary(&bin));
        while !status_answers(&socket) {
            std::thread::sleep(Duration::from_millis(1));
        }
        back.push(t0.elapsed().as_secs_f64() * 1000.0);
        // The UI is back once its probes succeed again.
        let ui_back = poll_until(Duration::from_secs(30), || {
            (http(
                s.conf.port,
                "GET",
                "/internal/ping",
                None,
                Duration::from_secs(1),
            )
            .is_ok_and(|(c, _)| c == 200))
            .then_some(())
        });
        assert!(ui_back.is_some(), "the UI came back");
        std::thread::sleep(Duration::from_millis(50));
        let (ok1, failed1) = prober.counts();
        lost += failed1 - failed0;
        probes += (ok1 - ok0) + (failed1 - failed0);
    }
    println!(
        "baseline restart (SIGTERM → new daemon answers status), {restarts} runs: p50 {:.1} ms, p99 {:.1} ms; UI probes failed: {lost} of {probes} (≈ {} ms of downtime per restart)",
        percentile(&back, 50.0),
        percentile(&back, 99.0),
        lost * 10 / (restarts as u64).max(1)
    );
}
