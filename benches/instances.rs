//! Instances benchmark (issue "One queue, many GPUs"): what routing among
//! instances costs, and how evenly the front door spreads the work. The real
//! binary (release under `cargo bench`) supervises stand-in ComfyUIs.
//!
//! 1. Routing overhead: `GET /system_stats` (each on a new connection) straight
//!    to a UI's private port, through the front door of a one-UI daemon, and
//!    through the front door of a two-instance daemon, in interleaved rounds so
//!    drift hits all three alike. The figure is the two-instance door's p50/p99
//!    beside the one-UI door's (its baseline) and the UI's own.
//! 2. Balance: `FRONT_BENCH_PROMPTS` prompts (default 200) from 4 clients
//!    without a session, first all of one length (50 ms), then of mixed lengths
//!    (20–300 ms): jobs and busy seconds per instance, max/min (goal: jobs
//!    max/min ≤ 1.2 for equal lengths), and the time to finish all beside what
//!    one instance alone would take (the sum of the lengths).
//!
//! Run: `cargo bench --bench instances`. `INSTANCES_BENCH_GETS` (default 2000
//! per path) and `INSTANCES_BENCH_PROMPTS` (200) change the counts.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::env::fake_gpus;
use support::http::http;
use support::record::events;
use support::scene::Scenario;
use support::stats::percentile;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// One GET on a new connection, read to the end; its status.
fn get(port: u16, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(SECS(60)));
    let _ = s.set_nodelay(true);
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A stand-in ComfyUI behind the front door; with `instances`, two of them
/// (`gpu0`, `gpu1` on fake GPUs). Started, every UI ready.
fn started(name: &str, instances: bool) -> Scenario {
    let mut s = Scenario::new(name, "comfyui");
    s.conf.poll_interval = Some("200ms".into());
    // The stand-in writes a record line per request: out of the config's
    // folder, which the daemon watches.
    let quiet = s.dir().join("record");
    std::fs::create_dir_all(&quiet).expect("the record folder");
    s.conf.record = quiet.join("record.jsonl");
    let (dev, smi) = fake_gpus(s.dir(), 2);
    if instances {
        let mut t = toml::Table::new();
        for (name, gpu) in [("gpu0", 0), ("gpu1", 1)] {
            let mut i = toml::Table::new();
            i.insert("gpus".into(), toml::Value::Array(vec![gpu.into()]));
            t.insert(name.into(), toml::Value::Table(i));
        }
        s.conf.sections.insert("instances".into(), t);
    }
    s.start_with(|b| {
        b.env("SD_WEBUI_SUPERVISOR_DEV_DIR", &dev)
            .env("SD_WEBUI_SUPERVISOR_NVIDIA_SMI", &smi)
    });
    let want = if instances { 2 } else { 1 };
    s.wait(SECS(60), "every UI listening", || {
        (events(&s.records(), "listening").len() >= want).then_some(())
    });
    s
}

/// A prompt of `seconds` through the door of `port`.
fn submit(port: u16, tag: &str, seconds: f64) {
    let body = json!({
        "prompt": {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": tag}}},
        "stand_in_seconds": seconds,
    });
    let (status, _) = http(port, "POST", "/prompt", Some(&body), SECS(120)).expect("POST /prompt");
    assert_eq!(status, 200, "POST /prompt");
}

/// Sends `lengths` as prompts from 4 clients; waits until all ran; jobs and
/// busy seconds per UI process, and the wall time.
fn spread(s: &Scenario, tag: &str, lengths: &[f64]) -> (Vec<(usize, f64)>, f64) {
    let before = events(&s.records(), "job_end").len();
    let t0 = Instant::now();
    let port = s.conf.port;
    let chunks: Vec<Vec<(usize, f64)>> = (0..4)
        .map(|c| {
            lengths
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| i % 4 == c)
                .collect()
        })
        .collect();
    let clients: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let tag = tag.to_owned();
            std::thread::spawn(move || {
                for (i, len) in chunk {
                    submit(port, &format!("{tag}{i}"), len);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client");
    }
    let recs = s.wait(SECS(300), "every prompt done", || {
        let recs = s.records();
        (events(&recs, "job_end").len() >= before + lengths.len()).then_some(recs)
    });
    let wall = t0.elapsed().as_secs_f64();
    let mut per: BTreeMap<u32, (usize, f64)> = BTreeMap::new();
    let starts: BTreeMap<String, f64> = events(&recs, "job_start")
        .into_iter()
        .map(|r| (r.id().to_owned(), r.t))
        .collect();
    for r in events(&recs, "job_end").into_iter().skip(before) {
        let e = per.entry(r.pid).or_default();
        e.0 += 1;
        e.1 += r.t - starts.get(r.id()).copied().unwrap_or(r.t);
    }
    (per.into_values().collect(), wall)
}

fn ratio(xs: &[f64]) -> f64 {
    let max = xs.iter().copied().fold(f64::MIN, f64::max);
    let min = xs.iter().copied().fold(f64::MAX, f64::min);
    if min > 0.0 { max / min } else { f64::INFINITY }
}

fn main() {
    let gets = support::env::env_or("INSTANCES_BENCH_GETS", 2000);
    let prompts = support::env::env_or("INSTANCES_BENCH_PROMPTS", 200);
    let one = started("bench-inst-one", false);
    let two = started("bench-inst-two", true);
    let ui = u16::try_from(
        one.wait_event("listening", 1, SECS(20)).v["port"]
            .as_u64()
            .expect("a port"),
    )
    .expect("a port");

    // 1. Routing overhead.
    let paths = [
        ("UI's own port", ui),
        ("front door, one UI", one.conf.port),
        ("front door, 2 instances", two.conf.port),
    ];
    let mut lat: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 0..gets {
        for k in 0..paths.len() {
            // Interleaved, the order turned each round.
            let k = (k + round) % paths.len();
            let t = Instant::now();
            assert_eq!(get(paths[k].1, "/system_stats"), 200, "{}", paths[k].0);
            lat[k].push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    println!("routing overhead: GET /system_stats, {gets} per path, new connection each");
    for (k, (name, _)) in paths.iter().enumerate() {
        println!(
            "  {name:<26} p50 {:>7.0} µs   p99 {:>7.0} µs",
            percentile(&lat[k], 50.0),
            percentile(&lat[k], 99.0)
        );
    }
    println!(
        "  routing among 2 instances adds p50 {:+.0} µs, p99 {:+.0} µs over the one-UI door (baseline)",
        percentile(&lat[2], 50.0) - percentile(&lat[1], 50.0),
        percentile(&lat[2], 99.0) - percentile(&lat[1], 99.0)
    );

    // 2. Balance.
    let equal = vec![0.05; prompts];
    let mixed: Vec<f64> = (0..prompts)
        .map(|i| 0.02 + 0.28 * (((i * 7919) % 97) as f64 / 96.0))
        .collect();
    for (name, lengths) in [("equal 50 ms", &equal), ("mixed 20-300 ms", &mixed)] {
        let (per, wall) = spread(&two, &name[..1], lengths);
        let jobs: Vec<f64> = per.iter().map(|p| p.0 as f64).collect();
        let busy: Vec<f64> = per.iter().map(|p| p.1).collect();
        let alone: f64 = lengths.iter().sum();
        println!(
            "balance, {prompts} prompts {name}: jobs {:?} (max/min {:.2}{}), busy s {:?} (max/min {:.2}); all done in {wall:.1} s, one instance alone ≥ {alone:.1} s",
            per.iter().map(|p| p.0).collect::<Vec<_>>(),
            ratio(&jobs),
            if name.starts_with("equal") {
                if ratio(&jobs) <= 1.2 {
                    ", goal ≤ 1.2 met"
                } else {
                    ", goal ≤ 1.2 MISSED"
                }
            } else {
                ""
            },
            busy.iter()
                .map(|b| (b * 10.0).round() / 10.0)
                .collect::<Vec<_>>(),
            ratio(&busy),
        );
    }
}
