//! The journal of ComfyUI prompts (docs/design.md, "The queue survives"): every
//! prompt the UI accepted through the front door, kept until the UI is seen to
//! have finished it, so a restart of the UI or of the supervisor loses none.
//!
//! This module is pure state: the [`Book`] that [`Record`]s build (the file is
//! a JSON-lines list of them, [`file`]), the ComfyUI shapes ([`comfy`]) and the
//! rule that decides what a new UI must be sent again ([`reconcile`]). The
//! core's side is `supervisor/queue_keep/`.

pub mod comfy;
pub mod file;
pub mod reconcile;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Largest request body that is journaled: a bigger one is still forwarded,
/// only not kept (API-format graphs are kilobytes; megabytes mean an inlined
/// image, which a journal should not hold).
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Most unfinished prompts kept; more are forwarded but not journaled.
pub const MAX_KEPT: usize = 1000;
/// Most bytes of kept bodies together.
pub const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;
/// Finished prompts remembered (without their bodies) unless `queue.history`
/// says otherwise, oldest dropped first.
pub const HISTORY: usize = 200;
/// Crashes of the UI while one prompt ran after which it is quarantined: a
/// prompt that kills the UI would otherwise kill every UI after it.
pub const STRIKES: u32 = 2;

/// One accepted prompt, as the UI accepted it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// The id the UI answered with (and is given again on a resubmission).
    pub prompt_id: String,
    /// The submitter's `client_id`, if it sent one.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The queue number the UI answered with (the UI's, not ours).
    #[serde(default)]
    pub number: Option<f64>,
    /// Unix seconds when the front door saw the UI accept it.
    #[serde(default)]
    pub accepted_unix: u64,
    /// The request body as sent (a JSON object).
    pub body: serde_json::Map<String, serde_json::Value>,
    /// Size of the body as sent, for the journal's bound.
    #[serde(default)]
    pub bytes: usize,
    /// Crashes of the UI while this prompt ran.
    #[serde(default)]
    pub strikes: u32,
    /// Held back after [`STRIKES`] crashes until released by command.
    #[serde(default)]
    pub quarantined: bool,
    /// Times it was sent again to a new UI.
    #[serde(default)]
    pub resubmits: u32,
}

/// How a kept prompt left the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// In the UI's history, completed.
    Succeeded,
    /// In the UI's history with an error (or interrupted).
    Failed,
    /// Gone from the UI's queue without a history entry: deleted by a user.
    Cancelled,
    /// A new UI refused the resubmission (a node or model gone).
    Rejected,
}

/// A finished prompt in the journal's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Its id.
    pub prompt_id: String,
    /// The submitter's `client_id`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Unix seconds when it was accepted.
    #[serde(default)]
    pub accepted_unix: u64,
    /// Unix seconds when it was seen finished.
    #[serde(default)]
    pub finished_unix: u64,
    /// Times it was sent again.
    #[serde(default)]
    pub resubmits: u32,
}

/// One line of the journal file: what happened to which prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    /// The UI accepted a prompt (or a compaction rewrote one kept).
    Accepted(Kept),
    /// The UI finished it, or it is otherwise done.
    Finished {
        /// Which.
        prompt_id: String,
        /// How.
        outcome: Outcome,
        /// Unix seconds.
        at_unix: u64,
    },
    /// The UI crashed while it ran.
    Strike {
        /// Which.
        prompt_id: String,
    },
    /// Held back after too many strikes.
    Quarantined {
        /// Which.
        prompt_id: String,
    },
    /// Released from quarantine by command: strikes start over.
    Released {
        /// Which.
        prompt_id: String,
    },
    /// Sent again to a new UI.
    Resubmitted {
        /// Which.
        prompt_id: String,
    },
    /// `queue pause` / `queue resume`, kept across restarts.
    Paused {
        /// Whether submissions are held.
        paused: bool,
    },
    /// A finished prompt, written by a compaction.
    History(Done),
}

/// The journal's state: what [`Record`]s add up to.
#[derive(Debug, Clone, PartialEq)]
pub struct Book {
    kept: Vec<Kept>,
    history: VecDeque<Done>,
    paused: bool,
    kept_bytes: usize,
    /// Most finished prompts remembered (`queue.history`).
    cap: usize,
}

impl Default for Book {
    fn default() -> Self {
        Book::with_history(HISTORY)
    }
}

impl Book {
    /// An empty book that remembers `cap` finished prompts (at least one).
    pub fn with_history(cap: usize) -> Book {
        Book {
            kept: Vec::new(),
            history: VecDeque::new(),
            paused: false,
            kept_bytes: 0,
            cap: cap.max(1),
        }
    }

    /// Unfinished prompts, in the order the UI accepted them.
    pub fn kept(&self) -> &[Kept] {
        &self.kept
    }

    /// Finished prompts, oldest first.
    pub fn history(&self) -> &VecDeque<Done> {
        &self.history
    }

    /// Whether `queue pause` is in force.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// The kept prompt `id`.
    pub fn get(&self, id: &str) -> Option<&Kept> {
        self.kept.iter().find(|k| k.prompt_id == id)
    }

    /// Whether a body of `bytes` still fits the journal's bounds.
    pub fn has_room(&self, bytes: usize) -> bool {
        bytes <= MAX_BODY
            && self.kept.len() < MAX_KEPT
            && self.kept_bytes.saturating_add(bytes) <= MAX_KEPT_BYTES
    }

    /// Applies one record; false when it changes nothing (an unknown id, a
    /// duplicate, a full journal).
    pub fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::Accepted(k) => {
                if self.get(&k.prompt_id).is_some() || !self.has_room(k.bytes) {
                    return false;
                }
                self.kept_bytes = self.kept_bytes.saturating_add(k.bytes);
                self.kept.push(k);
                true
            }
            Record::Finished {
                prompt_id,
                outcome,
                at_unix,
            } => {
                let Some(i) = self.kept.iter().position(|k| k.prompt_id == prompt_id) else {
                    return false;
                };
                let k = self.kept.remove(i);
                self.kept_bytes = self.kept_bytes.saturating_sub(k.bytes);
                self.remember(Done {
                    prompt_id: k.prompt_id,
                    client_id: k.client_id,
                    outcome,
                    accepted_unix: k.accepted_unix,
                    finished_unix: at_unix,
                    resubmits: k.resubmits,
                });
                true
            }
            Record::Strike { prompt_id } => self.change(&prompt_id, |k| {
                k.strikes = k.strikes.saturating_add(1);
            }),
            Record::Quarantined { prompt_id } => self.change(&prompt_id, |k| k.quarantined = true),
            Record::Released { prompt_id } => self.change(&prompt_id, |k| {
                k.quarantined = false;
                k.strikes = 0;
            }),
            Record::Resubmitted { prompt_id } => self.change(&prompt_id, |k| {
                k.resubmits = k.resubmits.saturating_add(1);
            }),
            Record::Paused { paused } => {
                let changed = self.paused != paused;
                self.paused = paused;
                changed
            }
            Record::History(done) => {
                self.remember(done);
                true
            }
        }
    }

    /// The records that rebuild this book: what a compaction writes.
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.kept.len() + self.history.len() + 1);
        out.extend(self.history.iter().cloned().map(Record::History));
        out.extend(self.kept.iter().cloned().map(Record::Accepted));
        if self.paused {
            out.push(Record::Paused { paused: true });
        }
        out
    }

    fn change(&mut self, id: &str, f: impl FnOnce(&mut Kept)) -> bool {
        match self.kept.iter_mut().find(|k| k.prompt_id == id) {
            Some(k) => {
                f(k);
                true
            }
            None => false,
        }
    }

    fn remember(&mut self, done: Done) {
        self.history.push_back(done);
        while self.history.len() > self.cap {
            self.history.pop_front();
        }
    }
}

/// The journal as the status shows it (no bodies: they are the users').
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeepStatus {
    /// Whether prompts are journaled (ComfyUI behind the front door).
    pub enabled: bool,
    /// `queue pause`: new submissions are held at the front door.
    pub paused: bool,
    /// The journal is being read or a new UI is being sent the kept prompts:
    /// new submissions wait meanwhile, so the old ones keep their place.
    pub replaying: bool,
    /// Unfinished prompts in the journal (quarantined ones included).
    pub kept: usize,
    /// The kept prompt the UI runs now, as far as the supervisor saw.
    pub running: Option<String>,
    /// Prompts held back after crashing the UI [`STRIKES`] times.
    pub quarantined: Vec<String>,
    /// Prompts sent again to a new UI since the supervisor started.
    pub resubmitted: u64,
    /// Prompts journaled since the supervisor started.
    pub journaled: u64,
    /// Submissions forwarded but not journaled (too big, journal full, not
    /// JSON) since the supervisor started.
    pub not_journaled: u64,
    /// The last failure to read or write the journal file.
    pub error: Option<String>,
}

impl KeepStatus {
    /// Whether the front door holds new `POST /prompt` submissions now.
    pub fn holds_submissions(&self) -> bool {
        self.enabled && (self.paused || self.replaying)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn kept(id: &str) -> Kept {
        Kept {
            prompt_id: id.into(),
            client_id: None,
            number: None,
            accepted_unix: 1,
            body: serde_json::Map::new(),
            bytes: 10,
            strikes: 0,
            quarantined: false,
            resubmits: 0,
        }
    }

    #[test]
    fn finished_prompts_move_to_a_bounded_history() {
        let mut b = Book::default();
        for i in 0..(HISTORY + 5) {
            assert!(b.apply(Record::Accepted(kept(&i.to_string()))));
            assert!(b.apply(Record::Finished {
                prompt_id: i.to_string(),
                outcome: Outcome::Succeeded,
                at_unix: 2,
            }));
        }
        assert!(b.kept().is_empty());
        assert_eq!(b.history().len(), HISTORY);
        assert_eq!(b.history()[0].prompt_id, "5");
        assert!(!b.apply(Record::Finished {
            prompt_id: "nope".into(),
            outcome: Outcome::Failed,
            at_unix: 3,
        }));
    }

    #[test]
    fn records_rebuild_the_same_book() {
        let mut b = Book::default();
        b.apply(Record::Accepted(kept("a")));
        b.apply(Record::Accepted(kept("b")));
        b.apply(Record::Strike {
            prompt_id: "a".into(),
        });
        b.apply(Record::Finished {
            prompt_id: "b".into(),
            outcome: Outcome::Failed,
            at_unix: 9,
        });
        b.apply(Record::Paused { paused: true });
        let mut again = Book::default();
        for r in b.records() {
            again.apply(r);
        }
        assert_eq!(again, b);
        assert_eq!(again.get("a").map(|k| k.strikes), Some(1));
    }

    #[test]
    fn duplicates_and_a_full_journal_are_refused() {
        let mut b = Book::default();
        assert!(b.apply(Record::Accepted(kept("a"))));
        assert!(!b.apply(Record::Accepted(kept("a"))));
        let mut big = kept("big");
        big.bytes = MAX_BODY + 1;
        assert!(!b.apply(Record::Accepted(big)));
        assert_eq!(b.kept().len(), 1);
    }
}
