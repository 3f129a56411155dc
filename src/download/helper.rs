//! The helper process's side of [`worker`](super::worker): reads one job from
//! stdin, runs one attempt with the TLS client, and reports on stdout. Its own
//! log lines go to stderr, which is the supervisor's (the journal).

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::Failure;
use super::fetch::{self, Progress, UNKNOWN};
use super::http_get;
use super::worker::{Job, REPORT_EVERY, Report};

/// Runs the helper; the exit code is 0 whenever a result was reported.
pub fn main() -> ExitCode {
    crate::logging::init();
    let mut text = String::new();
    let job = std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<Job>(&text).map_err(|e| e.to_string()))
        .and_then(Job::into_parts);
    let (place, download) = match job {
        Ok(parts) => parts,
        Err(e) => {
            report(&Report::Failed(Failure::Io(format!(
                "unreadable download job: {e}"
            ))));
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&Report::Failed(Failure::Io(format!("cannot start: {e}"))));
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        let client = http_get::client()?;
        let progress = Arc::new(Progress::default());
        let ticking = Arc::clone(&progress);
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(REPORT_EVERY);
            loop {
                tick.tick().await;
                report_progress(&ticking);
            }
        });
        let result = fetch::attempt(&client, &place, &download, &progress, || {
            report_progress(&progress);
            report(&Report::Verifying);
        })
        .await;
        ticker.abort();
        report_progress(&progress);
        result
    });
    report(&match result {
        Ok(()) => Report::Done,
        Err(f) => Report::Failed(f),
    });
    ExitCode::SUCCESS
}

fn report_progress(progress: &Progress) {
    let total = progress.total.load(Ordering::Relaxed);
    report(&Report::Progress {
        done: progress.done.load(Ordering::Relaxed),
        total: (total != UNKNOWN).then_some(total),
    });
}

/// One JSON line on stdout. A supervisor that went away is no reason to fail
/// the download: the `.part` is what counts.
fn report(r: &Report) {
    if let Ok(line) = serde_json::to_string(r) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}
