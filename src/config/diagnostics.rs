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
        let mut diagnostics: Vec<Diagnostic> =
            problems.into_iter().map(|p| locate(text, doc, p)).collect();
        diagnostics.sort_by_key(|d| (d.line, d.column));
        ConfigError {
            file: path.to_path_buf(),
            read_error: None,
            diagnostics,
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

/// Finds the position of a problem and renders its key path.
fn locate(text: &str, doc: Option<&Doc<'_>>, problem: Problem) -> Diagnostic {
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
    let (line, column) = line_col(text, offset);
    let key = if path.is_empty() {
        "(syntax)".to_string()
    } else {
        render_path(&path)
    };
    Diagnostic {
        line,
        column,
        key,
        message,
    }
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
                    .iter()
                    .find(|(k, _)| k.get_ref().as_ref() == name.as_str())
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

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
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
    fn line_col_counts_characters() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("x", 0), (1, 1));
    }
}
