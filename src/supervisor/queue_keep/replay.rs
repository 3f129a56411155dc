//! Sending the kept prompts to a UI, and asking a UI what it knows of them:
//! a new UI's `/queue` and `/history` are read before anything is sent (so a
//! prompt is neither lost nor run twice, [`crate::journal::reconcile`]), the
//! running UI's history is checked for prompts its queue no longer lists, and
//! what is still owed is resubmitted with its own id.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::journal::reconcile::{self, Moment, Step, UiKnows};
use crate::journal::{Outcome, Record, comfy};
use crate::supervisor::timers::unix_now;
use crate::supervisor::work::Event;
use crate::supervisor::{Supervisor, Ui};
use crate::ui::loopback::Loopback;

use super::{KeepEvent, Replay, Sent};

/// Timeout of one `/queue`, `/history/{id}` or resubmission call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Supervisor {
    /// Starts sending the kept prompts to the ready UI, when one is owed and
    /// not paused: first what its `/queue` and `/history` know.
    pub(super) fn keep_replay(&mut self) {
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
    pub(super) fn keep_ask(&mut self, moment: Moment, asked: BTreeSet<String>) {
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

    /// What UI start `start` knows of `asked`: finished prompts leave the
    /// journal, a prompt with its strikes full is quarantined, and for a new UI
    /// the rest are sent again, in their order, in a task.
    pub(super) fn on_known(
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

    /// The resubmissions to UI start `start` ended: what each answer means for
    /// the journal; a lost one owes the replay again.
    pub(super) fn on_resubmitted(&mut self, start: u64, sent: Vec<(String, Sent)>) {
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
}

/// What the UI's `/queue` and `/history/{id}` say of `asked`.
async fn ui_knows(client: &Loopback, asked: &BTreeSet<String>) -> Result<UiKnows, String> {
    let queue = get_json(client, "/queue", "/queue").await?;
    let queued = comfy::queue_ids(&queue);
    let mut history = BTreeMap::new();
    for id in asked.iter().filter(|id| !queued.contains(*id)) {
        let path = format!("/history/{}", encode_segment(id));
        let v = get_json(client, &path, "/history").await?;
        if let Some(outcome) = comfy::history_outcome(id, &v) {
            history.insert(id.clone(), outcome);
        }
    }
    Ok(UiKnows { queued, history })
}

/// The JSON the UI answers a `GET path` with; an error names the endpoint as
/// `what` (without a prompt's id).
async fn get_json(client: &Loopback, path: &str, what: &str) -> Result<serde_json::Value, String> {
    let answer = client
        .get(path, CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !answer.is_success() {
        return Err(format!("{what}: HTTP {}", answer.status));
    }
    serde_json::from_slice(&answer.body).map_err(|e| format!("{what}: {e}"))
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
