//! The D-Bus interface `io.github.sd_webui_supervisor.Supervisor1` (zbus).
//!
//! Like the HTTP API it only translates: properties are read from the core's latest
//! snapshot, methods forward to the [`CoreHandle`], and one task watches the
//! snapshots and emits `PropertiesChanged` (one signal per snapshot, listing every
//! property that changed). The checked-in
//! `dbus/io.github.sd_webui_supervisor.Supervisor1.xml` is the contract; a test
//! compares it with what this module introspects.

use std::borrow::Cow;
use std::collections::HashMap;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zbus::connection::Builder;
use zbus::message::{Header, Message};
use zbus::names::{ErrorName, InterfaceName};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, DBusError, Variant, fdo};

use crate::supervisor::protocol::{
    CoreHandle, HandleError, QueueOp, ReloadResult, RestartWhen, Snapshot,
};

/// The well-known bus name the supervisor owns.
pub const BUS_NAME: &str = "io.github.sd_webui_supervisor.Supervisor1";
/// The object that carries the interface.
pub const OBJECT_PATH: &str = "/io/github/sd_webui_supervisor/Supervisor1";
/// The interface name (same as the bus name).
pub const INTERFACE: &str = BUS_NAME;
/// Error name of a `Reload()` whose config was invalid; the message lists the errors.
pub const ERROR_RELOAD_REJECTED: &str =
    "io.github.sd_webui_supervisor.Supervisor1.Error.ReloadRejected";

/// Which bus to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (needs the shipped policy file).
    System,
    /// The session bus of `DBUS_SESSION_BUS_ADDRESS`.
    Session,
    /// A bus at an explicit address (tests run a private `dbus-daemon`).
    Address(String),
}

/// The properties as D-Bus shows them, derived from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Props {
    state: String,
    queue_running: u32,
    queue_pending: u32,
    restart_pending: bool,
    restart_reason: String,
    ui_pid: u32,
}

impl Props {
    fn of(s: &Snapshot) -> Props {
        let queue = s.queue.unwrap_or_default();
        Props {
            state: s.state.name().to_owned(),
            queue_running: queue.running,
            queue_pending: queue.pending,
            restart_pending: s.restart_pending.is_some(),
            restart_reason: s
                .restart_pending
                .as_ref()
                .map(|r| {
                    let names: Vec<&str> = r.reasons.iter().map(|c| c.name()).collect();
                    names.join(", ")
                })
                .unwrap_or_default(),
            ui_pid: s.ui_pid.unwrap_or(0),
        }
    }

    /// The properties that differ from `old`, by D-Bus name.
    fn changed_since(&self, old: &Props) -> HashMap<&'static str, Variant<'_>> {
        let mut changed = HashMap::new();
        if self.state != old.state {
            changed.insert("State", Variant::from(self.state.as_str()));
        }
        if self.queue_running != old.queue_running {
            changed.insert("QueueRunning", Variant::from(self.queue_running));
        }
        if self.queue_pending != old.queue_pending {
            changed.insert("QueuePending", Variant::from(self.queue_pending));
        }
        if self.restart_pending != old.restart_pending {
            changed.insert("RestartPending", Variant::from(self.restart_pending));
        }
        if self.restart_reason != old.restart_reason {
            changed.insert("RestartReason", Variant::from(self.restart_reason.as_str()));
        }
        if self.ui_pid != old.ui_pid {
            changed.insert("UiPid", Variant::from(self.ui_pid));
        }
        changed
    }
}

/// A method's failure, as a D-Bus error reply.
#[derive(Debug)]
pub enum MethodError {
    /// The new config was invalid; the description lists every error, one a line.
    ReloadRejected(String),
    /// A standard error (`InvalidArgs`, `Failed`).
    Fdo(fdo::Error),
}

impl From<HandleError> for MethodError {
    fn from(e: HandleError) -> Self {
        MethodError::Fdo(fdo::Error::Failed(e.to_string()))
    }
}

impl DBusError for MethodError {
    fn create_reply(&self, call: &Header<'_>) -> zbus::Result<Message> {
        match self {
            MethodError::ReloadRejected(errors) => {
                Message::error(call, ERROR_RELOAD_REJECTED).build(&(errors.as_str(),))
            }
            MethodError::Fdo(e) => e.create_reply(call),
        }
    }

    fn name(&self) -> ErrorName<'_> {
        match self {
            MethodError::ReloadRejected(_) => {
                ErrorName::from_static_str_unchecked(ERROR_RELOAD_REJECTED)
            }
            MethodError::Fdo(e) => e.name(),
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            MethodError::ReloadRejected(errors) => Some(errors),
            MethodError::Fdo(e) => e.description(),
        }
    }
}

/// The served object: a handle to the core and nothing else.
pub struct Supervisor1 {
    core: CoreHandle,
}

impl Supervisor1 {
    fn props(&self) -> Props {
        Props::of(&self.core.snapshot())
    }
}

/// Watch the supervisor of a Stable Diffusion web UI, and reload or restart it.
#[zbus::interface(name = "io.github.sd_webui_supervisor.Supervisor1")]
impl Supervisor1 {
    /// Re-read the config file and apply it, like `systemctl reload`. Fails with
    /// `…Supervisor1.Error.ReloadRejected` (listing the errors) when the file is invalid.
    async fn reload(&self) -> Result<(), MethodError> {
        let outcome = self.core.reload().await?;
        if outcome.result == ReloadResult::Rejected {
            return Err(MethodError::ReloadRejected(outcome.errors.join("\n")));
        }
        Ok(())
    }

    /// Restart the UI: `when` is "idle" (once the queue is empty) or "now".
    async fn restart(&self, when: &str) -> Result<(), MethodError> {
        let when = match when {
            "idle" => RestartWhen::Idle,
            "now" => RestartWhen::Now,
            other => {
                return Err(MethodError::Fdo(fdo::Error::InvalidArgs(format!(
                    "when must be \"idle\" or \"now\", not {other:?}"
                ))));
            }
        };
        self.core.restart(when).await?;
        Ok(())
    }

    /// Start failed model downloads again (`retry-downloads`); returns how many.
    /// Per-model progress is in `Status()`'s `downloads`.
    #[zbus(out_args("retried"))]
    async fn retry_downloads(&self) -> Result<u32, MethodError> {
        let n = self.core.retry_downloads().await?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Hold new ComfyUI prompts at the front door (`queue pause`); returns the
    /// journal as JSON (the `GET /v1/queue` document).
    #[zbus(out_args("json"))]
    async fn queue_pause(&self) -> Result<String, MethodError> {
        self.queue(QueueOp::Pause).await
    }

    /// Let them through again (`queue resume`); returns the journal as JSON.
    #[zbus(out_args("json"))]
    async fn queue_resume(&self) -> Result<String, MethodError> {
        self.queue(QueueOp::Resume).await
    }

    /// The journal of ComfyUI prompts as JSON (`queue list --json`).
    #[zbus(out_args("json"))]
    async fn queue_list(&self) -> Result<String, MethodError> {
        self.queue(QueueOp::List).await
    }

    /// Send a quarantined prompt to the UI again (`queue release ID`).
    #[zbus(out_args("json"))]
    async fn queue_release(&self, prompt_id: &str) -> Result<String, MethodError> {
        let op = QueueOp::Release {
            prompt_id: prompt_id.to_owned(),
        };
        self.queue(op).await
    }

    /// Whether new ComfyUI prompts are held (`queue pause`). Read on demand.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn queue_paused(&self) -> bool {
        self.core.snapshot().queue_keep.paused
    }

    /// With `[instances]`, each instance: name, state, jobs running, jobs
    /// waiting, UI pid (0: none), draining for a rolling restart. Empty
    /// without. Read on demand.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn instances(&self) -> Vec<(String, String, u32, u32, u32, bool)> {
        self.core
            .snapshot()
            .instances
            .iter()
            .map(|i| {
                let q = i.queue.unwrap_or_default();
                (
                    i.name.clone(),
                    i.state.name().to_owned(),
                    q.running,
                    q.pending,
                    i.ui_pid.unwrap_or(0),
                    i.draining,
                )
            })
            .collect()
    }

    /// The full status as JSON, the same document as `GET /v1/status`.
    #[zbus(out_args("json"))]
    async fn status(&self) -> Result<String, MethodError> {
        serde_json::to_string(&self.core.snapshot())
            .map_err(|e| MethodError::Fdo(fdo::Error::Failed(e.to_string())))
    }

    /// starting, ready, backoff, waiting, failed or stopping.
    #[zbus(property)]
    async fn state(&self) -> String {
        self.props().state
    }

    /// Generation jobs running in the UI (0 while unknown).
    #[zbus(property)]
    async fn queue_running(&self) -> u32 {
        self.props().queue_running
    }

    /// Generation jobs waiting in the UI (0 while unknown).
    #[zbus(property)]
    async fn queue_pending(&self) -> u32 {
        self.props().queue_pending
    }

    /// Whether a UI restart is owed.
    #[zbus(property)]
    async fn restart_pending(&self) -> bool {
        self.props().restart_pending
    }

    /// Why the restart is owed, reasons joined by ", " (empty when none).
    #[zbus(property)]
    async fn restart_reason(&self) -> String {
        self.props().restart_reason
    }

    /// PID of the UI process, 0 when none runs.
    #[zbus(property)]
    async fn ui_pid(&self) -> u32 {
        self.props().ui_pid
    }

    /// Requests the UI answered through the front door (0 without one). Read on
    /// demand: it changes with every request, so no change signal is sent.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn front_requests(&self) -> u64 {
        self.front()
            .map_or(0, |f| f.proxied.classes().iter().map(|(_, n)| *n).sum())
    }

    /// Requests the front door holds now, waiting for the UI.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn front_held(&self) -> u64 {
        self.front().map_or(0, |f| f.held_now)
    }

    /// Requests the front door answered itself (401, 429, 502, 503, the
    /// restarting page, closed websockets); `Status()` has them by reason.
    #[zbus(property(emits_changed_signal = "false"))]
    async fn front_rejected(&self) -> u64 {
        self.front().map_or(0, |f| f.rejected.values().sum())
    }
}

impl Supervisor1 {
    async fn queue(&self, op: QueueOp) -> Result<String, MethodError> {
        let list = self
            .core
            .queue(op)
            .await?
            .map_err(|refusal| MethodError::Fdo(fdo::Error::Failed(refusal.to_string())))?;
        serde_json::to_string(&list)
            .map_err(|e| MethodError::Fdo(fdo::Error::Failed(e.to_string())))
    }

    fn front(&self) -> Option<crate::front::FrontStatus> {
        self.core.snapshot().front
    }
}

/// The interface being served: the connection and its change announcer.
#[derive(Debug)]
pub struct DbusService {
    conn: Connection,
    announcer: JoinHandle<()>,
}

impl DbusService {
    /// The bus connection (tests use it to learn the unique name).
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Stops announcing, gives the bus name back and closes the connection.
    pub async fn shutdown(self) {
        self.announcer.abort();
        if let Err(e) = self.conn.release_name(BUS_NAME).await {
            tracing::debug!(error = %e, "releasing the D-Bus name");
        }
        if let Err(e) = self.conn.close().await {
            tracing::debug!(error = %e, "closing the D-Bus connection");
        }
    }
}

/// Serves the interface on `bus` and owns [`BUS_NAME`]; fails if the name is taken
/// or the bus refuses (policy), so a second supervisor cannot start.
pub async fn serve(core: CoreHandle, bus: &Bus) -> zbus::Result<DbusService> {
    let builder = match bus {
        Bus::System => Builder::system(),
        Bus::Session => Builder::session(),
        Bus::Address(address) => Builder::address(address.as_str()),
    };
    // zbus's default flags would let a second supervisor take the name over (and
    // let this one be replaced); ask for it exclusively instead.
    let conn = builder
        .serve_at(OBJECT_PATH, Supervisor1 { core: core.clone() })
        .name(BUS_NAME)
        .allow_name_replacements(false)
        .replace_existing_names(false)
        .build()
        .await?;
    let announcer = tokio::spawn(announce_changes(conn.clone(), core.subscribe()));
    Ok(DbusService { conn, announcer })
}

/// Emits one `PropertiesChanged` per snapshot that changes any property, until the
/// core stops publishing.
async fn announce_changes(conn: Connection, mut snapshots: watch::Receiver<Snapshot>) {
    let emitter = match SignalEmitter::new(&conn, OBJECT_PATH) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot emit D-Bus property changes");
            return;
        }
    };
    let interface = InterfaceName::from_static_str_unchecked(INTERFACE);
    let mut last = Props::of(&snapshots.borrow_and_update());
    while snapshots.changed().await.is_ok() {
        let now = Props::of(&snapshots.borrow_and_update());
        let changed = now.changed_since(&last);
        if !changed.is_empty() {
            let sent = fdo::Properties::properties_changed(
                &emitter,
                interface.clone(),
                changed,
                Cow::Borrowed(&[]),
            )
            .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "emitting PropertiesChanged");
            }
        }
        last = now;
    }
}
