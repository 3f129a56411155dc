//! The journal file: `<data.dir>/.sd-webui-supervisor/queue.jsonl`, one
//! [`Record`] a line, appended and fsync'd, rewritten (compacted) atomically
//! when it has grown well past what it holds. The file is hostile like any
//! input: a line that does not parse (a torn last write, an edit) is skipped
//! with a warning naming the file and the line, never a crash.

use std::fs::OpenOptions;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::{Book, MAX_BODY, Record};

/// The file's name in the supervisor's state folder.
pub const FILE_NAME: &str = "queue.jsonl";
/// Longest line read: a kept body with room for its escaping and fields.
const MAX_LINE: usize = 2 * MAX_BODY + 64 * 1024;
/// Lines beyond what the book holds before a compaction is due.
const SLACK: usize = 256;

/// Why the journal file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The file system said no.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A record could not be written as JSON (never expected).
    #[error("{path}: cannot encode a record: {source}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Where the journal of the data dir `data_dir` lives.
pub fn path(data_dir: &Path) -> PathBuf {
    crate::layout::manifest::state_dir(data_dir).join(FILE_NAME)
}

/// What [`load`] found.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The records' state.
    pub book: Book,
    /// Lines in the file (for when to compact).
    pub lines: usize,
    /// Whether the file must be rewritten before anything is appended: a
    /// line was skipped, or the last one is torn (an append would glue onto it).
    pub rewrite: bool,
}

/// Reads the journal into a book that remembers `history` finished prompts;
/// a missing file is an empty one.
pub fn load(path: &Path, history: usize) -> Result<Loaded, JournalError> {
    let io_err = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Loaded {
                book: Book::with_history(history),
                ..Loaded::default()
            });
        }
        Err(e) => return Err(io_err(e)),
    };
    let mut reader = BufReader::new(file);
    let mut loaded = Loaded {
        book: Book::with_history(history),
        ..Loaded::default()
    };
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(u64::try_from(MAX_LINE).unwrap_or(u64::MAX))
            .read_until(b'\n', &mut line)
            .map_err(io_err)?;
        if read == 0 {
            break;
        }
        number = number.saturating_add(1);
        loaded.lines = number;
        let complete = line.last() == Some(&b'\n');
        if !complete {
            loaded.rewrite = true;
            if read >= MAX_LINE {
                tracing::warn!(file = %path.display(), line = number, "queue journal: line too long, skipped");
                skip_rest_of_line(&mut reader).map_err(io_err)?;
                continue;
            }
        }
        match serde_json::from_slice::<Record>(&line) {
            Ok(record) => {
                loaded.book.apply(record);
            }
            Err(e) => {
                loaded.rewrite = true;
                tracing::warn!(file = %path.display(), line = number, error = %e, "queue journal: unreadable line skipped");
            }
        }
    }
    Ok(loaded)
}

/// Reads up to and including the next newline, keeping nothing.
fn skip_rest_of_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            reader.consume(i.saturating_add(1));
            return Ok(());
        }
        let n = buf.len();
        reader.consume(n);
    }
}

fn encode(path: &Path, records: &[Record]) -> Result<Vec<u8>, JournalError> {
    let mut out = Vec::new();
    for r in records {
        serde_json::to_writer(&mut out, r).map_err(|source| JournalError::Encode {
            path: path.to_owned(),
            source,
        })?;
        out.push(b'\n');
    }
    Ok(out)
}

/// Appends `records` in one write and fsyncs them (the folder is made if it
/// is not there yet).
pub fn append(path: &Path, records: &[Record]) -> Result<(), JournalError> {
    let bytes = encode(path, records)?;
    let io_err = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    let fresh = !path.exists();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err)?;
    file.write_all(&bytes).map_err(io_err)?;
    file.sync_data().map_err(io_err)?;
    if fresh && let Some(dir) = path.parent() {
        crate::layout::fsio::sync_dir(dir).map_err(io_err)?;
    }
    Ok(())
}

/// Replaces the file with `records` atomically (temporary file, fsync, rename,
/// fsync of the folder): a crash leaves the old file or the new one.
pub fn rewrite(path: &Path, records: &[Record]) -> Result<(), JournalError> {
    let bytes = encode(path, records)?;
    let io_err = |source| JournalError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    crate::layout::fsio::write_atomic(path, &bytes, Some(0o600)).map_err(io_err)
}

/// Whether a file of `lines` lines holding `book` is due for a compaction.
pub fn wants_compaction(lines: usize, book: &Book) -> bool {
    let held = book
        .kept()
        .len()
        .saturating_add(book.history().len())
        .saturating_add(1);
    lines > held.saturating_mul(2).saturating_add(SLACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Outcome;

    fn kept(id: &str) -> crate::journal::Kept {
        serde_json::from_value(serde_json::json!({
            "prompt_id": id, "body": {"prompt": {"1": {"class_type": "SaveImage"}}}, "bytes": 40
        }))
        .expect("a kept prompt")
    }

    #[test]
    fn appended_records_load_back_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state").join(FILE_NAME);
        append(
            &p,
            &[Record::Accepted(kept("a")), Record::Accepted(kept("b"))],
        )
        .expect("append");
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(b"{not json\n\xff\xfe\n").expect("garbage");
        append(
            &p,
            &[Record::Finished {
                prompt_id: "a".into(),
                outcome: Outcome::Succeeded,
                at_unix: 5,
            }],
        )
        .expect("append");
        f.write_all(b"{\"op\":\"strike\",\"prompt_id\":\"b\"")
            .expect("torn");
        let loaded = load(&p, 200).expect("load");
        assert!(loaded.rewrite);
        assert_eq!(loaded.lines, 6);
        let ids: Vec<_> = loaded.book.kept().iter().map(|k| &k.prompt_id).collect();
        assert_eq!(ids, ["b"]);
        assert_eq!(
            loaded.book.kept()[0].strikes,
            0,
            "the torn line is not applied"
        );
        assert_eq!(loaded.book.history().len(), 1);

        rewrite(&p, &loaded.book.records()).expect("rewrite");
        let again = load(&p, 200).expect("load again");
        assert!(!again.rewrite);
        assert_eq!(again.book, loaded.book);
    }

    #[test]
    fn a_missing_file_is_an_empty_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = load(&dir.path().join("none"), 200).expect("load");
        assert!(loaded.book.kept().is_empty());
        assert!(!loaded.rewrite);
    }
}
