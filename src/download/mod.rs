//! Models fetched at run time (config `{ url, sha256, … }` entries).
//!
//! Each distinct SHA-256 is one download into the content-addressed cache
//! `data.dir/.sd-webui-supervisor/downloads/<hex>`: streamed into `<hex>.part`
//! while being hashed, fsynced, and renamed only when the digest matches, so a
//! model folder never sees a half or wrong file (the layout links the finished
//! cache file like a store model). A `.part` is resumed with `Range`; after a
//! restart, and after each failed attempt, its prefix is re-hashed once from the
//! disk (SHA-256 state is not persisted), never fetched again.
//!
//! [`http_get`] sends requests (token only to the URL's own origin, redirects followed
//! by hand), [`fetch`] runs one attempt, in a helper process of its own
//! ([`worker`] starts it and reads its reports, [`helper`] is its side), [`writer`] appends and hashes on two
//! threads, [`cache`] owns the files, and
//! [`manager`] queues, limits, retries and reports.

pub mod cache;
pub mod command;
mod fetch;
pub mod helper;
mod http_get;
pub mod manager;
pub mod summary;
pub(crate) mod worker;
mod writer;

use std::fmt;

pub use manager::{Manager, ModelProgress, Outcome, Phase, Report};

/// Where a download stands, as status, D-Bus and metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Waiting for a free slot (`downloads.max_concurrent`).
    Queued,
    /// Bytes are arriving.
    Downloading,
    /// Waiting before another attempt after a transient failure.
    Retrying(Failure),
    /// All bytes are in; the digest is being compared and the file renamed.
    Verifying,
    /// In the cache and linkable.
    Done,
    /// Given up until the declaration changes or `retry-downloads`.
    Failed(Failure),
}

impl State {
    /// The state's name (`queued`, `downloading`, …) for machines.
    pub fn name(&self) -> &'static str {
        match self {
            State::Queued => "queued",
            State::Downloading => "downloading",
            State::Retrying(_) => "retrying",
            State::Verifying => "verifying",
            State::Done => "done",
            State::Failed(_) => "failed",
        }
    }

    /// The failure behind a `retrying` or `failed` state.
    pub fn reason(&self) -> Option<&Failure> {
        match self {
            State::Retrying(f) | State::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// No more work will happen without a new declaration or a retry.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Done | State::Failed(_))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason() {
            Some(reason) => write!(f, "{}: {reason}", self.name()),
            None => f.write_str(self.name()),
        }
    }
}

/// Why an attempt failed. Messages never carry a token or a URL's query string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The bytes did not hash to the declared digest; the file was deleted.
    #[error("sha256 mismatch (got {got})")]
    Sha256Mismatch {
        /// The digest of what was received, hex.
        got: String,
    },
    /// The server answered with an error status.
    #[error("HTTP {status} from {url}")]
    Http {
        /// The status code.
        status: u16,
        /// The URL, query redacted.
        url: String,
    },
    /// Writing hit ENOSPC; the `.part` is kept for resume.
    #[error("disk full (partial download kept for resume)")]
    DiskFull,
    /// The token file could not be read.
    #[error("token file {path}: {reason}")]
    TokenFile {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// Connection, TLS, timeout or a body cut short.
    #[error("network: {0}")]
    Network(String),
    /// A local file operation failed.
    #[error("{0}")]
    Io(String),
    /// More than the allowed redirects, or one without a usable `Location`.
    #[error("bad redirect: {0}")]
    Redirect(String),
}

impl Failure {
    /// Whether another attempt may help without anything changing. 401, 403,
    /// 404 and 410 do not (no retry storm against a server that said no), nor
    /// a wrong digest, a missing token file (credentials are fixed when the
    /// service starts) or a full disk (freeing space is the admin's move, then
    /// `retry-downloads` resumes the kept `.part`).
    pub fn is_transient(&self) -> bool {
        match self {
            Failure::Sha256Mismatch { .. }
            | Failure::Redirect(_)
            | Failure::DiskFull
            | Failure::TokenFile { .. } => false,
            Failure::Http { status, .. } => *status == 408 || *status == 429 || *status >= 500,
            Failure::Network(_) | Failure::Io(_) => true,
        }
    }
}

/// `scheme://host[:port]/path`, without user info, query or fragment: what
/// messages may show of a URL (signed CDN URLs carry their signature in the query).
pub fn redact(url: &url::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    // Only fails for URLs that cannot have user info, which then have none.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    let mut text = String::from(shown);
    if url.query().is_some() {
        text.push_str("?…");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_query_and_credentials() {
        let u = url::Url::parse("https://u:p@cdn.example/a/b.safetensors?X-Sig=secret#f").unwrap();
        assert_eq!(redact(&u), "https://cdn.example/a/b.safetensors?…");
    }
}
