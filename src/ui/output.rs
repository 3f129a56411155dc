//! The UI's stdout and stderr, relayed through the supervisor.
//!
//! The UI writes into pipes, not straight into the journal, for two reasons: Forge
//! and A1111 print their whole argv at start ("Launching Web UI with arguments: …",
//! ui-apis.md §7.1), so every secret the supervisor knows (the API password, tokens)
//! must be redacted before a line reaches a log; and when the UI exits at start the
//! status should say why in the UI's own words, so the last lines are kept in a small
//! ring buffer ([`OutputTail`]). Each relayed line is written to the same stream the
//! UI used, prefixed `ui[PID]: ` so the journal still tells the UI's lines apart.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cuda_faults::{self, CudaFault};

/// Lines kept for [`OutputTail::summary`].
const TAIL_LINES: usize = 40;
/// CUDA faults kept until the core takes them (a traceback repeats its line).
const MAX_FAULTS: usize = 8;
/// A line longer than this is relayed in pieces (progress bars redraw with `\r`).
const MAX_LINE: usize = 16 * 1024;
/// What a secret becomes in relayed output.
const MASK: &str = "***";

/// Secrets to mask in the UI's output. Empty strings are ignored.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} secrets)", self.secrets.len())
    }
}

impl Redactor {
    /// Masks each of `secrets` (longest first, so a secret that contains another
    /// is masked whole).
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Redactor {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with every secret replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), MASK);
            }
        }
        out
    }

    /// Like [`Redactor::redact`], on bytes that may not be valid UTF-8 (yet).
    fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for s in &self.secrets {
            let needle = s.as_bytes();
            let mut masked = Vec::with_capacity(out.len());
            let mut i = 0;
            while i < out.len() {
                if out[i..].starts_with(needle) {
                    masked.extend_from_slice(MASK.as_bytes());
                    i += needle.len();
                } else {
                    masked.push(out[i]);
                    i += 1;
                }
            }
            out = masked;
        }
        out
    }

    /// Length of the longest end of `bytes` that is the beginning of a secret.
    fn partial_suffix(&self, bytes: &[u8]) -> usize {
        self.secrets
            .iter()
            .filter_map(|s| {
                let s = s.as_bytes();
                (1..s.len()).rev().find(|&k| bytes.ends_with(&s[..k]))
            })
            .max()
            .unwrap_or(0)
    }

    /// Bytes a split line must hold back so no secret is cut in two.
    fn overlap(&self) -> usize {
        self.secrets
            .first()
            .map_or(0, |s| s.len().saturating_sub(1))
    }
}

/// The last lines the UI printed (both streams, redacted), and how many relays
/// still read (so a crash reason is taken only once the UI's last words are in).
#[derive(Debug, Clone)]
pub struct OutputTail {
    lines: Arc<Mutex<VecDeque<(Stream, String)>>>,
    open: Arc<tokio::sync::watch::Sender<u32>>,
    /// CUDA faults seen and not yet taken by the core (the newest few).
    faults: Arc<Mutex<VecDeque<CudaFault>>>,
}

impl Default for OutputTail {
    fn default() -> Self {
        OutputTail {
            lines: Arc::default(),
            open: Arc::new(tokio::sync::watch::channel(0).0),
            faults: Arc::default(),
        }
    }
}

impl OutputTail {
    fn push(&self, stream: Stream, line: String) {
        if let Some(fault) = cuda_faults::classify(&line)
            && let Ok(mut faults) = self.faults.lock()
        {
            if faults.len() == MAX_FAULTS {
                faults.pop_front();
            }
            faults.push_back(fault);
        }
        if let Ok(mut lines) = self.lines.lock() {
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back((stream, line));
        }
    }

    /// The CUDA faults printed since the last call, oldest first (redacted).
    pub fn take_faults(&self) -> Vec<CudaFault> {
        self.faults
            .lock()
            .map(|mut f| f.drain(..).collect())
            .unwrap_or_default()
    }

    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().map(|(_, t)| t.clone()).collect())
            .unwrap_or_default()
    }

    /// Resolves once every relay reached end of file (the UI's processes are gone).
    pub async fn drained(&self) {
        let mut rx = self.open.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// A short "why" for a status line: the last Python exception line if there is
    /// one (`ImportError: Bad git executable.`: the lines after it are usually help
    /// text), else the last non-empty line of stderr, else of stdout; at most 200
    /// characters.
    pub fn summary(&self) -> Option<String> {
        let lines: Vec<(Stream, String)> = self
            .lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default();
        let last = |want: Stream| {
            lines
                .iter()
                .rev()
                .find(|(s, l)| *s == want && !l.trim().is_empty())
        };
        let pick = lines
            .iter()
            .rev()
            .find(|(_, l)| is_exception_line(l))
            .or_else(|| last(Stream::Stderr))
            .or_else(|| last(Stream::Stdout))?;
        Some(pick.1.trim().chars().take(200).collect())
    }
}

/// `ImportError: …`, `RuntimeError: …`, `torch.cuda.OutOfMemoryError: …`.
fn is_exception_line(line: &str) -> bool {
    let Some((head, _)) = line.split_once(':') else {
        return false;
    };
    !head.is_empty()
        && !head.starts_with(' ')
        && head
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
        && (head.ends_with("Error") || head.ends_with("Exception") || head.ends_with("Exit"))
}

/// Which of the supervisor's streams a relay writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The UI's stdout → the supervisor's stdout.
    Stdout,
    /// The UI's stderr → the supervisor's stderr.
    Stderr,
}

/// Relays `input` line by line to the supervisor's `stream` until end of file,
/// redacting and tagging each line and keeping it in `tail`. Runs as a task; ends
/// when every process of the UI closed its end of the pipe.
pub fn spawn_relay<R>(input: R, stream: Stream, pid: u32, redactor: Redactor, tail: OutputTail)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tail.open.send_modify(|n| *n += 1);
    tokio::spawn(async move {
        match stream {
            Stream::Stdout => {
                relay(input, tokio::io::stdout(), stream, pid, &redactor, &tail).await
            }
            Stream::Stderr => {
                relay(input, tokio::io::stderr(), stream, pid, &redactor, &tail).await
            }
        }
        tail.open.send_modify(|n| *n = n.saturating_sub(1));
    });
}

/// The relay loop, generic over its ends for tests.
pub async fn relay<R, W>(
    mut input: R,
    mut out: W,
    stream: Stream,
    pid: u32,
    redactor: &Redactor,
    tail: &OutputTail,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 8192];
    let hold = redactor.overlap();
    loop {
        let n = match input.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(at) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=at).collect();
            emit(
                &line[..line.len() - 1],
                &mut out,
                stream,
                pid,
                redactor,
                tail,
            )
            .await;
        }
        if pending.len() > MAX_LINE + hold {
            // Mask the complete secrets first; what may still become a secret is
            // a suffix that begins one, and only that is kept back.
            pending = redactor.redact_bytes(&pending);
            let cut = pending.len() - redactor.partial_suffix(&pending);
            let piece: Vec<u8> = pending.drain(..cut).collect();
            emit(&piece, &mut out, stream, pid, redactor, tail).await;
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut out, stream, pid, redactor, tail).await;
    }
    let _ = out.flush().await;
}

async fn emit<W: AsyncWrite + Unpin>(
    raw: &[u8],
    out: &mut W,
    stream: Stream,
    pid: u32,
    redactor: &Redactor,
    tail: &OutputTail,
) {
    let text = String::from_utf8_lossy(raw);
    let text = redactor.redact(text.trim_end_matches('\r'));
    let _ = out
        .write_all(format!("ui[{pid}]: {text}\n").as_bytes())
        .await;
    tail.push(stream, text);
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8], secrets: &[&str]) -> (String, OutputTail) {
        let redactor = Redactor::new(secrets.iter().map(|s| s.to_string()));
        let tail = OutputTail::default();
        let mut out = Vec::new();
        relay(input, &mut out, Stream::Stdout, 7, &redactor, &tail).await;
        (String::from_utf8(out).unwrap(), tail)
    }

    #[tokio::test]
    async fn lines_are_tagged_redacted_and_kept() {
        let (out, tail) = run(
            b"Launching Web UI with arguments: --api-auth sup:pw123\nno newline at the end",
            &["pw123"],
        )
        .await;
        assert_eq!(
            out,
            "ui[7]: Launching Web UI with arguments: --api-auth sup:***\nui[7]: no newline at the end\n"
        );
        assert_eq!(tail.lines().len(), 2);
        assert!(!tail.lines().concat().contains("pw123"));
    }

    #[tokio::test]
    async fn a_secret_across_a_split_of_a_long_line_is_still_masked() {
        let mut input = vec![b'x'; MAX_LINE - 2];
        input.extend_from_slice(b"SECRETVALUE and more");
        let (out, _) = run(&input, &["SECRETVALUE"]).await;
        assert!(
            !out.contains("SECRETVALUE") && out.contains("***"),
            "{}",
            &out[out.len().saturating_sub(80)..]
        );
    }

    #[test]
    fn the_summary_prefers_the_exception_line() {
        let tail = OutputTail::default();
        for l in [
            "Traceback (most recent call last):",
            "    raise ImportError(err)",
            "ImportError: Bad git executable.",
            "Example:",
            "    export GIT_PYTHON_REFRESH=quiet",
        ] {
            tail.push(Stream::Stderr, l.to_string());
        }
        assert_eq!(
            tail.summary().as_deref(),
            Some("ImportError: Bad git executable.")
        );
        let plain = OutputTail::default();
        plain.push(Stream::Stderr, "stand-in: exiting with code 1".into());
        plain.push(
            Stream::Stdout,
            "Launching Web UI with arguments: --api".into(),
        );
        plain.push(Stream::Stderr, "   ".into());
        assert_eq!(
            plain.summary().as_deref(),
            Some("stand-in: exiting with code 1")
        );
        assert_eq!(OutputTail::default().summary(), None);
    }
}
