//! Front door benchmark (issue "The front door"): what the daemon's reverse proxy
//! on `ui.port` costs, side by side in one run with nginx as a reverse proxy to
//! the same UI, and with the UI's own (private) port as the baseline. The real
//! binary (release under `cargo bench`) supervises the stand-in ComfyUI.
//!
//! 1. Small GET (`GET /system_stats`, each on a new connection, as the tests'
//!    clients do): p50/p99 for direct, front door and nginx, in interleaved
//!    rounds so drift hits all three alike; the added latency is each proxy's
//!    figure less direct's. Goal: the front door's added p50/p99 ≤ nginx's.
//! 2. A 20 MiB answer (`GET /view` of a 20 MiB file in ComfyUI's output folder):
//!    median throughput of `FRONT_BENCH_BIG_RUNS` downloads per path, in
//!    interleaved rounds. Goal ≥ 0.95× direct.
//! 3. Websocket relay (`/ws`): round trip of a 16-byte ping to the UI's pong,
//!    p50/p99. The added p99 is printed beside nginx's.
//! 4. Memory: the daemon's idle RSS (goal ≤ 6.5 MB) before the runs and again
//!    12 s after them, and its RSS while it holds 1,000 API requests during a
//!    restart (the UI starting slowly); every held request must then be
//!    answered 200.
//!
//! nginx (Debian `nginx`) runs as a plain reverse proxy: one worker,
//! `proxy_http_version 1.1`, the websocket upgrade headers, `proxy_buffering off`
//! (as recommended for Gradio's and ComfyUI's streams), no upstream keep-alive
//! (the front door opens one upstream connection per request too). Without
//! nginx its column is left out, with the reason.
//!
//! Run: `cargo bench --bench front`. `FRONT_BENCH_GETS` (default 2000 per path),
//! `FRONT_BENCH_BIG_RUNS` (30), `FRONT_BENCH_PINGS` (2000), `FRONT_BENCH_HELD`
//! (1000) change the counts.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::env::free_port;
use support::http::{read_head, ws_frame};
use support::procs::status_bytes;
use support::scene::Scenario;
use support::stats::percentile;
use support::wait::poll_until;

const MB: f64 = 1024.0 * 1024.0;
const BIG: usize = 20 * 1024 * 1024;
const SECS: fn(u64) -> Duration = Duration::from_secs;

/// One GET on a new connection (`Connection: close`), read to the end; the
/// answer's status and its length in bytes.
fn get(port: u16, path: &str) -> std::io::Result<(u16, usize)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(SECS(300)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::with_capacity(64 * 1024);
    s.read_to_end(&mut buf)?;
    Ok((status_of(&buf), buf.len()))
}

/// The status code of an HTTP/1.1 answer, 0 when there is none.
fn status_of(raw: &[u8]) -> u16 {
    raw.get(9..12)
        .and_then(|c| std::str::from_utf8(c).ok()?.parse().ok())
        .unwrap_or(0)
}

/// One reverse proxy (or none) in front of the UI's port.
#[derive(Clone, Copy)]
struct Path3 {
    name: &'static str,
    port: u16,
}

/// nginx as a reverse proxy to `ui`, in its own prefix folder, until dropped.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx; `Err` with the reason when it is not installed or does not
    /// come up.
    fn start(dir: &Path, ui: u16) -> Result<Nginx, String> {
        let bin = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
            .ok_or("no nginx (Debian: apt-get install nginx)")?;
        let dir = dir.join("nginx");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let port = free_port();
        let d = dir.display();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://127.0.0.1:{ui};
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_read_timeout 600s;
    }}
  }}
}}
"#
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut nginx = Nginx { child, port, dir };
        let up = poll_until(SECS(10), || {
            get(port, "/system_stats").ok().filter(|(c, _)| *c == 200)
        });
        if up.is_none() {
            let log = std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default();
            let _ = nginx.child.kill();
            return Err(format!("nginx did not answer: {log}"));
        }
        Ok(nginx)
    }

    /// RSS of the master and its workers, in bytes.
    fn rss(&self) -> f64 {
        let master = i32::try_from(self.child.id()).unwrap_or(0);
        let mut total = status_bytes(master, "VmRSS");
        for worker in support::procs::children_named(master, "nginx") {
            total += status_bytes(worker, "VmRSS");
        }
        total
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Small GETs: `n` per path in interleaved rounds; latencies in µs per path.
fn small_gets(paths: &[Path3], n: usize) -> Vec<Vec<f64>> {
    let mut lat = vec![Vec::with_capacity(n); paths.len()];
    let mut failed = 0usize;
    for _ in 0..n {
        for (i, p) in paths.iter().enumerate() {
            let t = Instant::now();
            match get(p.port, "/system_stats") {
                Ok((200, _)) => lat[i].push(t.elapsed().as_secs_f64() * 1e6),
                _ => failed += 1,
            }
        }
    }
    assert_eq!(failed, 0, "small GETs failed");
    lat
}

/// Downloads of the 20 MiB file, `runs` per path in interleaved rounds:
/// throughput in MB/s per run, per path.
fn big_gets(paths: &[Path3], runs: usize) -> Vec<Vec<f64>> {
    let mut tp = vec![Vec::with_capacity(runs); paths.len()];
    for _ in 0..runs {
        for (i, p) in paths.iter().enumerate() {
            let t = Instant::now();
            let (code, len) = get(p.port, "/view?filename=front-bench.bin&type=output")
                .unwrap_or_else(|e| panic!("20 MiB via {}: {e}", p.name));
            assert_eq!(code, 200, "20 MiB via {}", p.name);
            assert!(len > BIG, "20 MiB via {}: only {len} bytes", p.name);
            tp[i].push(BIG as f64 / MB / t.elapsed().as_secs_f64());
        }
    }
    tp
}

/// Websocket pings through `p`: round trips in µs.
fn ws_pings(p: Path3, n: usize) -> Vec<f64> {
    let mut s = TcpStream::connect(("127.0.0.1", p.port)).expect("connect for the websocket");
    s.set_read_timeout(Some(SECS(10))).unwrap();
    s.set_nodelay(true).unwrap();
    write!(
        s,
        "GET /ws?clientId=front-bench HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n",
        p.port
    )
    .unwrap();
    let head = read_head(&mut s);
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "websocket via {}: {head}",
        p.name
    );
    // The UI's first message: its status.
    let (op, _) = ws_frame(&mut s).expect("the status message");
    assert_eq!(op, 1, "a text frame first via {}", p.name);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let payload = *b"front-bench-ping";
    let mut frame = vec![0x89, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    (0..n)
        .map(|_| {
            let t = Instant::now();
            s.write_all(&frame).expect("send a ping");
            loop {
                let (op, data) = ws_frame(&mut s).expect("the pong");
                if op == 0xA {
                    assert_eq!(data, payload, "the pong via {}", p.name);
                    break;
                }
            }
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect()
}

fn main() {
    let gets = support::env::env_or("FRONT_BENCH_GETS", 2000);
    let big_runs = support::env::env_or("FRONT_BENCH_BIG_RUNS", 30);
    let pings = support::env::env_or("FRONT_BENCH_PINGS", 2000);
    let held = support::env::env_or("FRONT_BENCH_HELD", 1000);
    // 1,000 held requests are 1,000 sockets here (the daemon raises its own).
    raise_open_files();

    let mut s = Scenario::new("bench-front", "comfyui");
    // The stand-in writes a record line per request: out of the config's folder,
    // which the daemon watches (a real config folder is quiet).
    let quiet = s.dir().join("record");
    std::fs::create_dir_all(&quiet).expect("the record folder");
    s.conf.record = quiet.join("record.jsonl");
    s.start();
    let front = s.conf.port;
    let listening = s.wait_event("listening", 1, SECS(20));
    let ui = u16::try_from(listening.v["port"].as_u64().expect("a port")).expect("a port");
    let daemon_pid = s.daemon().pid();
    let output = s.conf.data_dir.join("output");
    std::fs::create_dir_all(&output).expect("ComfyUI's output folder");
    let noise: Vec<u8> = {
        let mut rng = support::stats::Rng::new(20);
        (0..BIG).map(|_| rng.next_u64() as u8).collect()
    };
    std::fs::write(output.join("front-bench.bin"), &noise).expect("write the 20 MiB file");
    let nginx = Nginx::start(s.dir(), ui);
    let mut paths = vec![
        Path3 {
            name: "direct (UI's port)",
            port: ui,
        },
        Path3 {
            name: "front door",
            port: front,
        },
    ];
    match &nginx {
        Ok(n) => paths.push(Path3 {
            name: "nginx",
            port: n.port,
        }),
        Err(why) => println!("nginx left out: {why}"),
    }
    // Idle RSS, after the start settled and before any proxied request: the largest of 20 samples over 2 s.
    std::thread::sleep(SECS(2));
    let idle_rss = rss_max(daemon_pid, 20);
    let idle_split = (
        status_bytes(daemon_pid, "RssFile"),
        status_bytes(daemon_pid, "RssAnon"),
    );

    assert_eq!(
        get(front, "/view?filename=front-bench.bin&type=output")
            .expect("the file via the front door")
            .0,
        200
    );

    println!("front door benchmark: the stand-in ComfyUI on 127.0.0.1:{ui}");
    println!();
    println!("1. small GET /system_stats, a new connection each, {gets} per path (µs)");
    let lat = small_gets(&paths, gets);
    let (d50, d99) = (percentile(&lat[0], 50.0), percentile(&lat[0], 99.0));
    let mut added = Vec::new();
    for (p, l) in paths.iter().zip(&lat) {
        let (p50, p99) = (percentile(l, 50.0), percentile(l, 99.0));
        println!(
            "   {:<20} p50 {p50:>8.0}  p99 {p99:>8.0}   added p50 {:>+7.0}  p99 {:>+7.0}",
            p.name,
            p50 - d50,
            p99 - d99
        );
        added.push((p50 - d50, p99 - d99));
    }
    if let Some(&(n50, n99)) = added.get(2) {
        let (f50, f99) = added[1];
        println!(
            "   goal: front door's added latency ≤ nginx's: p50 {}, p99 {}",
            verdict(f50 <= n50),
            verdict(f99 <= n99)
        );
    }

    println!();
    println!("2. a 20 MiB answer (GET /view), {big_runs} runs per path (MB/s, median)");
    let tps = big_gets(&paths, big_runs);
    let direct_tp = percentile(&tps[0], 50.0);
    for (p, runs) in paths.iter().zip(&tps) {
        let tp = percentile(runs, 50.0);
        let ratio = tp / direct_tp;
        let goal = if p.port == front {
            format!("   goal ≥ 0.95× direct: {}", verdict(ratio >= 0.95))
        } else {
            String::new()
        };
        println!(
            "   {:<20} {tp:>8.0} MB/s  {ratio:>5.2}× direct{goal}",
            p.name
        );
    }

    println!();
    println!("3. websocket /ws: ping → pong round trip, {pings} per path (µs)");
    let mut ws_added = Vec::new();
    let mut ws_direct = 0.0;
    for p in &paths {
        let rtt = ws_pings(*p, pings);
        let (p50, p99) = (percentile(&rtt, 50.0), percentile(&rtt, 99.0));
        if p.port == ui {
            ws_direct = p99;
        }
        ws_added.push(p99 - ws_direct);
        println!(
            "   {:<20} p50 {p50:>8.0}  p99 {p99:>8.0}   added p99 {:>+7.0}",
            p.name,
            p99 - ws_direct
        );
    }

    println!();
    println!("4. memory");
    println!(
        "   daemon idle RSS         {:>6.2} MB   goal ≤ 6.5 MB: {}   ({:.2} MB code and files, {:.2} MB heap)",
        idle_rss / MB,
        verdict(idle_rss <= 6.5 * MB),
        idle_split.0 / MB,
        idle_split.1 / MB
    );
    if let Ok(n) = &nginx {
        println!(
            "   nginx idle RSS          {:>6.2} MB   (master + 1 worker, for comparison)",
            n.rss() / MB
        );
    }
    let (held_rss, answered, wait) = hold_many(&mut s, daemon_pid, front, held);
    println!(
        "   daemon RSS, {held} held   {:>6.2} MB   (+{:.1} KB per held request); \
         {answered}/{held} answered 200 once the UI was ready, {wait:.1} s after the first",
        held_rss / MB,
        (held_rss - idle_rss) / 1024.0 / held as f64
    );
    assert_eq!(answered, held, "every held request is answered");
    // The door hands freed memory back within 10 s of going idle.
    std::thread::sleep(SECS(12));
    let after = rss_max(daemon_pid, 20);
    println!(
        "   daemon idle RSS 12 s after all of the above {:>6.2} MB   goal ≤ 6.5 MB: {}   ({:.2} MB code and files, {:.2} MB heap)",
        after / MB,
        verdict(after <= 6.5 * MB),
        status_bytes(daemon_pid, "RssFile") / MB,
        status_bytes(daemon_pid, "RssAnon") / MB
    );
    drop(nginx);
}

/// Restarts the UI slowly (a config change while idle: `STANDIN_START_DELAY`),
/// sends `n` API requests while it starts, waits until the daemon holds them
/// all and samples its RSS; then waits for the answers. Returns (RSS while
/// held, answered 200, seconds from the first request to the last answer).
fn hold_many(s: &mut Scenario, daemon_pid: i32, front: u16, n: usize) -> (f64, usize, f64) {
    s.conf.env.insert("STANDIN_START_DELAY".into(), "30".into());
    s.reload();
    s.wait(SECS(30), "the front door to close for the restart", || {
        (s.status_json()["state"] != "ready").then_some(())
    });
    let t0 = Instant::now();
    let clients: Vec<_> = (0..n)
        .map(|_| {
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || get(front, "/system_stats").map(|(c, _)| c).unwrap_or(0))
                .expect("spawn a client")
        })
        .collect();
    s.wait(SECS(20), "the daemon to hold every request", || {
        let st = s.status_json();
        (st["front"]["held_now"].as_u64() == Some(n as u64)).then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_max(daemon_pid, 10);
    let answered = clients
        .into_iter()
        .filter_map(|c| c.join().ok())
        .filter(|c| *c == 200)
        .count();
    (rss, answered, t0.elapsed().as_secs_f64())
}

/// The largest of `n` samples of `pid`'s RSS, 100 ms apart.
fn rss_max(pid: i32, n: usize) -> f64 {
    (0..n)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(100));
            status_bytes(pid, "VmRSS")
        })
        .fold(0.0, f64::max)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
fn raise_open_files() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}
