//! What reaches the journal from outside the core: a prompt the front door
//! saw the UI accept (`CoreCommand::QueueAccepted`), and the `queue` command's
//! pause, resume, list and release (`CoreCommand::Queue`), answered with the
//! list.

use std::time::Instant;

use tokio::sync::oneshot;

use crate::journal::{Book, Kept, Record};
use crate::supervisor::Supervisor;
use crate::supervisor::protocol::{KeptState, ListedPrompt, QueueList, QueueOp, QueueRefusal};

use super::{QueueKeep, Replay};

impl QueueKeep {
    /// The kept prompts and the history, as `queue list` shows them.
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

    /// One kept prompt, with what it is doing now.
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
}

impl Supervisor {
    /// The front door saw the UI accept `kept`.
    pub(in crate::supervisor) fn on_queue_accepted(&mut self, kept: Kept) {
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
    pub(in crate::supervisor) fn on_queue_command(
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
}
