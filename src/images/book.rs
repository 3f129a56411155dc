//! The core's account of the declared images: which are rendered, which wait,
//! which failed and why, and who waits for a `generate`. Pure (no I/O after
//! [`Book::new`]), so the core's loop can consult it at every step.
//!
//! A failed render is not retried by itself: only a changed declaration, a
//! `generate`, or — when the UI could not be reached — the UI's next start.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::files::Outputs;
use super::fingerprint::{fingerprint, models_used};
use super::render::RenderError;
use crate::config::{Config, ImageConfig};

/// What a `generate` gets back: the PNG paths, or why not.
pub type GenerateResult = Result<Vec<PathBuf>, GenerateError>;

/// Why a `generate` did not give pictures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// A name asked for is not declared.
    #[error("{0}")]
    Unknown(String),
    /// Rendering failed: one `name: error` line per failed image.
    #[error("{0}")]
    Failed(String),
}

/// Where one image stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Wanted, not started.
    Pending,
    /// A render task runs for it.
    Rendering,
    /// The file on disk matches the fingerprint.
    Rendered,
    /// The last render failed.
    Failed(RenderError),
}

#[derive(Debug)]
struct Entry {
    image: ImageConfig,
    fingerprint: String,
    models: BTreeMap<String, PathBuf>,
    state: State,
    /// Render even when the file on disk matches (`generate --force`).
    force: bool,
}

/// One render to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The image's name.
    pub name: String,
    /// What to render.
    pub image: ImageConfig,
    /// Its fingerprint now.
    pub fingerprint: String,
    /// The models it uses (for the sidecar).
    pub models: BTreeMap<String, PathBuf>,
    /// Skip the "already on disk" check.
    pub force: bool,
}

/// A failed image, for the status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedImage {
    /// The image's name.
    pub name: String,
    /// The UI's error.
    pub error: String,
}

/// Declared images in the status, `--json` and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagesStatus {
    /// Images in the config.
    pub declared: usize,
    /// Images whose file matches their declaration.
    pub rendered: usize,
    /// Images waiting for the UI to be ready and idle (or being rendered).
    pub pending: usize,
    /// The image being rendered now.
    pub rendering: Option<String>,
    /// Images whose last render failed, with the UI's error.
    pub failed: Vec<FailedImage>,
}

struct Waiter {
    names: Vec<String>,
    reply: oneshot::Sender<GenerateResult>,
}

/// Every declared image's state, and the `generate` callers waiting.
pub struct Book {
    outputs: Outputs,
    entries: BTreeMap<String, Entry>,
    waiters: Vec<Waiter>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("entries", &self.entries)
            .field("waiters", &self.waiters.len())
            .finish()
    }
}

impl Book {
    /// The book for `config`; images whose sidecar on disk matches are rendered.
    /// Reads the sidecars: call it before the core's loop runs.
    pub fn new(config: &Config) -> Book {
        let outputs = Outputs::new(&config.data.dir, config.data.permissions);
        let mut book = Book {
            outputs,
            entries: BTreeMap::new(),
            waiters: Vec::new(),
        };
        for (name, image) in &config.images {
            let fp = fingerprint(config, image);
            let state = if book.outputs.recorded(name).as_deref() == Some(fp.as_str()) {
                State::Rendered
            } else {
                State::Pending
            };
            book.entries.insert(
                name.clone(),
                Entry {
                    image: image.clone(),
                    fingerprint: fp,
                    models: models_used(config, image),
                    state,
                    force: false,
                },
            );
        }
        book
    }

    /// Where the files go.
    pub fn outputs(&self) -> &Outputs {
        &self.outputs
    }

    /// A new config is in force: changed images are wanted again (the render task
    /// checks the disk first), removed ones are forgotten.
    pub fn update(&mut self, config: &Config) {
        self.outputs = Outputs::new(&config.data.dir, config.data.permissions);
        self.entries
            .retain(|name, _| config.images.contains_key(name));
        for (name, image) in &config.images {
            let fp = fingerprint(config, image);
            match self.entries.get_mut(name) {
                Some(e) if e.fingerprint == fp => {}
                Some(e) => {
                    e.image = image.clone();
                    e.fingerprint = fp;
                    e.models = models_used(config, image);
                    if e.state != State::Rendering {
                        e.state = State::Pending;
                    }
                }
                None => {
                    self.entries.insert(
                        name.clone(),
                        Entry {
                            image: image.clone(),
                            fingerprint: fp,
                            models: models_used(config, image),
                            state: State::Pending,
                            force: false,
                        },
                    );
                }
            }
        }
        self.resolve();
    }

    /// A render task runs.
    pub fn rendering(&self) -> bool {
        self.entries.values().any(|e| e.state == State::Rendering)
    }

    /// Some image waits for a render.
    pub fn has_pending(&self) -> bool {
        self.entries.values().any(|e| e.state == State::Pending)
    }

    /// Takes the next image to render (in name order), marking it as rendering.
    pub fn next_job(&mut self) -> Option<Job> {
        let (name, e) = self
            .entries
            .iter_mut()
            .find(|(_, e)| e.state == State::Pending)?;
        e.state = State::Rendering;
        Some(Job {
            name: name.clone(),
            image: e.image.clone(),
            fingerprint: e.fingerprint.clone(),
            models: e.models.clone(),
            force: std::mem::take(&mut e.force),
        })
    }

    /// A render task ended. A result for an old fingerprint makes the image
    /// pending again (its declaration changed meanwhile).
    pub fn finished(
        &mut self,
        name: &str,
        fingerprint: &str,
        result: Result<PathBuf, RenderError>,
    ) {
        if let Some(e) = self.entries.get_mut(name) {
            e.state = match result {
                _ if e.fingerprint != fingerprint => State::Pending,
                Ok(_) => State::Rendered,
                Err(err) => State::Failed(err),
            };
        }
        self.resolve();
    }

    /// The UI stopped under a render (restart, crash): render it again later.
    pub fn interrupted(&mut self) {
        for e in self.entries.values_mut() {
            if e.state == State::Rendering {
                e.state = State::Pending;
            }
        }
    }

    /// The UI (re)started: failures to reach the old one are worth another try.
    pub fn ui_started(&mut self) {
        for e in self.entries.values_mut() {
            if matches!(e.state, State::Failed(RenderError::Unreachable(_))) {
                e.state = State::Pending;
            }
        }
    }

    /// `generate`: render `names` (all when empty) now — failed ones again, and
    /// rendered ones too with `force`. `reply` gets the paths once all are done.
    pub fn generate(
        &mut self,
        names: Vec<String>,
        force: bool,
        reply: oneshot::Sender<GenerateResult>,
    ) {
        let names = if names.is_empty() {
            self.entries.keys().cloned().collect()
        } else {
            names
        };
        let unknown: Vec<&str> = names
            .iter()
            .filter(|n| !self.entries.contains_key(*n))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let known: Vec<&str> = self.entries.keys().map(String::as_str).collect();
            let _ = reply.send(Err(GenerateError::Unknown(format!(
                "no declared image named {} (declared: {})",
                unknown.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))));
            return;
        }
        for name in &names {
            if let Some(e) = self.entries.get_mut(name) {
                match e.state {
                    State::Failed(_) => e.state = State::Pending,
                    State::Rendered if force => e.state = State::Pending,
                    _ => {}
                }
                if force && e.state == State::Pending {
                    e.force = true;
                }
            }
        }
        self.waiters.push(Waiter { names, reply });
        self.resolve();
    }

    /// Answers every waiter whose images are all done.
    fn resolve(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            let done = self.waiters[i].names.iter().all(|n| {
                self.entries
                    .get(n)
                    .is_none_or(|e| matches!(e.state, State::Rendered | State::Failed(_)))
            });
            if !done && !self.waiters[i].reply.is_closed() {
                i += 1;
                continue;
            }
            let w = self.waiters.swap_remove(i);
            let mut paths = Vec::new();
            let mut errors = Vec::new();
            for n in &w.names {
                match self.entries.get(n).map(|e| &e.state) {
                    Some(State::Failed(err)) => errors.push(format!("{n}: {err}")),
                    Some(_) => paths.push(self.outputs.png(n)),
                    None => errors.push(format!("{n}: no longer declared")),
                }
            }
            let _ = w.reply.send(if errors.is_empty() {
                Ok(paths)
            } else {
                Err(GenerateError::Failed(errors.join("\n")))
            });
        }
    }

    /// The counts for the status.
    pub fn status(&self) -> ImagesStatus {
        let mut s = ImagesStatus {
            declared: self.entries.len(),
            ..ImagesStatus::default()
        };
        for (name, e) in &self.entries {
            match &e.state {
                State::Rendered => s.rendered += 1,
                State::Pending => s.pending += 1,
                State::Rendering => {
                    s.pending += 1;
                    s.rendering = Some(name.clone());
                }
                State::Failed(err) => s.failed.push(FailedImage {
                    name: name.clone(),
                    error: err.to_string(),
                }),
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(dir: &Path, seed: i64) -> Config {
        let text = format!(
            "[ui]\nflavor = \"forge\"\ncommand = [\"/bin/ui\"]\n[data]\ndir = \"{}\"\n\
             [images.a]\nprompt = \"a\"\nseed = {seed}\n[images.b]\nprompt = \"b\"\n",
            dir.display()
        );
        match Config::parse(Path::new("t.toml"), &text) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn one_at_a_time_and_failures_wait_for_a_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let c = config(dir.path(), 1);
        let mut book = Book::new(&c);
        assert_eq!(book.status().pending, 2);
        let a = book.next_job().expect("a is due");
        assert_eq!(a.name, "a");
        assert!(book.rendering());
        book.finished("a", &a.fingerprint, Err(RenderError::Ui("boom".into())));
        let b = book.next_job().expect("b is due");
        book.finished("b", &b.fingerprint, Ok(PathBuf::from("/x")));
        assert!(
            book.next_job().is_none(),
            "a failure is not retried by itself"
        );
        assert_eq!(book.status().failed[0].error, "boom");
        book.update(&c);
        assert!(book.next_job().is_none(), "nor on a no-op reload");
        book.update(&config(dir.path(), 2));
        assert_eq!(book.next_job().map(|j| j.name).as_deref(), Some("a"));
    }

    #[test]
    fn generate_answers_when_all_are_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut book = Book::new(&config(dir.path(), 1));
        let (tx, mut rx) = oneshot::channel();
        book.generate(vec!["b".into()], false, tx);
        assert!(rx.try_recv().is_err());
        let a = book.next_job().expect("a");
        book.finished("a", &a.fingerprint, Ok(PathBuf::from("/a")));
        assert!(rx.try_recv().is_err());
        let b = book.next_job().expect("b");
        book.finished("b", &b.fingerprint, Ok(PathBuf::from("/b")));
        let paths = rx.try_recv().expect("answered").expect("ok");
        assert_eq!(paths, vec![dir.path().join("outputs/declared/b.png")]);
        let (tx, mut rx) = oneshot::channel();
        book.generate(vec!["zz".into()], false, tx);
        assert!(rx.try_recv().expect("answered").is_err());
    }
}
