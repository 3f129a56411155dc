//! The core's side of the queue journal ([`crate::journal`]): it owns the
//! [`Book`], journals what the front door saw the UI accept, moves finished
//! prompts out, and sends a new UI the prompts the old one did not finish,
//! each with its own id and only when neither `/queue` nor `/history` of the
//! new UI knows it. File writes, `/queue` and `/history` reads and the
//! resubmissions run as tasks ([`KeepEvent`]); the loop only decides.
//!
//! This file holds the journal's state in the core ([`QueueKeep`]), what the
//! snapshot says of it, and the dispatch of its tasks' reports; [`store`]
//! reads and writes the file, [`readings`] follows the running UI (its life,
//! its progress, its queue readings), [`replay`] asks a UI what it knows and
//! sends the kept prompts again, [`commands`] takes what the door and `queue
//! …` send.

mod commands;
mod readings;
mod replay;
mod store;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use super::Supervisor;
use crate::journal::file::{self, JournalError, Loaded};
use crate::journal::reconcile::{Moment, UiKnows};
use crate::journal::{Book, KeepStatus, Record};
use crate::ui::flavor::Flavor;

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

    /// Whether `queue pause` holds new prompts and the replay.
    fn paused(&self) -> bool {
        self.book.as_ref().is_some_and(Book::paused)
    }

    /// Whether `id` is a prompt the journal keeps.
    fn is_kept(&self, id: &str) -> bool {
        self.book.as_ref().is_some_and(|b| b.get(id).is_some())
    }
}

impl Supervisor {
    /// A journal task's report, to the file that owns its concern.
    pub(super) fn on_keep(&mut self, ev: KeepEvent) {
        match ev {
            KeepEvent::Loaded(result) => self.on_loaded(result),
            KeepEvent::Written { result, lines } => self.on_written(result, lines),
            KeepEvent::Known {
                start,
                moment,
                asked,
                knows,
            } => self.on_known(start, moment, &asked, knows),
            KeepEvent::Resubmitted { start, sent } => self.on_resubmitted(start, sent),
        }
    }
}
