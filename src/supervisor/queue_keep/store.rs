//! The journal file as the core keeps it: read at start in a task (what the
//! door journals meanwhile waits in the outbox and joins the book once it is
//! read), every record applied to the book at once and written in order, one
//! write at a time, the whole file rewritten after a failed write or a torn
//! line, or when it has grown well past what it holds.

use std::path::PathBuf;

use crate::journal::file::{self, JournalError, Loaded};
use crate::journal::{Book, Record};
use crate::supervisor::Supervisor;
use crate::supervisor::work::Event;

use super::KeepEvent;

impl Supervisor {
    /// At start: read the journal in a task (new submissions wait meanwhile).
    pub(in crate::supervisor) fn keep_load(&mut self) {
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

    /// The journal file was read (or could not be: an empty journal, written
    /// whole): what arrived meanwhile joins it, then writes and the replay go.
    pub(super) fn on_loaded(&mut self, result: Result<Loaded, JournalError>) {
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

    /// A write ended: the next one goes; after a failure it rewrites the file.
    pub(super) fn on_written(&mut self, result: Result<(), JournalError>, lines: usize) {
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

    /// Applies `record` at once and writes it in order (one write at a time).
    pub(super) fn keep_write(&mut self, record: Record) {
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
