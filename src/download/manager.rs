//! The download queue: one task per distinct digest, at most
//! `downloads.max_concurrent` transferring at once, transient failures retried
//! with exponential backoff up to a limit, and progress kept where status,
//! D-Bus and metrics read it.
//!
//! The [`Manager`] is a plain value owned by one task (the core, or
//! `fetch-models`): its tasks never touch its state. Each reports its changes
//! as a [`Report`] on the channel given to [`Manager::new`], and the owner
//! hands every report back to [`Manager::on_report`], which applies it and
//! says when a download finished or gave up. Only the byte counts, written
//! hundreds of times a second, are shared (atomics in [`Progress`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;

use super::State;
use super::fetch::{Place, Progress, UNKNOWN};
use super::worker::{self, Helpers};
use crate::config::Config;
use crate::config::download::{Download, Sha256};
use crate::ui::flavor::ModelKind;

/// First wait after a failed attempt; doubled after each attempt that made no
/// progress, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Attempts in a row without a new byte before giving up (≈ 10 minutes of
/// backoff in total).
const MAX_FRUITLESS: u32 = 8;

/// A download task's change of state, for its manager's owner to hand to
/// [`Manager::on_report`].
#[derive(Debug)]
pub struct Report {
    sha: Sha256,
    /// Which task of that digest sent it: a replaced task's late reports are
    /// ignored.
    epoch: u64,
    state: State,
    at: Instant,
    /// Bytes on disk when the state began (the rate is measured from here).
    bytes: u64,
}

/// What a report meant, when the owner has something to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A file is in the cache: relayout to link these models, then refresh.
    Done {
        /// The models it serves.
        models: Vec<(ModelKind, String)>,
    },
    /// A download gave up; status says why.
    Failed {
        /// The models it serves.
        models: Vec<(ModelKind, String)>,
    },
}

/// A download's state without its reason, for status and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Waiting for a slot.
    Queued,
    /// Bytes arriving.
    Downloading,
    /// Waiting before another attempt.
    Retrying,
    /// Comparing the digest, renaming.
    Verifying,
    /// In the cache.
    Done,
    /// Given up; see the reason.
    Failed,
}

impl Phase {
    /// All phases, for metrics that list each.
    pub const ALL: [Phase; 6] = [
        Phase::Queued,
        Phase::Downloading,
        Phase::Retrying,
        Phase::Verifying,
        Phase::Done,
        Phase::Failed,
    ];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Queued => "queued",
            Phase::Downloading => "downloading",
            Phase::Retrying => "retrying",
            Phase::Verifying => "verifying",
            Phase::Done => "done",
            Phase::Failed => "failed",
        }
    }
}

impl State {
    /// The phase of this state.
    pub fn phase(&self) -> Phase {
        match self {
            State::Queued => Phase::Queued,
            State::Downloading => Phase::Downloading,
            State::Retrying(_) => Phase::Retrying,
            State::Verifying => Phase::Verifying,
            State::Done => Phase::Done,
            State::Failed(_) => Phase::Failed,
        }
    }
}

/// One model's download as status shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelProgress {
    /// Model kind.
    pub kind: ModelKind,
    /// File name.
    pub name: String,
    /// Expected digest, hex.
    pub sha256: String,
    /// Where it stands.
    pub state: Phase,
    /// Why it is retrying or failed.
    pub reason: Option<String>,
    /// Bytes on disk.
    pub bytes_done: u64,
    /// File size, once a server said.
    pub bytes_total: Option<u64>,
    /// Bytes per second over the current attempt.
    pub rate: f64,
    /// Estimated seconds left, while downloading at a known size.
    pub eta_seconds: Option<u64>,
}

struct Entry {
    download: Download,
    models: Vec<(ModelKind, String)>,
    progress: Arc<Progress>,
    /// The task's number, carried by its reports.
    epoch: u64,
    state: State,
    /// When the current state began and the bytes there were then.
    since: Instant,
    bytes_at_since: u64,
    task: Option<AbortHandle>,
}

/// Owns the download tasks of one supervisor and their state.
pub struct Manager {
    helpers: Helpers,
    reports: mpsc::UnboundedSender<Report>,
    place: Option<Place>,
    entries: BTreeMap<Sha256, Entry>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
    /// The last task number given out.
    epoch: u64,
}

impl Manager {
    /// A manager whose tasks send their reports to `reports`; the owner
    /// passes each to [`Manager::on_report`].
    pub fn new(reports: mpsc::UnboundedSender<Report>) -> Manager {
        Manager {
            helpers: Helpers::default(),
            reports,
            place: None,
            entries: BTreeMap::new(),
            slots: Arc::new(Semaphore::new(1)),
            max_concurrent: 0,
            epoch: 0,
        }
    }

    /// Applies a task's report; says when a download finished or gave up.
    /// A report from a task that was since replaced or stopped changes nothing.
    pub fn on_report(&mut self, report: Report) -> Option<Outcome> {
        let entry = self.entries.get_mut(&report.sha)?;
        if entry.epoch != report.epoch {
            return None;
        }
        entry.state = report.state;
        entry.since = report.at;
        entry.bytes_at_since = report.bytes;
        let models = entry.models.clone();
        match entry.state {
            State::Done => Some(Outcome::Done { models }),
            State::Failed(_) => Some(Outcome::Failed { models }),
            _ => None,
        }
    }

    /// Brings the tasks in line with `config`: starts what is new or changed
    /// (URL, token), stops what is no longer declared, and leaves failed
    /// downloads failed while their declaration is the same. Must be called
    /// inside a tokio runtime.
    pub fn apply(&mut self, config: &Config) {
        let place = Place {
            data_dir: config.data.dir.clone(),
            mode: config.data.permissions,
        };
        let mut wanted: BTreeMap<Sha256, (Download, Vec<(ModelKind, String)>)> = BTreeMap::new();
        for (kind, files) in &config.downloads.models {
            for (name, d) in files {
                wanted
                    .entry(d.sha256)
                    .or_insert_with(|| (d.clone(), Vec::new()))
                    .1
                    .push((*kind, name.clone()));
            }
        }
        let moved = self.place.as_ref().map(|p| &p.data_dir) != Some(&place.data_dir);
        self.place = Some(place.clone());
        if self.max_concurrent != config.downloads.max_concurrent {
            self.max_concurrent = config.downloads.max_concurrent;
            self.slots = Arc::new(Semaphore::new(self.max_concurrent));
        }
        let stale: Vec<Sha256> = self
            .entries
            .iter()
            .filter(|(sha, e)| moved || wanted.get(sha).is_none_or(|(d, _)| *d != e.download))
            .map(|(sha, _)| *sha)
            .collect();
        for sha in stale {
            if let Some(task) = self.entries.remove(&sha).and_then(|e| e.task) {
                task.abort();
            }
        }
        for (sha, (download, models)) in wanted {
            if let Some(entry) = self.entries.get_mut(&sha) {
                entry.models = models;
                continue;
            }
            let entry = self.spawn(&place, download, models);
            self.entries.insert(sha, entry);
        }
    }

    /// Starts failed downloads again (`retry-downloads`); returns how many.
    pub fn retry(&mut self) -> usize {
        let Some(place) = self.place.clone() else {
            return 0;
        };
        let failed: Vec<Sha256> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Failed(_)))
            .map(|(sha, _)| *sha)
            .collect();
        for sha in &failed {
            if let Some(old) = self.entries.remove(sha) {
                let entry = self.spawn(&place, old.download, old.models);
                self.entries.insert(*sha, entry);
            }
        }
        failed.len()
    }

    /// Whether any download still has work to do (the core then refreshes its
    /// snapshot periodically, for progress and rate).
    pub fn busy(&self) -> bool {
        self.entries.values().any(|e| !e.state.is_final())
    }

    /// Every declared download model with its progress, by kind and name.
    pub fn snapshot(&self) -> Vec<ModelProgress> {
        let mut out = Vec::new();
        for (sha, e) in &self.entries {
            let done = e.progress.done.load(Ordering::Relaxed);
            let total = Some(e.progress.total.load(Ordering::Relaxed)).filter(|t| *t != UNKNOWN);
            let elapsed = e.since.elapsed().as_secs_f64();
            let rate = match e.state {
                State::Downloading if elapsed > 0.0 => {
                    done.saturating_sub(e.bytes_at_since) as f64 / elapsed
                }
                _ => 0.0,
            };
            let eta_seconds = match (total, rate > 0.0) {
                (Some(t), true) => Some((t.saturating_sub(done) as f64 / rate).ceil() as u64),
                _ => None,
            };
            for (kind, name) in &e.models {
                out.push(ModelProgress {
                    kind: *kind,
                    name: name.clone(),
                    sha256: sha.hex(),
                    state: e.state.phase(),
                    reason: e.state.reason().map(|r| r.to_string()),
                    bytes_done: done,
                    bytes_total: total,
                    rate,
                    eta_seconds,
                });
            }
        }
        out.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
        out
    }

    fn spawn(
        &mut self,
        place: &Place,
        download: Download,
        models: Vec<(ModelKind, String)>,
    ) -> Entry {
        self.epoch = self.epoch.wrapping_add(1);
        let progress = Arc::new(Progress::default());
        let job = Job {
            helpers: self.helpers.clone(),
            place: place.clone(),
            sha: download.sha256,
            epoch: self.epoch,
            download: download.clone(),
            names: names(&models),
            progress: Arc::clone(&progress),
            slots: Arc::clone(&self.slots),
            reports: self.reports.clone(),
        };
        let task = tokio::spawn(job.run()).abort_handle();
        Entry {
            download,
            models,
            progress,
            epoch: self.epoch,
            state: State::Queued,
            since: Instant::now(),
            bytes_at_since: 0,
            task: Some(task),
        }
    }
}

impl Drop for Manager {
    /// Stops every download now, helpers included: a task aborted here is only
    /// dropped at its next poll, which never comes when the process `execve`s
    /// into a new binary.
    fn drop(&mut self) {
        for e in self.entries.values() {
            if let Some(task) = &e.task {
                task.abort();
            }
        }
        self.helpers.kill_all();
    }
}

/// `checkpoints/a.safetensors, loras/b.safetensors`: how messages name models.
fn names(models: &[(ModelKind, String)]) -> String {
    let names: Vec<String> = models.iter().map(|(k, n)| format!("{k}/{n}")).collect();
    names.join(", ")
}

/// Everything one download task needs.
struct Job {
    helpers: Helpers,
    place: Place,
    sha: Sha256,
    epoch: u64,
    download: Download,
    names: String,
    progress: Arc<Progress>,
    slots: Arc<Semaphore>,
    reports: mpsc::UnboundedSender<Report>,
}

impl Job {
    /// Tells the manager's owner; a gone owner (shutting down) is not an error.
    fn set(&self, state: State) {
        let _ = self.reports.send(Report {
            sha: self.sha,
            epoch: self.epoch,
            state,
            at: Instant::now(),
            bytes: self.progress.done.load(Ordering::Relaxed),
        });
    }

    async fn run(self) {
        let mut fruitless = 0u32;
        loop {
            let Ok(permit) = Arc::clone(&self.slots).acquire_owned().await else {
                return;
            };
            self.set(State::Downloading);
            let before = self.progress.done.load(Ordering::Relaxed);
            let result = worker::attempt(
                &self.helpers,
                &self.place,
                &self.download,
                &self.progress,
                || self.set(State::Verifying),
            )
            .await;
            drop(permit);
            let failure = match result {
                Ok(()) => {
                    tracing::info!(models = %self.names, "download finished and verified");
                    self.set(State::Done);
                    return;
                }
                Err(f) => f,
            };
            if self.progress.done.load(Ordering::Relaxed) > before {
                fruitless = 0;
            } else {
                fruitless = fruitless.saturating_add(1);
            }
            if !failure.is_transient() || fruitless >= MAX_FRUITLESS {
                tracing::warn!(models = %self.names, "download failed: {failure}");
                self.set(State::Failed(failure));
                return;
            }
            let wait = backoff(fruitless);
            tracing::warn!(
                models = %self.names,
                "download attempt failed, retrying in {}: {failure}",
                humantime::format_duration(wait)
            );
            self.set(State::Retrying(failure));
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait after `fruitless` attempts in a row without progress.
fn backoff(fruitless: u32) -> Duration {
    let factor = 2u32.saturating_pow(fruitless.saturating_sub(1));
    FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(4), Duration::from_secs(8));
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    fn entry(sha: Sha256, epoch: u64) -> Entry {
        Entry {
            download: Download {
                url: "https://example.invalid/a".into(),
                sha256: sha,
                token_file: None,
                token_header: "Authorization".into(),
            },
            models: vec![(ModelKind::Checkpoints, "a.safetensors".into())],
            progress: Arc::new(Progress::default()),
            epoch,
            state: State::Queued,
            since: Instant::now(),
            bytes_at_since: 0,
            task: None,
        }
    }

    fn report(sha: Sha256, epoch: u64, state: State) -> Report {
        Report {
            sha,
            epoch,
            state,
            at: Instant::now(),
            bytes: 0,
        }
    }

    /// The state the owner sees is only what reports of the current task said:
    /// a late report of a replaced task (a retry, a changed URL) cannot mark
    /// the new one done or failed.
    #[test]
    fn reports_change_the_state_only_for_the_current_task() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut m = Manager::new(tx);
        let sha = Sha256([7; 32]);
        m.entries.insert(sha, entry(sha, 2));
        assert!(m.busy());
        assert_eq!(m.on_report(report(sha, 1, State::Done)), None);
        assert_eq!(m.snapshot()[0].state, Phase::Queued);
        assert_eq!(m.on_report(report(Sha256([8; 32]), 2, State::Done)), None);
        assert_eq!(m.on_report(report(sha, 2, State::Downloading)), None);
        assert_eq!(m.snapshot()[0].state, Phase::Downloading);
        let failure = super::super::Failure::DiskFull;
        assert_eq!(
            m.on_report(report(sha, 2, State::Failed(failure))),
            Some(Outcome::Failed {
                models: vec![(ModelKind::Checkpoints, "a.safetensors".into())]
            })
        );
        assert_eq!(m.snapshot()[0].state, Phase::Failed);
        assert!(!m.busy());
    }
}
