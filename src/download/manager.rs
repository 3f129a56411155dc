//! The download queue: one task per distinct digest, at most
//! `downloads.max_concurrent` transferring at once, transient failures retried
//! with exponential backoff up to a limit, and progress kept where status,
//! D-Bus and metrics read it. The core hears of outcomes through [`Event`]s.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
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

/// What the core hears from the downloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
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

/// Where one download's task stands.
struct Cell {
    state: State,
    /// When the current attempt started and the bytes there were then.
    since: Instant,
    bytes_at_since: u64,
}

struct Entry {
    download: Download,
    models: Vec<(ModelKind, String)>,
    progress: Arc<Progress>,
    cell: Arc<Mutex<Cell>>,
    task: Option<AbortHandle>,
}

struct Inner {
    place: Option<Place>,
    entries: BTreeMap<Sha256, Entry>,
    slots: Arc<Semaphore>,
    max_concurrent: usize,
}

/// Owns the download tasks of one supervisor.
pub struct Manager {
    helpers: Helpers,
    events: mpsc::UnboundedSender<Event>,
    inner: Mutex<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Manager {
    /// A manager reporting to `events`.
    pub fn new(events: mpsc::UnboundedSender<Event>) -> Manager {
        Manager {
            helpers: Helpers::default(),
            events,
            inner: Mutex::new(Inner {
                place: None,
                entries: BTreeMap::new(),
                slots: Arc::new(Semaphore::new(1)),
                max_concurrent: 0,
            }),
        }
    }

    /// Brings the tasks in line with `config`: starts what is new or changed
    /// (URL, token), stops what is no longer declared, and leaves failed
    /// downloads failed while their declaration is the same. Must be called
    /// inside a tokio runtime.
    pub fn apply(&self, config: &Config) {
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
        let mut inner = lock(&self.inner);
        let moved = inner.place.as_ref().map(|p| &p.data_dir) != Some(&place.data_dir);
        inner.place = Some(place.clone());
        if inner.max_concurrent != config.downloads.max_concurrent {
            inner.max_concurrent = config.downloads.max_concurrent;
            inner.slots = Arc::new(Semaphore::new(inner.max_concurrent));
        }
        let stale: Vec<Sha256> = inner
            .entries
            .iter()
            .filter(|(sha, e)| moved || wanted.get(sha).is_none_or(|(d, _)| *d != e.download))
            .map(|(sha, _)| *sha)
            .collect();
        for sha in stale {
            if let Some(task) = inner.entries.remove(&sha).and_then(|e| e.task) {
                task.abort();
            }
        }
        for (sha, (download, models)) in wanted {
            if let Some(entry) = inner.entries.get_mut(&sha) {
                entry.models = models;
                continue;
            }
            let entry = self.spawn(&inner, &place, download, models);
            inner.entries.insert(sha, entry);
        }
    }

    /// Starts failed downloads again (`retry-downloads`); returns how many.
    pub fn retry(&self) -> usize {
        let mut inner = lock(&self.inner);
        let Some(place) = inner.place.clone() else {
            return 0;
        };
        let failed: Vec<Sha256> = inner
            .entries
            .iter()
            .filter(|(_, e)| matches!(lock(&e.cell).state, State::Failed(_)))
            .map(|(sha, _)| *sha)
            .collect();
        for sha in &failed {
            if let Some(old) = inner.entries.remove(sha) {
                let entry = self.spawn(&inner, &place, old.download, old.models);
                inner.entries.insert(*sha, entry);
            }
        }
        failed.len()
    }

    /// Whether any download still has work to do (the core then refreshes its
    /// snapshot periodically, for progress and rate).
    pub fn busy(&self) -> bool {
        lock(&self.inner)
            .entries
            .values()
            .any(|e| !lock(&e.cell).state.is_final())
    }

    /// Every declared download model with its progress, by kind and name.
    pub fn snapshot(&self) -> Vec<ModelProgress> {
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        for (sha, e) in &inner.entries {
            let cell = lock(&e.cell);
            let done = e.progress.done.load(Ordering::Relaxed);
            let total = Some(e.progress.total.load(Ordering::Relaxed)).filter(|t| *t != UNKNOWN);
            let elapsed = cell.since.elapsed().as_secs_f64();
            let rate = match cell.state {
                State::Downloading if elapsed > 0.0 => {
                    done.saturating_sub(cell.bytes_at_since) as f64 / elapsed
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
                    state: cell.state.phase(),
                    reason: cell.state.reason().map(|r| r.to_string()),
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
        &self,
        inner: &Inner,
        place: &Place,
        download: Download,
        models: Vec<(ModelKind, String)>,
    ) -> Entry {
        let progress = Arc::new(Progress::default());
        let cell = Arc::new(Mutex::new(Cell {
            state: State::Queued,
            since: Instant::now(),
            bytes_at_since: 0,
        }));
        let job = Job {
            helpers: self.helpers.clone(),
            place: place.clone(),
            download: download.clone(),
            names: names(&models),
            models: models.clone(),
            progress: Arc::clone(&progress),
            cell: Arc::clone(&cell),
            slots: Arc::clone(&inner.slots),
            events: self.events.clone(),
        };
        let task = tokio::spawn(job.run()).abort_handle();
        Entry {
            download,
            models,
            progress,
            cell,
            task: Some(task),
        }
    }
}

impl Drop for Manager {
    /// Stops every download now, helpers included: a task aborted here is only
    /// dropped at its next poll, which never comes when the process `execve`s
    /// into a new binary.
    fn drop(&mut self) {
        for e in lock(&self.inner).entries.values() {
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
    download: Download,
    names: String,
    models: Vec<(ModelKind, String)>,
    progress: Arc<Progress>,
    cell: Arc<Mutex<Cell>>,
    slots: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
}

impl Job {
    fn set(&self, state: State) {
        let mut cell = lock(&self.cell);
        cell.state = state;
        cell.since = Instant::now();
        cell.bytes_at_since = self.progress.done.load(Ordering::Relaxed);
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
                    let _ = self.events.send(Event::Done {
                        models: self.models.clone(),
                    });
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
                let _ = self.events.send(Event::Failed {
                    models: self.models.clone(),
                });
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
}
