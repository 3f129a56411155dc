//! Where the daemon's log goes, and in what form: the journal gets native records
//! (priority per level, structured fields), a terminal gets colour, anything else
//! (a file, a pipe) gets plain text. Chosen once at start from what stderr is.
//!
//! Under systemd, `JOURNAL_STREAM` names the `device:inode` of the stream systemd
//! connected to stdout/stderr; it is inherited by children, so it counts only when
//! stderr is still that stream (not when a test or a shell redirected it). Native
//! records make `journalctl -p warning -u …` and field matches such as
//! `journalctl UI_PID=…` or `RELOAD_RESULT=rejected` work: every field of a log
//! call becomes a journal field of that name in capitals. The UI's own output is
//! not a log record: it keeps going to the inherited stdout/stderr, so the journal
//! keeps it as the unit's output stream, apart from these records.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The identifier the journal records carry (`SYSLOG_IDENTIFIER`, `journalctl -t`).
pub const IDENTIFIER: &str = "sd-webui-supervisor";

/// The form the log takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Native journald records (stderr is the journal stream systemd set up).
    Journal,
    /// Text with colours (stderr is a terminal and `NO_COLOR` is not set).
    Terminal,
    /// Text without escapes, with timestamps (a file, a pipe, a dumb reader).
    Plain,
}

/// What stderr is, as far as choosing a [`Sink`] goes.
#[derive(Debug, Clone, Default)]
pub struct Stderr {
    /// `JOURNAL_STREAM` as set in the environment.
    pub journal_stream: Option<String>,
    /// stderr's `(st_dev, st_ino)`, when fstat works.
    pub dev_ino: Option<(u64, u64)>,
    /// Whether stderr is a terminal.
    pub terminal: bool,
    /// Whether `NO_COLOR` is set to anything non-empty (no-color.org).
    pub no_color: bool,
}

impl Stderr {
    /// This process's stderr and environment.
    pub fn current() -> Stderr {
        let err = std::io::stderr();
        let dev_ino = nix::sys::stat::fstat(err.as_fd())
            .ok()
            .map(|st| (st.st_dev, st.st_ino));
        Stderr {
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            dev_ino,
            terminal: err.is_terminal(),
            no_color: std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()),
        }
    }

    /// The sink for this stderr.
    pub fn sink(&self) -> Sink {
        let is_journal = self
            .journal_stream
            .as_deref()
            .and_then(parse_journal_stream)
            .is_some_and(|pair| Some(pair) == self.dev_ino);
        if is_journal {
            Sink::Journal
        } else if self.terminal && !self.no_color {
            Sink::Terminal
        } else {
            Sink::Plain
        }
    }
}

/// `"<device>:<inode>"` (both decimal), as systemd writes `JOURNAL_STREAM`.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.trim().parse().ok()?, ino.trim().parse().ok()?))
}

/// The `RUST_LOG` filter: a default level and `target=level` pairs, e.g. `debug`
/// or `info,sd_webui_supervisor::download=debug` (default `info`). Targets only,
/// no span or field patterns: those need a regex engine the daemon has no other
/// use for, and it would sit in memory for the life of the process.
fn filter() -> Targets {
    let default = || Targets::new().with_default(Level::INFO);
    match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => spec.parse().unwrap_or_else(|e| {
            eprintln!(
                "{IDENTIFIER}: RUST_LOG={spec:?} is not a list of LEVEL or TARGET=LEVEL ({e}); logging at info"
            );
            default()
        }),
        _ => default(),
    }
}

/// Installs the global subscriber for the daemon: `RUST_LOG` filters (see
/// [`filter`]), the form follows [`Stderr::current`]. If the journal socket cannot
/// be opened, falls back to plain text on stderr, which systemd still captures.
pub fn init() {
    let sink = Stderr::current().sink();
    if sink == Sink::Journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(IDENTIFIER.to_owned());
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return;
            }
            Err(e) => eprintln!("{IDENTIFIER}: cannot log to the journal ({e}); logging to stderr"),
        }
    }
    let text = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(sink == Sink::Terminal);
    let registry = tracing_subscriber::registry().with(filter());
    if sink == Sink::Journal {
        // The journal stamps each line itself.
        registry.with(text.without_time()).init();
    } else {
        registry.with(text).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stderr(journal: Option<&str>, dev_ino: Option<(u64, u64)>, terminal: bool) -> Stderr {
        Stderr {
            journal_stream: journal.map(String::from),
            dev_ino,
            terminal,
            no_color: false,
        }
    }

    #[test]
    fn the_journal_only_when_stderr_is_its_stream() {
        assert_eq!(
            stderr(Some("8:1234"), Some((8, 1234)), false).sink(),
            Sink::Journal
        );
        // Inherited from a service, but stderr was redirected to a file.
        assert_eq!(
            stderr(Some("8:1234"), Some((8, 99)), false).sink(),
            Sink::Plain
        );
        assert_eq!(stderr(Some("8:1234"), None, true).sink(), Sink::Terminal);
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(stderr(None, Some((1, 2)), true).sink(), Sink::Terminal);
        assert_eq!(stderr(None, Some((1, 2)), false).sink(), Sink::Plain);
        let mut s = stderr(None, Some((1, 2)), true);
        s.no_color = true;
        assert_eq!(s.sink(), Sink::Plain);
    }

    #[test]
    fn journal_stream_values() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_journal_stream("8:"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
        assert_eq!(parse_journal_stream("81234"), None);
    }
}
