//! The stand-in UI's record: one JSON object a line (`start`, `listening`,
//! `request`, `signal`, `job_start`, `exit`, …), each with the stand-in's `pid`
//! and `t` (its `time.time()`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::wait::{wait_for, wait_for_with};

/// One line of the record.
#[derive(Debug, Clone)]
pub struct Rec {
    pub event: String,
    pub pid: u32,
    pub t: f64,
    pub v: Value,
}

impl Rec {
    /// `request`: the path; else "".
    pub fn path(&self) -> &str {
        self.v["path"].as_str().unwrap_or("")
    }
    pub fn method(&self) -> &str {
        self.v["method"].as_str().unwrap_or("")
    }
    pub fn is_request(&self, method: &str, path: &str) -> bool {
        self.event == "request" && self.method() == method && self.path() == path
    }
    /// `start`: the argv.
    pub fn argv(&self) -> Vec<String> {
        self.v["argv"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// `job_start`/`job_end`: the job id.
    pub fn id(&self) -> &str {
        self.v["id"].as_str().unwrap_or("")
    }
    pub fn completed(&self) -> bool {
        self.v["completed"].as_bool().unwrap_or(false)
    }
    pub fn signal(&self) -> &str {
        self.v["signal"].as_str().unwrap_or("")
    }
}

/// Every complete line of the record (a missing file is an empty record).
pub fn read_record(path: &Path) -> Vec<Rec> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(parse_line)
        .collect()
}

/// One record line, if it is one.
fn parse_line(line: &str) -> Option<Rec> {
    let v: Value = serde_json::from_str(line).ok()?;
    Some(Rec {
        event: v["event"].as_str().unwrap_or("").to_string(),
        pid: v["pid"].as_u64().unwrap_or(0) as u32,
        t: v["t"].as_f64().unwrap_or(0.0),
        v,
    })
}

/// Reads a growing record incrementally (for tight loops over long runs).
pub struct RecordTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl RecordTail {
    pub fn new(path: &Path) -> RecordTail {
        RecordTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call.
    pub fn poll(&mut self) -> Vec<Rec> {
        use std::io::{Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return Vec::new();
        };
        let mut text = String::new();
        if f.seek(SeekFrom::Start(self.offset)).is_err() || f.read_to_string(&mut text).is_err() {
            return Vec::new();
        }
        self.offset += text.len() as u64;
        self.partial.push_str(&text);
        let done = self.partial.rfind('\n').map_or(0, |i| i + 1);
        let lines: String = self.partial.drain(..done).collect();
        lines.lines().filter_map(parse_line).collect()
    }
}

/// Waits for the `n`-th (1-based) `event` record in the record file at `path`.
pub fn wait_record(path: &Path, event: &str, n: usize, timeout: Duration) -> Rec {
    wait_for(&format!("{event} record #{n}"), timeout, || {
        events(&read_record(path), event)
            .get(n.saturating_sub(1))
            .map(|r| (*r).clone())
    })
}

/// The records of one kind.
pub fn events<'a>(recs: &'a [Rec], event: &str) -> Vec<&'a Rec> {
    recs.iter().filter(|r| r.event == event).collect()
}

/// The stand-in's JSON-lines record file.
#[derive(Clone)]
pub struct Record {
    path: PathBuf,
}

impl Record {
    /// The record at `path` (it may not exist yet).
    pub fn new(path: PathBuf) -> Record {
        Record { path }
    }

    /// Every complete event so far, as JSON.
    pub fn events(&self) -> Vec<Value> {
        read_record(&self.path).into_iter().map(|r| r.v).collect()
    }

    /// Events named `event`.
    pub fn of(&self, event: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == event)
            .collect()
    }

    /// `start` events: one per launch of the stand-in.
    pub fn starts(&self) -> Vec<Value> {
        self.of("start")
    }

    /// Waits until `pred` holds for some event and returns the first such event.
    pub fn wait_event(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let seen = || {
            let events = self.events();
            let tail = &events[events.len().saturating_sub(30)..];
            format!("{what}; record so far (last 30): {tail:?}")
        };
        wait_for_with(seen, timeout, || self.events().into_iter().find(&pred))
    }

    /// Waits for the `n`th (1-based) `start` event.
    pub fn wait_starts(&self, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("{n} stand-in start(s)"), timeout, || {
            let s = self.starts();
            (s.len() >= n).then_some(s)
        })
    }
}

/// An event's `t` (unix seconds).
pub fn t(event: &Value) -> f64 {
    event["t"].as_f64().expect("record event has t")
}

/// An event's `pid`.
pub fn pid(event: &Value) -> i32 {
    event["pid"].as_i64().expect("record event has pid") as i32
}
