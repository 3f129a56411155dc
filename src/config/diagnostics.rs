//! Config problems and how they are shown: `FILE:LINE:COL: key.path: message`.
//!
//! Problems are collected with a *key path*; only when the error is built is the
//! path looked up in the parsed document to find its line and column. That keeps
//! validation code free of spans.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::DeValue;

use super::raw::Doc;

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A table key.
    Key(String),
    /// An array element.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Seg {
        Seg::Key(s.to_string())
    }
}
impl From<&String> for Seg {
    fn from(s: &String) -> Seg {
        Seg::Key(s.clone())
    }
}
impl From<usize> for Seg {
    fn from(i: usize) -> Seg {
        Seg::Index(i)
    }
}

/// What a problem points at, once its path is found in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum At {
    /// The key itself (unknown keys, bad names).
    Key,
    /// The key's value (bad values; a missing key points at its table).
    Value,
    /// A byte range known from the parser.
    Span(Range<usize>),
}

/// A problem found while loading, before it is given a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    path: Vec<Seg>,
    at: At,
    message: String,
}

impl Problem {
    /// A problem at a key path.
    pub fn new<S: Into<Seg>>(path: impl IntoIterator<Item = S>, at: At, message: String) -> Self {
        let path = path.into_iter().map(Into::into).collect();
        Problem { path, at, message }
    }

    /// A TOML syntax error.
    pub(super) fn syntax(message: &str, span: Option<Range<usize>>) -> Self {
        Problem {
            path: Vec::new(),
            at: At::Span(span.unwrap_or(0..0)),
            message: first_line(message),
        }
    }

    /// A type error from serde inside `section`; the key is found from the span.
    pub(super) fn serde(section: &str, message: &str, span: Option<Range<usize>>) -> Self {
        Problem {
            path: vec![section.into()],
            at: At::Span(span.unwrap_or(0..0)),
            message: first_line(message),
        }
    }

    /// The message without position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

fn first_line(message: &str) -> String {
    let line = message.trim().lines().next().unwrap_or_default();
    // serde names Rust types; the file speaks TOML.
    line.replace("expected i64", "expected an integer")
        .replace("expected a boolean", "expected true or false")
        .replace("expected a sequence", "expected an array")
        .replace("expected a map", "expected a table")
        .replace("invalid type: sequence", "invalid type: array")
        .replace("invalid type: map", "invalid type: table")
}

/// A located problem, as printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted key path (`models.loras."a.safetensors"`), or `(syntax)`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why a config file was rejected: every problem found, each with its position.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    file: PathBuf,
    read_error: Option<String>,
    diagnostics: Vec<Diagnostic>,
}

impl ConfigError {
    pub(super) fn read(path: &Path, err: std::io::Error) -> Self {
        ConfigError {
            file: path.to_path_buf(),
            read_error: Some(err.to_string()),
            diagnostics: Vec::new(),
        }
    }

    pub(super) fn new(
        path: &Path,
        text: &str,
        doc: Option<&Doc<'_>>,
        problems: Vec<Problem>,
    ) -> Self {
        let mut found: Vec<(usize, String, String)> =
            problems.into_iter().map(|p| resolve(doc, p)).collect();
        // One pass over the text for all positions: a file with 100,000 problems
        // is located in linear time, not 100,000 scans from its start.
        found.sort_by_key(|(offset, _, _)| *offset);
        let mut cursor = Cursor::new(text);
        let diagnostics = found
            .into_iter()
            .map(|(offset, key, message)| {
                let (line, column) = cursor.advance_to(offset);
                Diagnostic {
                    line,
                    column,
                    key,
                    message,
                }
            })
            .collect();
        ConfigError {
            file: path.to_path_buf(),
            read_error: None,
            diagnostics,
        }
    }

    /// Bytes that are not UTF-8: one diagnostic at the first bad byte, so the
    /// file is rejected as a whole, with where to look, instead of read lossily.
    pub(super) fn encoding(path: &Path, bytes: &[u8], err: std::str::Utf8Error) -> Self {
        let valid = err.valid_up_to();
        let text = std::str::from_utf8(bytes.get(..valid).unwrap_or_default()).unwrap_or_default();
        let (line, column) = Cursor::new(text).advance_to(valid);
        let byte = bytes.get(valid).copied().unwrap_or_default();
        ConfigError {
            file: path.to_path_buf(),
            read_error: None,
            diagnostics: vec![Diagnostic {
                line,
                column,
                key: "(encoding)".to_string(),
                message: format!("invalid UTF-8 (byte {byte:#04x}); the config file must be UTF-8"),
            }],
        }
    }

    /// The located problems, in file order.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// One line for a status line: the first problem and how many more.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.read_error {
            return format!("{}: cannot read: {e}", self.file.display());
        }
        let mut out = match self.diagnostics.first() {
            Some(d) => format!("{}: {}", d.key, d.message),
            None => "invalid config".to_string(),
        };
        if self.diagnostics.len() > 1 {
            out.push_str(&format!(" (+{} more)", self.diagnostics.len() - 1));
        }
        out
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if let Some(e) = &self.read_error {
            return write!(f, "{file}: cannot read: {e}");
        }
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{file}:{}:{}: {}: {}",
                d.line, d.column, d.key, d.message
            )?;
        }
        Ok(())
    }
}

/// Finds the byte offset of a problem and renders its key path.
fn resolve(doc: Option<&Doc<'_>>, problem: Problem) -> (usize, String, String) {
    let Problem {
        mut path,
        at,
        message,
    } = problem;
    let offset = match (&at, doc) {
        (At::Span(span), Some(doc)) => {
            if !path.is_empty() {
                path = deepest_path_at(doc.get_ref(), span.start, Vec::new()).unwrap_or(path);
            }
            span.start
        }
        (At::Span(span), None) => span.start,
        (_, Some(doc)) => offset_of(doc, &path, &at),
        (_, None) => 0,
    };
    let key = if path.is_empty() {
        "(syntax)".to_string()
    } else {
        render_path(&path)
    };
    (offset, key, message)
}

/// Byte offset of a path's key or value; a missing key points at the deepest
/// table that exists.
fn offset_of(doc: &Doc<'_>, path: &[Seg], at: &At) -> usize {
    let mut table = doc.get_ref();
    let mut best = 0;
    let mut current: Option<&toml::Spanned<DeValue<'_>>> = None;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let found = match (seg, current.map(|v| v.get_ref())) {
            (Seg::Key(name), None | Some(DeValue::Table(_))) => {
                if let Some(DeValue::Table(t)) = current.map(|v| v.get_ref()) {
                    table = t;
                }
                table
                    .get_key_value(name.as_str())
                    .map(|(k, v)| (k.span().start, v))
            }
            (Seg::Index(idx), Some(DeValue::Array(a))) => a.get(*idx).map(|v| (v.span().start, v)),
            _ => None,
        };
        let Some((key_start, value)) = found else {
            break;
        };
        best = if last && *at == At::Key {
            key_start
        } else if last {
            value.span().start
        } else {
            key_start
        };
        current = Some(value);
    }
    best
}

/// The path of the innermost key whose key or value contains `offset`.
fn deepest_path_at(
    table: &toml::de::DeTable<'_>,
    offset: usize,
    prefix: Vec<Seg>,
) -> Option<Vec<Seg>> {
    for (k, v) in table.iter() {
        let mut path = prefix.clone();
        path.push(Seg::Key(k.get_ref().to_string()));
        if k.span().contains(&offset) {
            return Some(path);
        }
        // A `[table]`'s own span may cover only its header, so look inside first.
        if let DeValue::Table(t) = v.get_ref()
            && let Some(found) = deepest_path_at(t, offset, path.clone())
        {
            return Some(found);
        }
        if v.span().contains(&offset) || v.span().start == offset {
            return Some(deepest_in_value(v, offset, path));
        }
    }
    None
}

fn deepest_in_value(v: &toml::Spanned<DeValue<'_>>, offset: usize, path: Vec<Seg>) -> Vec<Seg> {
    match v.get_ref() {
        DeValue::Table(t) => deepest_path_at(t, offset, path.clone()).unwrap_or(path),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if item.span().contains(&offset) {
                    let mut p = path.clone();
                    p.push(Seg::Index(i));
                    return deepest_in_value(item, offset, p);
                }
            }
            path
        }
        _ => path,
    }
}

/// Renders `a.b."c.d"[2]`.
pub fn render_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if bare {
                    out.push_str(k);
                } else {
                    out.push_str(&format!("{k:?}"));
                }
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Walks the text forward, turning ascending byte offsets into 1-based lines and
/// columns (in characters); each byte is looked at once.
struct Cursor<'t> {
    text: &'t str,
    offset: usize,
    line: usize,
    column: usize,
}

impl<'t> Cursor<'t> {
    fn new(text: &'t str) -> Self {
        Cursor {
            text,
            offset: 0,
            line: 1,
            column: 1,
        }
    }

    /// The position of `offset` (clamped to the text); offsets must not decrease.
    fn advance_to(&mut self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        if let Some(skipped) = self.text.get(self.offset..offset) {
            for c in skipped.chars() {
                if c == '\n' {
                    self.line += 1;
                    self.column = 1;
                } else {
                    self.column += 1;
                }
            }
            self.offset = offset;
        }
        (self.line, self.column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_quote_keys_that_are_not_bare() {
        let p = [
            Seg::from("models"),
            Seg::from("loras"),
            Seg::from("a.safetensors"),
        ];
        assert_eq!(render_path(&p), "models.loras.\"a.safetensors\"");
        assert_eq!(
            render_path(&[Seg::from("ui"), Seg::from("gpus"), Seg::Index(1)]),
            "ui.gpus[1]"
        );
    }

    #[test]
    fn the_cursor_counts_characters_and_lines() {
        let mut c = Cursor::new("ab\ncé d");
        assert_eq!(c.advance_to(0), (1, 1));
        assert_eq!(c.advance_to(7), (2, 4));
        assert_eq!(c.advance_to(99), (2, 5));
    }
}
