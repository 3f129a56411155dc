//! `sd-webui-supervisor fetch-models --config FILE`: the downloads without the
//! daemon, for a first deployment on a slow link (run it once, then start the
//! service) and for testing the engine through the real binary.
//!
//! Exit codes: 0 every download is in the cache and the data dir is laid out;
//! 1 invalid config, a failed download (one line each on stderr) or a failed
//! layout; 3 laid out with conflicts.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;

use super::manager::Phase;
use super::{Manager, ModelProgress, Outcome};
use crate::config::Config;

/// Runs the subcommand.
pub fn fetch_models(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let progress = runtime.block_on(fetch_all(&config));
    let failed: Vec<&ModelProgress> = progress
        .iter()
        .filter(|m| m.state == Phase::Failed)
        .collect();
    for m in &failed {
        eprintln!(
            "download of {}/{} failed: {}",
            m.kind,
            m.name,
            m.reason.as_deref().unwrap_or("unknown")
        );
    }
    let layout = crate::layout::command(path, false);
    match failed.is_empty() {
        true => layout,
        false => ExitCode::from(1),
    }
}

/// Runs every download to its end; returns the final progress of each model.
async fn fetch_all(config: &Config) -> Vec<ModelProgress> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut manager = Manager::new(tx);
    manager.apply(config);
    let terminal = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_secs(if terminal { 1 } else { 10 }));
    loop {
        let snapshot = manager.snapshot();
        if snapshot
            .iter()
            .all(|m| matches!(m.state, Phase::Done | Phase::Failed))
        {
            return snapshot;
        }
        tokio::select! {
            Some(report) = rx.recv() => {
                if let Some(Outcome::Done { models }) = manager.on_report(report) {
                    for (kind, name) in models {
                        eprintln!("downloaded {kind}/{name}");
                    }
                }
            }
            _ = tick.tick() => {
                for m in snapshot.iter().filter(|m| m.state != Phase::Done) {
                    eprintln!("{}", line(m));
                }
            }
        }
    }
}

/// `checkpoints/a.safetensors: downloading 1.2/6.5 GB, 85 MB/s, ETA 62s`.
fn line(m: &ModelProgress) -> String {
    let gb = |b: u64| b as f64 / 1e9;
    let size = match m.bytes_total {
        Some(t) => format!("{:.1}/{:.1} GB", gb(m.bytes_done), gb(t)),
        None => format!("{:.1} GB", gb(m.bytes_done)),
    };
    let mut text = format!("{}/{}: {} {size}", m.kind, m.name, m.state.name());
    if m.rate > 0.0 {
        text.push_str(&format!(", {:.0} MB/s", m.rate / 1e6));
    }
    if let Some(eta) = m.eta_seconds {
        text.push_str(&format!(", ETA {eta}s"));
    }
    if let Some(reason) = &m.reason {
        text.push_str(&format!(" ({reason})"));
    }
    text
}
