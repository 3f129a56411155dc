//! What the running UI tells the journal: that it is ready (a replay is owed),
//! gone (the next UI is owed the kept prompts) or crashed (a strike against
//! the prompt it ran), which prompt ComfyUI's `/ws` says moves, and its queue
//! readings, which hand the kept prompts it no longer lists to a history check
//! ([`super::replay`]).

use std::collections::BTreeSet;
use std::time::Instant;

use crate::journal::Record;
use crate::journal::reconcile::Moment;
use crate::supervisor::Supervisor;
use crate::ui::api::QueueReading;

use super::Replay;

/// Most history look-ups of one check while the UI runs.
const CHECK_BATCH: usize = 64;

impl Supervisor {
    /// The UI answers: send it what the last one did not finish.
    pub(in crate::supervisor) fn keep_ui_ready(&mut self) {
        self.keep_replay();
    }

    /// The UI is stopping or gone: the next one is owed the kept prompts.
    pub(in crate::supervisor) fn keep_ui_gone(&mut self) {
        let k = &mut self.keep;
        k.replay = Replay::Due;
        k.running = None;
        k.sent.clear();
        k.checking = false;
    }

    /// The UI crashed: the prompt it ran gets a strike (two, and it is
    /// quarantined instead of killing the next UI too). A stall restart counts
    /// the same: the prompt hung the UI.
    pub(in crate::supervisor) fn keep_ui_crashed(&mut self) {
        if let Some(id) = self.keep.running.clone().filter(|id| self.keep.is_kept(id)) {
            tracing::warn!(prompt_id = %id, "the UI went down while running a journaled prompt; a strike against it");
            self.keep_write(Record::Strike { prompt_id: id });
        }
    }

    /// ComfyUI said on `/ws` which prompt moves.
    pub(in crate::supervisor) fn keep_progress(&mut self, prompt: Option<&String>) {
        if let Some(id) = prompt.filter(|id| self.keep.is_kept(id)) {
            self.keep.running = Some(id.clone());
        }
    }

    /// Whether a queue change announced on `/ws` should be probed at once: a
    /// prompt that just finished leaves the journal without waiting for the poll.
    pub(in crate::supervisor) fn keep_wants_probe(&self) -> bool {
        self.keep
            .book
            .as_ref()
            .is_some_and(|b| !b.kept().is_empty())
    }

    /// A queue reading of the running UI, probed at `probed`: who runs, and
    /// which kept prompts it no longer lists (checked against its history).
    pub(in crate::supervisor) fn keep_reading(&mut self, r: &QueueReading, probed: Instant) {
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
}
