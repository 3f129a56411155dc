//! The handoff document: JSON in a memfd whose number the new binary gets on its
//! command line (`run --handoff-fd N`).
//!
//! Two layers, so a document the new binary cannot fully read never costs a
//! generation: the [`Envelope`] (version, the UI's pid, the descriptors, the old
//! config text) keeps its shape across versions, while [`CoreState`] is the
//! versioned body. A body that does not parse leaves the envelope: the UI is
//! adopted as "running, state unknown" and probed afresh.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use serde::{Deserialize, Serialize};

use super::STATE_VERSION;
use crate::supervisor::protocol::{
    Queue, ReloadOutcome, ReloadResult, RestartPolicy, RestartReason,
};

/// The stable outer layer of the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Version of `state`.
    pub version: u32,
    /// The running UI, if one runs.
    pub ui: Option<UiHandle>,
    /// The control plane's listening sockets.
    pub control: ControlFds,
    /// The config text the running UI was started or last reloaded with, so the
    /// new binary can tell what the new file changes.
    pub config_text: Option<String>,
    /// The versioned body ([`CoreState`] for version 1).
    pub state: serde_json::Value,
    /// The front door's listener and the UI's private port, when a front door
    /// runs (absent from the documents of binaries without one).
    #[serde(default)]
    pub front: Option<FrontFds>,
    /// The sleep inhibitor's logind lock, when it holds one: kept open across
    /// the exec, the machine never may sleep between the binaries mid-job.
    #[serde(default)]
    pub sleep_lock: Option<SleepLockFd>,
}

/// The sleep inhibitor's lock across a self-upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepLockFd {
    /// The lock's descriptor.
    pub fd: RawFd,
    /// The job count its `why` says.
    pub jobs: u32,
}

impl SleepLockFd {
    /// The lock, owned again (`None` when the number is not open).
    pub fn take(&self) -> Option<crate::inhibit::Carried> {
        own_fd(self.fd).map(|fd| crate::inhibit::Carried {
            fd,
            jobs: self.jobs,
        })
    }
}

/// The front door across a self-upgrade: its listening socket (connections wait
/// in the kernel's queue meanwhile) and the private port the adopted UI runs on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontFds {
    /// The listener on `ui.port`.
    pub listener: RawFd,
    /// The UI's private loopback port.
    pub ui_port: u16,
    /// The door's counters, so metrics do not restart at zero on an upgrade.
    #[serde(default)]
    pub stats: Option<crate::front::FrontStatus>,
}

/// The UI process the new binary adopts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiHandle {
    /// PID of the UI's main process, also its process group id.
    pub pid: i32,
    /// The group guard's pid and the write end of its pipe.
    pub guard: Option<GuardFd>,
    /// Read end of the UI's stdout pipe: the next binary relays it (closed,
    /// the UI's next line would meet EPIPE/SIGPIPE).
    #[serde(default)]
    pub stdout_fd: Option<RawFd>,
    /// Read end of the UI's stderr pipe, likewise.
    #[serde(default)]
    pub stderr_fd: Option<RawFd>,
}

/// The group guard (see `ui::guard`): a child of the supervisor that kills the
/// UI's group when the last writer of its pipe goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardFd {
    /// The guard's pid.
    pub pid: i32,
    /// The pipe's write end.
    pub fd: RawFd,
}

/// The control plane's listeners: handed over so no connection is refused
/// while the new binary starts (the kernel queues them on the socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlFds {
    /// The unix socket listener.
    pub unix: Option<RawFd>,
    /// Device and inode of the socket file, so the new binary removes it at exit
    /// only while it is still the one it serves.
    pub socket_id: Option<(u64, u64)>,
    /// The TCP listener, if one runs.
    pub tcp: Option<RawFd>,
}

/// Version 1 of what the core carries across.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoreState {
    /// The UI had answered its readiness probe.
    pub ui_ready: bool,
    /// Milliseconds since the UI was launched (or became ready).
    pub ui_age_ms: u64,
    /// Unix seconds when the UI became ready.
    pub ready_since_unix: Option<u64>,
    /// The last queue reading.
    pub queue: Option<Queue>,
    /// Hash of the config text in force.
    pub config_generation: String,
    /// The pending restart.
    pub pending: Option<PendingState>,
    /// Milliseconds since each crash in the crash window.
    pub crash_ages_ms: Vec<u64>,
    /// Crashes in a row (backoff exponent).
    pub consecutive_crashes: u32,
    /// `restarts_total` by reason.
    pub restarts: BTreeMap<RestartReason, u64>,
    /// `crashes_total`.
    pub crashes: u64,
    /// `reloads_total` by result.
    pub reloads: BTreeMap<ReloadResult, u64>,
    /// The last reload's outcome.
    pub last_reload: Option<ReloadOutcome>,
    /// Why the last reload was rejected, while its file is still in place.
    pub reload_rejected: Option<String>,
    /// Exec-to-ready of the last start.
    pub last_time_to_ready_ms: Option<u64>,
    /// `READY=1` was sent once already.
    pub sent_ready: bool,
    /// `RELOADING=1` was sent for this handoff: the new binary owes `READY=1`.
    pub reload_announced: bool,
    /// Milliseconds the supervisor has been up.
    pub uptime_ms: u64,
    /// Layout conflicts.
    pub conflicts: Vec<String>,
    /// The restart reason to count at the next start.
    pub start_reason: Option<RestartReason>,
}

/// A pending restart as carried across.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingState {
    /// Why (each as its JSON name).
    pub reasons: Vec<crate::supervisor::protocol::RestartCause>,
    /// Effective policy.
    pub policy: RestartPolicy,
    /// Unix seconds it became pending.
    pub since_unix: u64,
    /// Unix seconds of the deadline.
    pub deadline_unix: Option<u64>,
    /// Milliseconds left until the deadline (monotonic, for the timer).
    pub deadline_in_ms: Option<u64>,
}

/// What the new binary got: the envelope, and the body when it could read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The stable layer.
    pub envelope: Envelope,
    /// `None`: "state unknown" (a newer version, or a body that does not parse).
    pub state: Option<CoreState>,
}

/// Why the document could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating, writing or reading the memfd failed.
    #[error("handoff document: {0}")]
    Io(#[from] io::Error),
    /// Not even the envelope parses: nothing can be adopted.
    #[error("handoff document is unreadable: {0}")]
    Envelope(serde_json::Error),
}

impl Envelope {
    /// Wraps a version-1 body.
    pub fn new(
        ui: Option<UiHandle>,
        control: ControlFds,
        config_text: Option<String>,
        state: &CoreState,
    ) -> Envelope {
        Envelope {
            version: STATE_VERSION,
            ui,
            control,
            config_text,
            state: serde_json::to_value(state).unwrap_or(serde_json::Value::Null),
            front: None,
            sleep_lock: None,
        }
    }

    /// Splits the body off, `None` when this binary cannot read its version.
    pub fn receive(self) -> Received {
        let state = if self.version == STATE_VERSION {
            serde_json::from_value(self.state.clone())
                .inspect_err(|e| tracing::warn!(error = %e, "handoff state does not parse; adopting the UI with its state unknown"))
                .ok()
        } else {
            tracing::warn!(
                version = self.version,
                supported = STATE_VERSION,
                "handoff state version not understood; adopting the UI with its state unknown"
            );
            None
        };
        Received {
            envelope: self,
            state,
        }
    }
}

/// Writes the document into a new memfd (close-on-exec until the exec clears it).
pub fn write(envelope: &Envelope) -> Result<OwnedFd, StateError> {
    let bytes = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    // SAFETY: memfd_create with a NUL-terminated name has no other preconditions.
    let fd = unsafe { libc::memfd_create(c"sd-webui-handoff".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&bytes)?;
    file.seek(SeekFrom::Start(0))?;
    Ok(OwnedFd::from(file))
}

/// Reads the document from descriptor `fd` (taking and closing it).
pub fn read(fd: RawFd) -> Result<Received, StateError> {
    // SAFETY: F_GETFD only queries; a closed number fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(io::Error::last_os_error().into());
    }
    // SAFETY: the descriptor is open and was handed to this process to consume.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.seek(SeekFrom::Start(0))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let envelope: Envelope = serde_json::from_str(&text).map_err(StateError::Envelope)?;
    Ok(envelope.receive())
}

/// Owns descriptor `fd` if it is open, close-on-exec again: the exec cleared
/// the flag so the descriptor could travel, and without it every program this
/// binary starts (the next UI, a download helper) would inherit the front
/// door's listener, the control sockets and the old UI's pipes.
pub fn own_fd(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: F_GETFD only reads the flags of the number (fails when closed).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags < 0 {
        return None;
    }
    // SAFETY: F_SETFD on an open descriptor changes only its flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
        tracing::warn!(fd, error = %io::Error::last_os_error(), "cannot mark a handed-over descriptor close-on-exec");
    }
    // SAFETY: an open descriptor handed to this binary to own.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl ControlFds {
    /// The listeners named in a handoff document, owned again.
    pub fn take_listeners(&self) -> Option<crate::control::Listeners> {
        let unix = own_fd(self.unix?)?;
        Some(crate::control::Listeners {
            unix,
            socket_id: self.socket_id.unwrap_or_default(),
            tcp: self.tcp.and_then(own_fd),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> CoreState {
        CoreState {
            ui_ready: true,
            ui_age_ms: 5,
            ready_since_unix: Some(7),
            queue: None,
            config_generation: "abc".into(),
            pending: Some(PendingState {
                reasons: vec!["ui.port".into()],
                policy: RestartPolicy::WhenIdle,
                since_unix: 1,
                deadline_unix: Some(2),
                deadline_in_ms: Some(3),
            }),
            crash_ages_ms: vec![1],
            consecutive_crashes: 1,
            restarts: BTreeMap::new(),
            crashes: 1,
            reloads: BTreeMap::new(),
            last_reload: None,
            reload_rejected: None,
            last_time_to_ready_ms: Some(9),
            sent_ready: true,
            reload_announced: true,
            uptime_ms: 1000,
            conflicts: vec![],
            start_reason: None,
        }
    }

    #[test]
    fn a_document_round_trips_through_a_memfd() {
        let env = Envelope::new(
            Some(UiHandle {
                pid: 42,
                guard: None,
                stdout_fd: Some(7),
                stderr_fd: None,
            }),
            ControlFds::default(),
            Some("x".into()),
            &body(),
        );
        let fd = write(&env).unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        let got = read(raw).unwrap();
        assert_eq!(got.envelope, env);
        assert_eq!(got.state, Some(body()));
    }

    #[test]
    fn a_newer_or_garbled_body_keeps_the_envelope_and_loses_the_state() {
        let mut env = Envelope::new(
            Some(UiHandle {
                pid: 42,
                guard: None,
                stdout_fd: Some(7),
                stderr_fd: None,
            }),
            ControlFds::default(),
            None,
            &body(),
        );
        env.version = STATE_VERSION + 1;
        let got = env.clone().receive();
        assert_eq!(got.state, None);
        assert_eq!(got.envelope.ui.map(|u| u.pid), Some(42));
        env.version = STATE_VERSION;
        env.state = serde_json::json!({"ui_ready": "yes"});
        assert_eq!(env.receive().state, None);
    }
}
