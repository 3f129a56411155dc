//! `check-config` on hostile sizes (`cargo bench --bench check_config`), issue 12
//! item 13: a 1.3 MB config whose `ui.gpus` lists one index 100,000 times, and one
//! with 100,000 bad model names (100,000 problems to locate). Prints the median of
//! the library call the command makes (`Config::load`) next to the figure before
//! the fix: 4.5 s for the duplicates (release build, quadratic locating; reported
//! in the issue). Under `cargo test` (no `--bench` argument) it runs once as a
//! smoke test.

use std::fs;
use std::time::{Duration, Instant};

use sd_webui_supervisor::config::Config;

const ENTRIES: usize = 100_000;

fn duplicates() -> String {
    let mut text = String::from("[ui]\nflavor = \"forge\"\ncommand = [\"/bin/webui\"]\ngpus = [\n");
    for _ in 0..ENTRIES {
        text.push_str("    1000000,\n");
    }
    text.push_str("]\n\n[data]\ndir = \"/var/lib/sd-webui-forge\"\n");
    text
}

fn bad_names() -> String {
    let mut text = String::from(
        "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/webui\"]\n\n[data]\ndir = \"/d\"\n\n[models.loras]\n",
    );
    for i in 0..ENTRIES {
        text.push_str(&format!("\".bad{i}\" = \"/t\"\n"));
    }
    text
}

fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let rounds = if bench { 7 } else { 1 };
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, text, baseline) in [
        ("100,000 duplicate GPU entries", duplicates(), Some("4.5 s")),
        ("100,000 bad model names", bad_names(), None),
    ] {
        let file = dir.path().join("bench.toml");
        fs::write(&file, &text).expect("write the config");
        let mut runs = Vec::new();
        let mut problems = 0;
        for _ in 0..rounds {
            let began = Instant::now();
            let result = Config::load(&file);
            runs.push(began.elapsed());
            problems = result.err().map_or(0, |e| e.diagnostics().len());
        }
        println!(
            "check-config, {name} ({:.1} MB): median {:>8.1} ms over {rounds}, {problems} problem(s) reported; before the fix: {}",
            text.len() as f64 / 1e6,
            median(runs).as_secs_f64() * 1e3,
            baseline.unwrap_or("not measured")
        );
    }
}
