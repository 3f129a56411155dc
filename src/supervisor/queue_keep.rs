//! The core's side of the queue journal ([`crate::journal`]): it owns the
//! [`Book`], journals what the front door saw the UI accept, moves finished
//! prompts out, and sends a new UI the prompts the old one did not finish,
//! each with its own id and only when neither `/queue` nor `/history` of the
//! new UI knows it. File writes, `/queue` and `/history` reads and the
//! resubmissions run as tasks ([`KeepEvent`]); the loop only decides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::timers::unix_now;
use super::work::Event;
use super::{Supervisor, Ui};
use crate::journal::file::{self, JournalError, Loaded};
use crate::journal::reconcile::{self, Moment, Step, UiKnows};
use crate::journal::{Book, KeepStatus, Kept, Outcome, Record, comfy};
use crate::supervisor::protocol::{KeptState, ListedPrompt, QueueList, QueueOp, QueueRefusal};
use crate::ui::api::QueueReading;
use crate::ui::flavor::Flavor;
use crate::ui::loopback::Loopback;

/// Timeout of one `/queue`, `/history/{id}` or resubmission call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most history look-ups of one check while the UI runs.
const CHECK_BATCH: usize = 64;

/// What a journal task reports.
#[derive(Debug)]
pub enum KeepEvent {
    /// The journal file was read at start.
    Loaded(Result<Loaded, JournalError>),
    /// Records were appended (or the file rewritten): it has `lines` now.
    Written {
        /// Whether it worked.
        result: Result<(), JournalError>,
        /// Lines in the file afterwards.
        lines: usize,
    },
    /// What UI start `start` knows of the prompts `asked`.
    Known {
        /// The start asked.
        start: u64,
        /// A UI not sent them yet, or the one that was.
        moment: Moment,
        /// The ids asked about.
        asked: BTreeSet<String>,
        /// Its answers, or why there are none.
        knows: Result<UiKnows, String>,
    },
    /// The resubmissions to UI start `start` ended, each with its answer.
    Resubmitted {
        /// The start sent to.
        start: u64,
        /// Per prompt, in order.
        sent: Vec<(String, Sent)>,
    },
}

/// How one resubmission went.
#[derive(Debug)]
pub enum Sent {
    /// The UI queued it.
    Accepted,
    /// The UI refused it (its 4xx answer, shortened).
    Refused(String),
    /// No answer: the UI went away, or failed; it is tried again later.
    Lost(String),
}

/// Where sending the kept prompts to the current UI stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Replay {
    /// Owed to the current (or next) UI.
    #[default]
    Due,
    /// Its `/queue` and `/history` are being read.
    Reconciling,
    /// The prompts are being sent.
    Resubmitting,
    /// Done for this UI.
    Done,
}

/// The journal's state in the core.
#[derive(Debug, Default)]
pub(super) struct QueueKeep {
    /// Whether a journal is kept at all (ComfyUI behind the front door).
    enabled: bool,
    path: PathBuf,
    /// `queue.history`.
    history: usize,
    /// `None` until the file is read.
    book: Option<Book>,
    outbox: Vec<Record>,
    writing: bool,
    lines: usize,
    /// The next write replaces the file (a torn or skipped line, a failed write).
    rewrite: bool,
    replay: Replay,
    /// A history check of the running UI is out.
    checking: bool,
    /// The kept prompt the UI runs now, as far as the readings say.
    running: Option<String>,
    /// When each kept prompt was handed to the current UI.
    sent: HashMap<String, Instant>,
    resubmitted: u64,
    journaled: u64,
    not_journaled: u64,
    error: Option<String>,
}

impl QueueKeep {
    /// The journal for `config`: kept with `queue.keep` for ComfyUI behind the
    /// front door only (only there does the supervisor see the prompts arrive).
    pub(super) fn new(config: &crate::config::Config) -> QueueKeep {
        QueueKeep {
            enabled: config.ui.flavor == Flavor::Comfyui
                && config.front.enable
                && config.queue.keep,
            path: file::path(&config.data.dir),
            history: config.queue.history,
            ..QueueKeep::default()
        }
    }

    /// What the snapshot says of it.
    pub(super) fn status(&self) -> KeepStatus {
        let book = self.book.as_ref();
        KeepStatus {
            enabled: self.enabled,
            paused: book.is_some_and(Book::paused),
            replaying: self.enabled
                && (book.is_none()
                    || matches!(self.replay, Replay::Reconciling | Replay::Resubmitting)),
            kept: book.map_or(0, |b| b.kept().len()),
            running: self.running.clone(),
            quarantined: book
                .map(|b| {
                    b.kept()
                        .iter()
                        .filter(|k| k.quarantined)
                        .map(|k| k.prompt_id.clone())
                        .collect()
                })
                .unwrap_or_default(),
            resubmitted: self.resubmitted,
            journaled: self.journaled,
            not_journaled: self.not_journaled,
            error: self.error.clone(),
        }
    }

    fn list(&self) -> QueueList {
        let book = self.book.as_ref();
        let prompts = book.map_or_else(Vec::new, |b| {
            b.kept().iter().map(|k| self.listed(k)).collect()
        });
        QueueList {
            enabled: self.enabled,
            paused: book.is_some_and(Book::paused),
            replaying: self.status().replaying,
            prompts,
            history: book.map_or_else(Vec::new, |b| b.history().iter().cloned().collect()),
        }
    }

    fn listed(&self, k: &Kept) -> ListedPrompt {
        let state = if k.quarantined {
            KeptState::Quarantined
        } else if self.running.as_deref() == Some(k.prompt_id.as_str()) {
            KeptState::Running
        } else {
            KeptState::Pending
        };
        ListedPrompt {
            prompt_id: k.prompt_id.clone(),
            state,
            client_id: k.client_id.clone(),
            number: k.number,
            accepted_unix: k.accepted_unix,
            strikes: k.strikes,
            resubmits: k.resubmits,
        }
    }

    fn paused(&self) -> bool {
        self.book.as_ref().is_some_and(Book::paused)
    }

    fn is_kept(&self, id: &str) -> bool {
        self.book.as_ref().is_some_and(|b| b.get(id).is_some())
    }
}

impl Supervisor {
    /// At start: read the journal in a task (new submissions wait meanwhile).
    pub(super) fn keep_load(&mut self) {
        if !self.keep.enabled {
            return;
        }
        let (path, history) = (self.keep.path.clone(), self.keep.history);
        self.tasks.spawn(async move {
            let loaded = tokio::task::spawn_blocking(move || file::load(&path, history))
                .await
                .unwrap_or_else(|e| Err(joined(e)));
            Event::Keep(KeepEvent::Loaded(loaded))
        });
    }

    /// The UI answers: send it what the last one did not finish.
    pub(super) fn keep_ui_ready(&mut self) {
        self.keep_replay();
    }

    /// The UI is stopping or gone: the next one is owed the kept prompts.
    pub(super) fn keep_ui_gone(&mut self) {
        let k = &mut self.keep;
        k.replay = Replay::Due;
        k.running = None;
        k.sent.clear();
        k.checking = false;
    }

    /// The UI crashed: the prompt it ran gets a strike (two, and it is
    /// quarantined instead of killing the next UI too). A stall restart counts
    /// the same: the prompt hung the UI.
    pub(super) fn keep_ui_crashed(&mut self) {
        if let Some(id) = self.keep.running.clone().filter(|id| self.keep.is_kept(id)) {
            tracing::warn!(prompt_id = %id, "the UI went down while running a journaled prompt; a strike against it");
            self.keep_write(Record::Strike { prompt_id: id });
        }
    }

    /// ComfyUI said on `/ws` which prompt moves.
    pub(super) fn keep_progress(&mut self, prompt: Option<&String>) {
        if let Some(id) = prompt.filter(|id| self.keep.is_kept(id)) {
            self.keep.running = Some(id.clone());
        }
    }

    /// Whether a queue change announced on `/ws` should be probed at once: a
    /// prompt that just finished leaves the journal without waiting for the poll.
    pub(super) fn keep_wants_probe(&self) -> bool {
        self.keep
            .book
            .as_ref()
            .is_some_and(|b| !b.kept().is_empty())
    }

    /// A queue reading of the running UI, probed at `probed`: who runs, and
    /// which kept prompts it no longer lists (checked against its history).
    pub(super) fn keep_reading(&mut self, r: &QueueReading, probed: Instant) {
        if !self.keep.enabled || self.keep.book.is_none() {
            return;
        }
        self.keep.running = r.job.clone();
        if self.keep.replay == Replay::Due {
            self.keep_replay();
            return;
        }
        if self.keep.replay != Replay::Done || self.keep.checking {
            return;
        }
        let listed: BTreeSet<&str> = r
            .job
            .iter()
            .chain(r.waiting.iter())
            .map(String::as_str)
            .collect();
        let asked: BTreeSet<String> = self
            .keep
            .book
            .iter()
            .flat_map(|b| b.kept())
            .filter(|k| !k.quarantined && !listed.contains(k.prompt_id.as_str()))
            .filter(|k| {
                self.keep
                    .sent
                    .get(&k.prompt_id)
                    .is_some_and(|t| *t < probed)
            })
            .map(|k| k.prompt_id.clone())
            .take(CHECK_BATCH)
            .collect();
        if !asked.is_empty() {
            self.keep.checking = true;
            self.keep_ask(Moment::SameUi, asked);
        }
    }

    /// Starts sending the kept prompts to the ready UI, when one is owed and
    /// not paused: first what its `/queue` and `/history` know.
    fn keep_replay(&mut self) {
        if self.keep.book.is_none()
            || self.keep.replay != Replay::Due
            || self.keep.paused()
            || !matches!(self.slot.ui, Ui::Ready { .. })
        {
            return;
        }
        let asked: BTreeSet<String> = self
            .keep
            .book
            .iter()
            .flat_map(|b| b.kept())
            .filter(|k| !k.quarantined && !self.keep.sent.contains_key(&k.prompt_id))
            .map(|k| k.prompt_id.clone())
            .collect();
        if asked.is_empty() {
            self.keep.replay = Replay::Done;
            return;
        }
        self.keep.replay = Replay::Reconciling;
        self.keep_ask(Moment::NewUi, asked);
    }

    /// Asks the UI, in a task, what it knows of `asked`.
    fn keep_ask(&mut self, moment: Moment, asked: BTreeSet<String>) {
        let client = Loopback::new(self.config.ui_own_port(), None);
        let start = self.slot.start_seq;
        self.tasks.spawn(async move {
            let knows = ui_knows(&client, &asked).await;
            Event::Keep(KeepEvent::Known {
                start,
                moment,
                asked,
                knows,
            })
        });
    }

    /// The front door saw the UI accept `kept`.
    pub(super) fn on_queue_accepted(&mut self, kept: Kept) {
        let fits = self
            .keep
            .book
            .as_ref()
            .is_none_or(|b| b.has_room(kept.bytes));
        if !self.keep.enabled || !fits {
            self.keep.not_journaled = self.keep.not_journaled.saturating_add(1);
            tracing::warn!(prompt_id = %kept.prompt_id, "queue journal full; the prompt is not journaled");
            return;
        }
        self.keep
            .sent
            .insert(kept.prompt_id.clone(), Instant::now());
        self.keep.journaled = self.keep.journaled.saturating_add(1);
        self.keep_write(Record::Accepted(kept));
    }

    /// `queue pause|resume|list|release`.
    pub(super) fn on_queue_command(
        &mut self,
        op: QueueOp,
        reply: oneshot::Sender<Result<QueueList, QueueRefusal>>,
    ) {
        if !self.keep.enabled {
            let _ = reply.send(Err(QueueRefusal::NotKept));
            return;
        }
        let answer = match op {
            QueueOp::List => Ok(()),
            QueueOp::Pause | QueueOp::Resume => {
                let paused = op == QueueOp::Pause;
                if self.keep.paused() != paused {
                    tracing::info!(
                        paused,
                        "queue {}",
                        if paused {
                            "paused: new prompts are held at the front door"
                        } else {
                            "resumed"
                        }
                    );
                    self.keep_write(Record::Paused { paused });
                }
                self.keep_replay();
                Ok(())
            }
            QueueOp::Release { prompt_id } => {
                match self.keep.book.as_ref().and_then(|b| b.get(&prompt_id)) {
                    None => Err(QueueRefusal::Unknown { prompt_id }),
                    Some(k) if !k.quarantined => Err(QueueRefusal::NotQuarantined { prompt_id }),
                    Some(_) => {
                        tracing::info!(prompt_id = %prompt_id, "quarantined prompt released; it is sent to the UI again");
                        self.keep_write(Record::Released { prompt_id });
                        if self.keep.replay == Replay::Done {
                            self.keep.replay = Replay::Due;
                        }
                        self.keep_replay();
                        Ok(())
                    }
                }
            }
        };
        self.publish();
        let _ = reply.send(answer.map(|()| self.keep.list()));
    }

    /// A journal task's report.
    pub(super) fn on_keep(&mut self, ev: KeepEvent) {
        match ev {
            KeepEvent::Loaded(result) => {
                let loaded = result.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "cannot read the queue journal; starting an empty one");
                    self.keep.error = Some(e.to_string());
                    Loaded {
                        book: Book::with_history(self.keep.history),
                        rewrite: true,
                        ..Loaded::default()
                    }
                });
                let kept = loaded.book.kept().len();
                if kept > 0 {
                    tracing::info!(kept, file = %self.keep.path.display(), "queue journal read: unfinished prompts are sent to the UI once it is ready");
                }
                // What arrived before the file was read joins it.
                let mut book = loaded.book;
                for r in &self.keep.outbox {
                    book.apply(r.clone());
                }
                self.keep.book = Some(book);
                self.keep.lines = loaded.lines;
                self.keep.rewrite = loaded.rewrite;
                self.keep_flush();
                self.keep_replay();
            }
            KeepEvent::Written { result, lines } => {
                self.keep.writing = false;
                match result {
                    Ok(()) => {
                        self.keep.lines = lines;
                        self.keep.rewrite = false;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot write the queue journal; the whole journal is written again with the next change");
                        self.keep.error = Some(e.to_string());
                        self.keep.rewrite = true;
                    }
                }
                self.keep_flush();
            }
            KeepEvent::Known {
                start,
                moment,
                asked,
                knows,
            } => self.on_known(start, moment, &asked, knows),
            KeepEvent::Resubmitted { start, sent } => self.on_resubmitted(start, sent),
        }
    }

    fn on_known(
        &mut self,
        start: u64,
        moment: Moment,
        asked: &BTreeSet<String>,
        knows: Result<UiKnows, String>,
    ) {
        if moment == Moment::SameUi {
            self.keep.checking = false;
        }
        if start != self.slot.start_seq || !matches!(self.slot.ui, Ui::Ready { .. }) {
            return;
        }
        let knows = match knows {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the UI's queue and history for the journal; trying again with the next queue reading");
                if moment == Moment::NewUi {
                    self.keep.replay = Replay::Due;
                }
                return;
            }
        };
        let Some(book) = self.keep.book.as_ref() else {
            return;
        };
        let steps = reconcile::plan(book, asked, &knows, moment);
        let mut resubmit = Vec::new();
        for step in steps {
            match step {
                Step::Finished(id, outcome) => {
                    tracing::debug!(prompt_id = %id, ?outcome, "journaled prompt finished");
                    self.keep.sent.remove(&id);
                    self.keep_write(Record::Finished {
                        prompt_id: id,
                        outcome,
                        at_unix: unix_now(),
                    });
                }
                Step::Quarantine(id) => {
                    tracing::error!(prompt_id = %id, strikes = crate::journal::STRIKES, "a journaled prompt was running each time the UI went down; quarantined (`sd-webui-supervisor queue release ID` sends it again)");
                    self.keep_write(Record::Quarantined { prompt_id: id });
                }
                Step::Resubmit(id) => {
                    if let Some(k) = self.keep.book.as_ref().and_then(|b| b.get(&id)) {
                        resubmit.push((id, comfy::resubmission(k)));
                    }
                }
            }
        }
        // Those the new UI already queues are its own now.
        if moment == Moment::NewUi {
            let now = Instant::now();
            for id in asked.iter().filter(|id| knows.queued.contains(*id)) {
                self.keep.sent.insert(id.clone(), now);
            }
        }
        if moment == Moment::SameUi {
            return;
        }
        if resubmit.is_empty() {
            self.keep.replay = Replay::Done;
            return;
        }
        tracing::info!(
            count = resubmit.len(),
            "sending the journaled prompts the last UI did not finish, in their order"
        );
        self.keep.replay = Replay::Resubmitting;
        let client = Loopback::new(self.config.ui_own_port(), None);
        self.tasks.spawn(async move {
            let mut sent = Vec::with_capacity(resubmit.len());
            for (id, body) in resubmit {
                let answer = client.post("/prompt", Some(body), CALL_TIMEOUT).await;
                let result = match answer {
                    Ok(a) if a.is_success() => Sent::Accepted,
                    Ok(a) if (400..500).contains(&a.status) => {
                        let text: String =
                            String::from_utf8_lossy(&a.body).chars().take(300).collect();
                        Sent::Refused(format!("HTTP {}: {text}", a.status))
                    }
                    Ok(a) => Sent::Lost(format!("HTTP {}", a.status)),
                    Err(e) => Sent::Lost(e.to_string()),
                };
                let lost = matches!(result, Sent::Lost(_));
                sent.push((id, result));
                if lost {
                    break;
                }
            }
            Event::Keep(KeepEvent::Resubmitted { start, sent })
        });
    }

    fn on_resubmitted(&mut self, start: u64, sent: Vec<(String, Sent)>) {
        if start != self.slot.start_seq {
            return;
        }
        self.keep.replay = Replay::Done;
        let now = Instant::now();
        for (id, result) in sent {
            match result {
                Sent::Accepted => {
                    self.keep.resubmitted = self.keep.resubmitted.saturating_add(1);
                    self.keep.sent.insert(id.clone(), now);
                    self.keep_write(Record::Resubmitted { prompt_id: id });
                }
                Sent::Refused(why) => {
                    tracing::warn!(prompt_id = %id, answer = %why, "the UI refused a journaled prompt sent again; it leaves the journal");
                    self.keep_write(Record::Finished {
                        prompt_id: id,
                        outcome: Outcome::Rejected,
                        at_unix: unix_now(),
                    });
                }
                Sent::Lost(why) => {
                    tracing::warn!(prompt_id = %id, error = %why, "no answer to a journaled prompt sent again; tried again later");
                    self.keep.replay = Replay::Due;
                }
            }
        }
    }

    /// Applies `record` at once and writes it in order (one write at a time).
    fn keep_write(&mut self, record: Record) {
        if let Some(book) = self.keep.book.as_mut() {
            book.apply(record.clone());
        }
        self.keep.outbox.push(record);
        self.keep_flush();
    }

    /// Writes what waits, unless a write is out or the file is not read yet.
    fn keep_flush(&mut self) {
        let k = &mut self.keep;
        let Some(book) = k.book.as_ref() else { return };
        if k.writing || (k.outbox.is_empty() && !k.rewrite) {
            return;
        }
        let records = std::mem::take(&mut k.outbox);
        let lines = k.lines.saturating_add(records.len());
        let (records, lines, whole) = if k.rewrite || file::wants_compaction(lines, book) {
            let all = book.records();
            let n = all.len();
            (all, n, true)
        } else {
            (records, lines, false)
        };
        k.writing = true;
        let path = k.path.clone();
        self.tasks.spawn(async move {
            let result = tokio::task::spawn_blocking(move || {
                if whole {
                    file::rewrite(&path, &records)
                } else {
                    file::append(&path, &records)
                }
            })
            .await
            .unwrap_or_else(|e| Err(joined(e)));
            Event::Keep(KeepEvent::Written { result, lines })
        });
    }
}

/// A blocking journal task that did not finish, as a journal error.
fn joined(e: tokio::task::JoinError) -> JournalError {
    JournalError::Io {
        path: PathBuf::from(file::FILE_NAME),
        source: std::io::Error::other(e.to_string()),
    }
}

/// What the UI's `/queue` and `/history/{id}` say of `asked`.
async fn ui_knows(client: &Loopback, asked: &BTreeSet<String>) -> Result<UiKnows, String> {
    let queue = client
        .get("/queue", CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !queue.is_success() {
        return Err(format!("/queue: HTTP {}", queue.status));
    }
    let queue: serde_json::Value =
        serde_json::from_slice(&queue.body).map_err(|e| format!("/queue: {e}"))?;
    let queued = comfy::queue_ids(&queue);
    let mut history = BTreeMap::new();
    for id in asked.iter().filter(|id| !queued.contains(*id)) {
        let path = format!("/history/{}", encode_segment(id));
        let answer = client
            .get(&path, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        if !answer.is_success() {
            return Err(format!("/history: HTTP {}", answer.status));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&answer.body).map_err(|e| format!("/history: {e}"))?;
        if let Some(outcome) = comfy::history_outcome(id, &v) {
            history.insert(id.clone(), outcome);
        }
    }
    Ok(UiKnows { queued, history })
}

/// A prompt id as one path segment (ids are the UI's or a client's choice).
fn encode_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
