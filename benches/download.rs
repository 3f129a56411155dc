//! Download benchmark (`cargo bench --bench download`): one file of 2 GiB (and
//! one of 256 MiB, to show the memory is flat in the size) served from a
//! local server, fetched by `sd-webui-supervisor fetch-models` (which runs the
//! attempt in its helper `sd-webui-supervisor-fetch`: stream, hash, fsync,
//! rename; then link) and, in the same run from the same server, by `curl -o`.
//! Prints throughput of both, their ratio (goal ≥ 0.9× curl), CPU seconds, and
//! the peak RSS (goal < 20 MB, flat in the file size). `wait4` reports the
//! supervisor's usage together with its waited-for helper's: CPU summed, RSS the
//! larger of the two.
//!
//! Everything lives on tmpfs (`/dev/shm`) when it exists, so the disk is not
//! what is measured. Under `cargo test` (no `--bench`) it runs with 8 MiB as a
//! smoke test.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");
const MIB: u64 = 1024 * 1024;

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let sizes: &[u64] = if bench {
        &[256 * MIB, 2048 * MIB]
    } else {
        &[8 * MIB]
    };
    println!("download benchmark on {}", base.display());
    for &size in sizes {
        run(dir.path(), size);
    }
}

fn run(dir: &Path, size: u64) {
    let source = dir.join("source.bin");
    let hex = write_source(&source, size);
    let addr = serve(source.clone());
    let url = format!("http://{addr}/file");

    // curl, the baseline.
    let curl_out = dir.join("curl.bin");
    let start = Instant::now();
    let curl = run_measured(
        Command::new("curl")
            .args(["-sSf", "-o"])
            .arg(&curl_out)
            .arg(&url),
    );
    let curl_secs = start.elapsed().as_secs_f64();
    assert!(curl.ok, "curl failed");
    std::fs::remove_file(&curl_out).ok();

    // The supervisor.
    let data = dir.join("data");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/true\"]\n[data]\ndir = \"{}\"\n[models.checkpoints]\n\"m.safetensors\" = {{ url = \"{url}\", sha256 = \"{hex}\" }}\n",
            data.display()
        ),
    )
    .unwrap();
    let start = Instant::now();
    let ours = run_measured(
        Command::new(BIN)
            .args(["fetch-models", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn"),
    );
    let secs = start.elapsed().as_secs_f64();
    assert!(ours.ok, "fetch-models failed");
    assert!(data.join("models/Stable-diffusion/m.safetensors").is_file());
    std::fs::remove_dir_all(&data).ok();
    std::fs::remove_file(&source).ok();

    let mbps = |s: f64| size as f64 / s / 1e6;
    println!(
        "{:>5} MiB: supervisor {:>7.0} MB/s ({secs:.2}s, CPU {:.2}s, peak RSS {:.1} MB) | curl -o {:>7.0} MB/s ({curl_secs:.2}s, CPU {:.2}s, peak RSS {:.1} MB) | ratio {:.2}x curl",
        size / MIB,
        mbps(secs),
        ours.cpu,
        ours.rss as f64 / 1e6,
        mbps(curl_secs),
        curl.cpu,
        curl.rss as f64 / 1e6,
        curl_secs / secs
    );
}

/// Writes `size` pseudo-random bytes; returns their SHA-256, hex.
fn write_source(path: &Path, size: u64) -> String {
    let mut file =
        std::io::BufWriter::with_capacity(MIB as usize, std::fs::File::create(path).unwrap());
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        for word in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            word.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(MIB) as usize;
        file.write_all(&block[..n]).unwrap();
        hasher.update(&block[..n]);
        left -= n as u64;
    }
    file.flush().unwrap();
    hex::encode(hasher.finish())
}

/// What one run of a command cost.
struct Cost {
    ok: bool,
    /// Peak RSS, bytes.
    rss: u64,
    /// User + system CPU, seconds.
    cpu: f64,
}

/// Runs a command to its end; returns success, its peak RSS and CPU time.
fn run_measured(cmd: &mut Command) -> Cost {
    let child = cmd.spawn().expect("spawn");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our child, not yet waited for; pointers are to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    std::mem::forget(child);
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cost {
        ok: libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        rss: usage.ru_maxrss as u64 * 1024,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
    }
}

/// A file server for `/file` with `Range`, copying with the kernel's
/// sendfile/splice (std's `io::copy`), so the server is not the bottleneck.
fn serve(path: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let path = path.clone();
            std::thread::spawn(move || {
                let _ = answer(stream, &path);
            });
        }
    });
    addr
}

fn answer(stream: TcpStream, path: &Path) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut start = 0u64;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h)?;
        let h = h.trim_end().to_ascii_lowercase();
        if h.is_empty() {
            break;
        }
        if let Some(r) = h.strip_prefix("range: bytes=") {
            start = r.trim_end_matches('-').parse().unwrap_or(0);
        }
    }
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    if start > 0 {
        write!(
            out,
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\nContent-Length: {}\r\n\r\n",
            total - 1,
            total - start
        )?;
        file.seek(SeekFrom::Start(start))?;
    } else {
        write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")?;
    }
    std::io::copy(&mut file, &mut out)?;
    Ok(())
}
