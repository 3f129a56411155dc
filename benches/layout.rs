//! Layout benchmark (`cargo bench --bench layout`), printing in one run:
//!
//! - a cold layout of 10,000 models (the library call the daemon makes, and the
//!   `layout` command end to end, config parsing included) against the baseline
//!   the Nix modules use: a shell loop running one `ln -sn` per model into the
//!   same folders;
//! - a relayout with nothing changed, and the number of filesystem writes it
//!   made, counted two ways: (1) every entry under the data dir (data dir
//!   included) compared by inode, mode, size, mtime and ctime before and after —
//!   any create, remove, rename, write or chmod changes at least one of them;
//!   (2) when `strace` is installed, the mutating syscalls (`mkdir`, `symlink`,
//!   `rename`, `unlink`, `chmod`, `write` to a file, `open` for writing, ...) of
//!   the `layout` process, its own summary line on stdout excluded.
//!
//! Also printed: the floor a relayout cannot go below on the machine at hand,
//! one `readlink` per link and one `stat` per target with no other work.
//!
//! Runs on the temp dir's filesystem (`TMPDIR`) and, when it exists, on tmpfs
//! (`/dev/shm`). Under `cargo test` (no `--bench` argument) it runs with 200
//! models as a smoke test.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../tests/support/mod.rs"]
mod support;

use sd_webui_supervisor::config::Config;
use sd_webui_supervisor::layout;
use support::layout::{Decl, TreeState, conf, tree_state};

const BIN: &str = env!("CARGO_BIN_EXE_sd-webui-supervisor");
/// Relayouts timed through the library call (a shared VM's timings swing by a
/// third from one run to the next: the median of many is the figure to read).
const RELAYOUTS: usize = 20;
const KINDS: [(&str, &str); 4] = [
    ("checkpoints", "models/Stable-diffusion"),
    ("loras", "models/Lora"),
    ("vae", "models/VAE"),
    ("embeddings", "embeddings"),
];

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let models = if full { 10_000 } else { 200 };
    let mut places = vec![std::env::temp_dir()];
    if Path::new("/dev/shm").is_dir() {
        places.push(PathBuf::from("/dev/shm"));
    }
    println!("layout benchmark: {models} models, 4 kinds, Forge folders");
    for place in places {
        let dir = tempfile::Builder::new()
            .prefix("layout-bench")
            .tempdir_in(&place)
            .expect("a scratch dir");
        bench(dir.path(), models);
    }
}

/// A fake Nix store of `n` model files; returns (name, target) per model.
fn store(root: &Path, n: usize) -> Vec<(usize, String, PathBuf)> {
    let store = root.join("nix/store");
    fs::create_dir_all(&store).expect("store");
    (0..n)
        .map(|i| {
            let target = store.join(format!("{i:032x}-model-{i}.safetensors"));
            fs::write(&target, b"").expect("store file");
            (i % KINDS.len(), format!("model-{i:05}.safetensors"), target)
        })
        .collect()
}

fn config_text(data: &Path, models: &[(usize, String, PathBuf)]) -> String {
    let decls: Vec<Decl> = models
        .iter()
        .map(|(k, name, target)| Decl {
            kind: Some(KINDS[*k].0),
            name: name.clone(),
            target: target.clone(),
        })
        .collect();
    let mut conf = conf("forge", data, &decls, "");
    conf.permissions = None;
    conf.render()
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

fn run_cli(config: &Path) -> Duration {
    let (out, took) = timed(|| {
        Command::new(BIN)
            .args(["layout", "--config"])
            .arg(config)
            .output()
            .expect("layout runs")
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn bench(root: &Path, n: usize) {
    let models = store(root, n);
    let fs_type = Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("\n== {} ({fs_type})", root.display());

    // A throwaway layout first: a fresh ext4 block group pays a one-time cost
    // (inode table initialisation) that would otherwise land on whichever
    // method runs first. Then each timed run gets a fresh data dir and starts
    // after a `sync`, so none pays for another's writeback.
    let warm = Config::parse(
        Path::new("warm.toml"),
        &config_text(&root.join("warm"), &models),
    )
    .expect("config");
    layout::apply(&warm).expect("layout");
    let mut cold_lib = Vec::new();
    for i in 0..3 {
        let config = Config::parse(
            Path::new("bench.toml"),
            &config_text(&root.join(format!("data-lib{i}")), &models),
        )
        .expect("config");
        sync();
        let (report, took) = timed(|| layout::apply(&config).expect("layout"));
        assert_eq!(report.conflicts.len(), 0);
        cold_lib.push(took);
    }
    cold_lib.sort();
    let data = root.join("data-lib0");
    let config =
        Config::parse(Path::new("bench.toml"), &config_text(&data, &models)).expect("config");

    // Cold layout through the command, config parsing included.
    let mut cold_cli = Vec::new();
    for i in 0..3 {
        let cli_config = root.join(format!("bench{i}.toml"));
        let cli_data = root.join(format!("data-cli{i}"));
        fs::write(&cli_config, config_text(&cli_data, &models)).expect("config file");
        sync();
        cold_cli.push(run_cli(&cli_config));
    }
    cold_cli.sort();
    let cli_config = root.join("bench0.toml");

    // Baseline: one `ln -sn` per model, as in a preStart script.
    let sh_data = root.join("data-sh");
    let mut list = String::new();
    for (k, name, target) in &models {
        let _ = writeln!(
            list,
            "{} {}",
            target.display(),
            sh_data.join(KINDS[*k].1).join(name).display()
        );
    }
    fs::write(root.join("list"), list).expect("list");
    let folders: Vec<String> = KINDS
        .iter()
        .map(|k| sh_data.join(k.1).display().to_string())
        .collect();
    let script = format!(
        "mkdir -p {}\nwhile read -r target link; do ln -sn \"$target\" \"$link\"; done < {}\n",
        folders.join(" "),
        root.join("list").display()
    );
    sync();
    let (status, shell) = timed(|| {
        Command::new("sh")
            .arg("-c")
            .arg(&script)
            .status()
            .expect("sh")
    });
    assert!(status.success());

    // Relayout with nothing changed, after the shell loop's writeback (on ext4,
    // 10,000 new links keep the flusher busy on the same cores for seconds).
    sync();
    std::thread::sleep(Duration::from_millis(50));
    let before = tree_state(&data);
    let mut relayouts: Vec<Duration> = (0..RELAYOUTS)
        .map(|_| {
            let (report, took) = timed(|| layout::apply(&config).expect("relayout"));
            assert_eq!(report.actions_applied, 0);
            took
        })
        .collect();
    relayouts.sort();
    let changed = changed_entries(&before, &tree_state(&data));
    let mut cli_relayouts: Vec<Duration> = (0..5).map(|_| run_cli(&cli_config)).collect();
    cli_relayouts.sort();
    let syscalls = strace_writes(&cli_config);
    let floor = syscall_floor(&data, &models);

    println!(
        "cold layout, library call (daemon) : {:>10} min, {} max of 3",
        ms(cold_lib[0]),
        ms(cold_lib[2])
    );
    println!(
        "cold layout, `layout` command      : {:>10} min, {} max of 3 (config parsing included)",
        ms(cold_cli[0]),
        ms(cold_cli[2])
    );
    println!("shell loop, one `ln -sn` per model : {:>10}", ms(shell));
    println!(
        "speed-up vs shell loop (worst run)  : {:>8.1}x library, {:.1}x command (goal >= 30x)",
        shell.as_secs_f64() / cold_lib[2].as_secs_f64(),
        shell.as_secs_f64() / cold_cli[2].as_secs_f64()
    );
    println!(
        "relayout, nothing changed, library : {:>10} min, {} median, {} max of {RELAYOUTS} (goal <= 50 ms)",
        ms(relayouts[0]),
        ms(relayouts[relayouts.len() / 2]),
        ms(relayouts[relayouts.len() - 1])
    );
    println!(
        "relayout, nothing changed, command : {:>10} min, {} median of 5",
        ms(cli_relayouts[0]),
        ms(cli_relayouts[cli_relayouts.len() / 2])
    );
    println!(
        "floor: 1 readlink + 1 stat per model: {:>10} min of 5, sequential, nothing else",
        ms(floor)
    );
    println!(
        "writes during {RELAYOUTS} relayouts (tree)  : {changed} entries changed of {}",
        before.len()
    );
    match syscalls {
        Some((n, total)) => println!(
            "writes during 1 relayout (strace)   : {n} mutating syscalls of {total} traced"
        ),
        None => println!("writes during 1 relayout (strace)   : strace not installed"),
    }
}

/// What a relayout cannot avoid on this machine: reading each link and checking
/// each target, one syscall each, with no other work.
fn syscall_floor(data: &Path, models: &[(usize, String, PathBuf)]) -> Duration {
    let links: Vec<PathBuf> = models
        .iter()
        .map(|(k, name, _)| data.join(KINDS[*k].1).join(name))
        .collect();
    (0..5)
        .map(|_| {
            timed(|| {
                for (link, (_, _, target)) in links.iter().zip(models) {
                    let _ = fs::read_link(link);
                    let _ = fs::metadata(target);
                }
            })
            .1
        })
        .min()
        .unwrap_or_default()
}

fn changed_entries(before: &TreeState, after: &TreeState) -> usize {
    let gone_or_changed = before
        .iter()
        .filter(|(p, v)| after.get(*p) != Some(v))
        .count();
    let new = after.keys().filter(|p| !before.contains_key(*p)).count();
    gone_or_changed + new
}

/// Mutating syscalls of one `layout` run (None without strace).
fn strace_writes(config: &Path) -> Option<(usize, usize)> {
    let trace = config.with_file_name("strace.txt");
    let calls = "mkdir,mkdirat,rmdir,symlink,symlinkat,link,linkat,unlink,unlinkat,rename,renameat,renameat2,\
                 chmod,fchmod,fchmodat,chown,fchown,fchownat,lchown,truncate,ftruncate,utimensat,\
                 write,writev,pwrite64,fsync,fdatasync,open,openat,creat";
    let status = Command::new("strace")
        .args(["-f", "-qq", "-e", &format!("trace={calls}"), "-o"])
        .arg(&trace)
        .arg(BIN)
        .args(["layout", "--config"])
        .arg(config)
        .output()
        .ok()?;
    if !status.status.success() {
        return None;
    }
    let text = fs::read_to_string(&trace).ok()?;
    // With threads, strace splits a call that another thread interrupts into an
    // "<unfinished ...>" line (name and arguments) and a "<... resumed>" line
    // (the result): count the first only.
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains("+++") && !l.contains("---") && !l.contains(" resumed>"))
        .collect();
    let mutating = lines
        .iter()
        .filter(|l| {
            let call = l.split_whitespace().nth(1).unwrap_or("");
            let name = call.split('(').next().unwrap_or("");
            match name {
                "open" | "openat" => ["O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC"]
                    .iter()
                    .any(|f| l.contains(f)),
                // The summary line on stdout is not a filesystem write.
                "write" | "writev" => !call.starts_with(&format!("{name}(1,")),
                _ => !name.is_empty(),
            }
        })
        .count();
    Some((mutating, lines.len()))
}
