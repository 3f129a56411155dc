//! `front.auth_file`: the credentials every request through the front door must
//! carry, and the per-address limit on failed attempts.
//!
//! The file holds one credential a line: `user:password` is accepted as HTTP
//! Basic, a line without a colon as `Authorization: Bearer <line>`; blank lines
//! and lines starting with `#` are skipped. It is read once, at start, and its
//! contents never reach a log, the status or an error message (errors name the
//! file and the line number only).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use subtle::ConstantTimeEq;

/// Wrong credentials an address may send within [`WINDOW`] before it is
/// answered 429 without a check (a request without any is no attempt).
pub const MAX_FAILURES: u32 = 10;
/// The window failed attempts are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most; past that the oldest windows are forgotten.
const MAX_ADDRESSES: usize = 4096;

/// Why the credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Reading it failed.
    #[error("front.auth_file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It holds no credential.
    #[error("front.auth_file {}: holds no credential (write user:password or a token, one a line)", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line is not a credential (its text is not repeated here).
    #[error("front.auth_file {}: line {line}: {why}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
}

/// The accepted `Authorization` header values, built once.
#[derive(Clone)]
pub struct Credentials {
    accepted: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} accepted, redacted)", self.accepted.len())
    }
}

impl Credentials {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Credentials, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Credentials::parse(path, &text)
    }

    /// Parses the file's text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Credentials, AuthError> {
        let mut accepted = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| AuthError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                why,
            };
            if line.chars().any(|c| c.is_control()) {
                return Err(bad("contains a control character"));
            }
            let header = match line.split_once(':') {
                Some(("", _)) => return Err(bad("the user name before ':' is empty")),
                Some((_, "")) => return Err(bad("the password after ':' is empty")),
                Some(_) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(line)
                ),
                None if line.contains(char::is_whitespace) => {
                    return Err(bad("a token must not contain spaces"));
                }
                None => format!("Bearer {line}"),
            };
            accepted.push(header.into_bytes());
        }
        if accepted.is_empty() {
            return Err(AuthError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Credentials { accepted })
    }

    /// Whether `header` (an `Authorization` value) is one of the credentials;
    /// compared in constant time, the scheme's case ignored.
    pub fn accepts(&self, header: &[u8]) -> bool {
        let Some(space) = header.iter().position(|b| *b == b' ') else {
            return false;
        };
        let (scheme, rest) = header.split_at(space);
        let rest = trim_spaces(rest);
        let mut found = subtle::Choice::from(0);
        for want in &self.accepted {
            let (want_scheme, want_rest) =
                want.split_at(want.iter().position(|b| *b == b' ').unwrap_or(0));
            let scheme_ok = scheme.eq_ignore_ascii_case(want_scheme);
            let want_rest = trim_spaces(want_rest);
            if scheme_ok && want_rest.len() == rest.len() {
                found |= want_rest.ct_eq(rest);
            }
        }
        found.into()
    }
}

fn trim_spaces(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| *c != b' ').unwrap_or(b.len());
    &b[start..]
}

/// Failed attempts per address in the current window.
#[derive(Debug, Default)]
pub struct Limiter {
    seen: HashMap<IpAddr, (Instant, u32)>,
}

impl Limiter {
    /// Whether `addr` has used up its failed attempts.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> bool {
        self.seen.get(&addr).is_some_and(|(since, n)| {
            now.saturating_duration_since(*since) < WINDOW && *n >= MAX_FAILURES
        })
    }

    /// Counts a failed attempt of `addr`.
    pub fn failed(&mut self, addr: IpAddr, now: Instant) {
        if self.seen.len() >= MAX_ADDRESSES && !self.seen.contains_key(&addr) {
            self.seen
                .retain(|_, (since, _)| now.saturating_duration_since(*since) < WINDOW);
            if self.seen.len() >= MAX_ADDRESSES {
                // Still full of live windows: forget the oldest one.
                if let Some(oldest) = self
                    .seen
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(a, _)| *a)
                {
                    self.seen.remove(&oldest);
                }
            }
        }
        let entry = self.seen.entry(addr).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(text: &str) -> Result<Credentials, AuthError> {
        Credentials::parse(Path::new("/run/keys/front"), text)
    }

    #[test]
    fn basic_and_bearer_lines_are_accepted_and_nothing_else() {
        let c = creds("# comment\nalice:s3cret:with:colons\n\ntok-123\n").unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("alice:s3cret:with:colons")
        );
        assert!(c.accepts(basic.as_bytes()));
        assert!(c.accepts(b"basic  YWxpY2U6czNjcmV0OndpdGg6Y29sb25z"));
        assert!(c.accepts(b"Bearer tok-123"));
        assert!(!c.accepts(b"Bearer tok-12"));
        assert!(!c.accepts(b"Bearer tok-1234"));
        assert!(!c.accepts(b"Basic tok-123"));
        assert!(!c.accepts(b"tok-123"));
        assert!(!c.accepts(b""));
    }

    #[test]
    fn bad_files_name_the_line_but_never_the_secret() {
        let e = creds("alice:\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "front.auth_file /run/keys/front: line 1: the password after ':' is empty"
        );
        let e = creds("ok\nhas space secret\n").unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("secret"), "{e}");
        assert!(
            creds("\n# only a comment\n")
                .unwrap_err()
                .to_string()
                .contains("no credential")
        );
        assert!(!format!("{:?}", creds("bob:pw").unwrap()).contains("pw"));
    }

    #[test]
    fn an_address_is_blocked_after_its_failures_for_one_window() {
        let mut l = Limiter::default();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        let b: IpAddr = "192.0.2.8".parse().unwrap();
        let t = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert!(!l.blocked(a, t));
            l.failed(a, t);
        }
        assert!(l.blocked(a, t));
        assert!(!l.blocked(b, t));
        assert!(!l.blocked(a, t + WINDOW));
        l.failed(a, t + WINDOW);
        assert!(!l.blocked(a, t + WINDOW));
    }
}
