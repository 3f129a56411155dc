//! Slow work the core hands off: every task lives in one [`JoinSet`] (aborted
//! when the core ends) and reports back as an [`Event`]. The loop itself never
//! awaits I/O, so reloads, status and the watchdog are answered while the UI
//! hangs or `nvidia-smi` takes its time.

use std::io;
use std::process::ExitStatus;
use std::time::Instant;

use tokio::task::JoinSet;

use super::protocol::RestartReason;
use crate::layout::LayoutReport;
use crate::ui::gpu::Preflight;
use crate::ui::launch::Prepared;
use crate::ui::settings_sync::Synced;

/// Results of work the core handed off.
#[derive(Debug)]
pub enum Event {
    /// GPU preflight and launch preparation for start number `start` finished.
    Prepared {
        start: u64,
        preflight: Preflight,
        /// `None`: the preflight says wait, nothing was prepared.
        launch: Option<Result<Prepared, crate::ui::launch::PrepareError>>,
        /// Who listens on the UI's port, when something already does.
        port_held: Option<String>,
    },
    /// The config file was read for a reload.
    ConfigRead {
        text: io::Result<Vec<u8>>,
        /// The bytes' parse, made in the task too (a large or hostile config
        /// takes the parser a while: not on the core's loop).
        parsed: Option<super::reconfigure::Parsed>,
        reply: super::reconfigure::Reply,
    },
    /// A layout of the config in force finished; `transient` when its failure
    /// may pass by itself (no fds, a full disk: retried, never `failed`).
    LaidOut {
        /// The report, or why the layout failed.
        report: Result<LayoutReport, String>,
        /// Whether the failure is transient.
        transient: bool,
    },
    /// A readiness probe finished.
    Ready(bool),
    /// A queue probe finished; `sent` is when it was sent (a restart may act only
    /// on a reading taken after the idle grace ended).
    Queue(
        Result<crate::ui::api::QueueReading, crate::ui::api::ProbeError>,
        Instant,
    ),
    /// ComfyUI broadcast its queue length (`/ws`): probe now if a restart waits.
    QueueChanged(u32),
    /// ComfyUI said on `/ws` that a prompt (when named) moves.
    Progressed(Option<String>),
    /// The interrupt of a stalled job was sent, or not.
    Interrupted(Result<(), crate::ui::api::ProbeError>),
    /// The idle unload of the models answered (`gpu.unload_after`).
    Unloaded(Result<(), crate::ui::api::ProbeError>),
    /// Managed settings were brought in line with the running UI.
    SettingsSynced(Synced),
    /// The new binary of a self-upgrade passed its check, or not.
    HandoffChecked(super::handoff::Checked),
    /// A download task's report, for the manager the core owns.
    Download(crate::download::Report),
    /// A declared image's render task ended.
    ImageDone {
        /// The image.
        name: String,
        /// The fingerprint it was rendered for.
        fingerprint: String,
        /// The PNG written, or why not.
        result: Result<std::path::PathBuf, crate::images::RenderError>,
    },
    /// The running UI's POST routes (`None`: it has no route list).
    Routes(Option<std::collections::BTreeSet<String>>),
    /// Model-list refresh calls finished, each with its outcome.
    Refreshed(Vec<(&'static str, Result<(), crate::ui::api::ProbeError>)>),
    /// A queue journal task ended (`queue_keep/`).
    Keep(super::queue_keep::KeepEvent),
    /// A follower instance's core published (`None`: it ended).
    Instance(usize, Option<Box<super::protocol::InstanceSnapshot>>),
    /// The UI group is gone after a stop or an exit; `then` says what comes next.
    Gone {
        /// Exit of the main process.
        status: io::Result<ExitStatus>,
        /// What to do now.
        then: AfterStop,
    },
}

/// What follows once the UI's group is gone.
#[derive(Debug)]
pub enum AfterStop {
    /// Start the UI again (a restart).
    Start,
    /// Count a crash with this reason, then back off or fail; the next start
    /// counts under `counter`.
    Crash { why: String, counter: RestartReason },
    /// Nothing: the supervisor is shutting down.
    Exit,
    /// End the supervisor for a service restart (the unit changed).
    ExitService,
}

/// The core's tasks.
#[derive(Debug, Default)]
pub struct Tasks {
    set: JoinSet<Event>,
}

impl Tasks {
    /// Runs `work` as a tracked task; the handle cancels it alone.
    pub fn spawn(
        &mut self,
        work: impl Future<Output = Event> + Send + 'static,
    ) -> tokio::task::AbortHandle {
        self.set.spawn(work)
    }

    /// The next finished task's event; pending while none runs.
    pub async fn next(&mut self) -> Event {
        loop {
            match self.set.join_next().await {
                Some(Ok(ev)) => return ev,
                Some(Err(e)) if e.is_panic() => {
                    tracing::error!(error = %e, "a supervisor task panicked");
                }
                Some(Err(_)) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Cancels every task (at exit; layouts already on the blocking pool finish).
    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

/// Layouts run one at a time (two would race on the data dir), always of the
/// config in force: a request while one runs makes one more run afterwards, and
/// everyone waiting is answered by the last.
#[derive(Debug)]
pub struct LayoutLane<W> {
    running: bool,
    again: bool,
    waiters: Vec<W>,
}

impl<W> Default for LayoutLane<W> {
    fn default() -> Self {
        LayoutLane {
            running: false,
            again: false,
            waiters: Vec::new(),
        }
    }
}

impl<W> LayoutLane<W> {
    /// Adds `waiter`; true when the caller must start a layout now.
    pub fn request(&mut self, waiter: Option<W>) -> bool {
        self.waiters.extend(waiter);
        if self.running {
            self.again = true;
            false
        } else {
            self.running = true;
            true
        }
    }

    /// A layout finished: `Some(waiters)` to answer, or `None` when another run
    /// must start first (the config changed while this one ran).
    pub fn finished(&mut self) -> Option<Vec<W>> {
        if self.again {
            self.again = false;
            None
        } else {
            self.running = false;
            Some(std::mem::take(&mut self.waiters))
        }
    }
}

impl From<crate::ui::comfy_ws::WsNews> for Event {
    fn from(news: crate::ui::comfy_ws::WsNews) -> Event {
        match news {
            crate::ui::comfy_ws::WsNews::Queue(n) => Event::QueueChanged(n),
            crate::ui::comfy_ws::WsNews::Progress(prompt) => Event::Progressed(prompt),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_while_running_coalesce_into_one_more_run() {
        let mut lane = LayoutLane::default();
        assert!(lane.request(Some(1)));
        assert!(!lane.request(Some(2)));
        assert!(!lane.request(Some(3)));
        assert_eq!(lane.finished(), None, "one more run for the newer config");
        assert_eq!(lane.finished(), Some(vec![1, 2, 3]));
        assert!(lane.request(None));
    }
}
