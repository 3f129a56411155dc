//! Declared images in the core (issue 15): when to start a render, what its end
//! changes, and what a UI stop does to one in progress. The render itself runs
//! in a task of its own ([`crate::images::task`]) and reports back as
//! [`Event::ImageDone`]; the loop never awaits it.
//!
//! Rules: one render at a time; only while the UI is ready, no restart is about
//! to happen, and the last queue reading — taken after the previous render
//! ended — says idle (so a user's job waits for at most one picture). A render
//! in progress counts as a job: a pending restart waits for it.

use std::path::PathBuf;
use std::time::Instant;

use tokio::sync::oneshot;
use tokio::task::AbortHandle;

use super::{Event, Supervisor, Ui};
use crate::config::RestartPolicy;
use crate::images::{Book, GenerateResult, RenderError, Renderer};
use crate::ui::api::ApiAuth;

/// The core's image state: the book, the client for the running UI, the task.
#[derive(Debug)]
pub(super) struct Images {
    pub(super) book: Book,
    renderer: Option<Renderer>,
    task: Option<AbortHandle>,
    /// Only queue readings taken after this count: set when a render ends and
    /// when images become due (a reading from before may miss a job begun since).
    not_before: Option<Instant>,
}

impl Images {
    /// The images of `config`, checked against the sidecars on disk (before the loop runs).
    pub(super) fn new(config: &crate::config::Config) -> Images {
        Images {
            book: Book::new(config),
            renderer: None,
            task: None,
            not_before: None,
        }
    }

    /// A render task runs: the UI is busy with a job of ours.
    pub(super) fn busy(&self) -> bool {
        self.task.is_some()
    }
}

impl Supervisor {
    /// A UI was launched: renders go to it (with its credentials).
    pub(super) fn images_ui_launched(&mut self, auth: Option<ApiAuth>) {
        self.images.renderer = Some(Renderer::new(self.config.ui_own_port(), auth));
        self.images.book.ui_started();
        self.images_due();
    }

    /// Images may have become due: wait for a queue reading taken from now, and
    /// ask for one at once (only when some image waits: otherwise the probe
    /// schedule stays exactly as the restart logic set it).
    fn images_due(&mut self) {
        // With instances the leader alone renders (to its own UI).
        if !self.leads() || !self.images.book.has_pending() {
            return;
        }
        let now = Instant::now();
        self.images.not_before = Some(now);
        self.timers.probe_by(now);
    }

    /// The UI is stopping or gone: a render in progress is abandoned and wanted again.
    pub(super) fn images_ui_gone(&mut self) {
        if let Some(task) = self.images.task.take() {
            tracing::info!("declared image render abandoned: the UI is stopping");
            task.abort();
        }
        self.images.not_before = Some(Instant::now());
        self.images.book.interrupted();
    }

    /// A new config is in force: changed images are wanted again.
    pub(super) fn images_config_changed(&mut self) {
        self.images.book.update(&self.config);
        self.images_due();
    }

    /// `generate`: render now (as soon as the UI is ready and idle).
    pub(super) fn images_generate(
        &mut self,
        names: Vec<String>,
        force: bool,
        reply: oneshot::Sender<GenerateResult>,
    ) {
        self.images.book.generate(names, force, reply);
        self.images_due();
    }

    /// Starts the next render when everything allows it.
    pub(super) fn maybe_render(&mut self) {
        if self.images.busy() || !self.images.book.has_pending() {
            return;
        }
        if !matches!(self.slot.ui, Ui::Ready { .. }) {
            return;
        }
        // A restart that is going to happen renders into the new UI instead.
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.policy != RestartPolicy::Manual)
        {
            return;
        }
        let fresh = match (self.slot.probing.sent, self.images.not_before) {
            (Some(sent), Some(after)) => sent >= after,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if !fresh || !self.slot.probing.queue.is_some_and(|q| q.is_idle()) {
            return;
        }
        let Some(renderer) = self.images.renderer.clone() else {
            return;
        };
        let Some(job) = self.images.book.next_job() else {
            return;
        };
        let outputs = self.images.book.outputs().clone();
        let flavor = self.config.ui.flavor;
        let (name, fingerprint) = (job.name.clone(), job.fingerprint.clone());
        let task = self.tasks.spawn(async move {
            let result = crate::images::task::run(&renderer, outputs, flavor, job).await;
            Event::ImageDone {
                name,
                fingerprint,
                result,
            }
        });
        self.images.task = Some(task);
        // Let the queue probe see our job as soon as the UI registers it.
        self.timers.probe_by(Instant::now());
    }

    /// A render task ended.
    pub(super) fn on_image_done(
        &mut self,
        name: &str,
        fingerprint: &str,
        result: Result<PathBuf, RenderError>,
    ) {
        self.images.task = None;
        self.images.not_before = Some(Instant::now());
        match &result {
            Ok(path) => {
                tracing::debug!(image = name, path = %path.display(), "declared image done")
            }
            Err(e) => {
                tracing::warn!(image = name, error = %e, "declared image failed; not retried until its declaration changes or `generate`")
            }
        }
        self.images.book.finished(name, fingerprint, result);
        // Probe at once: the next image waits for an idle reading taken from now,
        // and a pending restart may now go ahead.
        self.timers.probe_by(Instant::now());
    }
}
