//! The old binary's side of a self-upgrade: the core's [`Handover`] and the
//! descriptors that travel (the UI's guard pipe and output, the control
//! listeners, the front door's listener, the sleep inhibitor's lock) go into the state document by number,
//! and the new binary is exec'd on it. The one way back is a failed `execve`:
//! then this binary takes its own document back, as a new binary would.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::path::Path;

use super::state::{
    self, ControlFds, Envelope, FrontFds, GuardFd, Received, SleepLockFd, UiHandle,
};
use crate::supervisor::Handover;

/// Writes the state document and execs the new binary; returns only when the
/// exec failed, with the state for this binary to take back.
pub fn exec_new_binary(
    path: &Path,
    handover: Handover,
    listeners: Option<crate::control::Listeners>,
    front: Option<(OwnedFd, u16, crate::front::FrontStatus)>,
    sleep_lock: Option<crate::inhibit::Carried>,
) -> Received {
    // From here the document owns the descriptors (by number), whichever binary
    // reads it.
    let mut keep: Vec<RawFd> = Vec::new();
    let mut raw = |fd: OwnedFd| {
        let n = fd.into_raw_fd();
        keep.push(n);
        n
    };
    let ui = handover.ui.map(|h| UiHandle {
        pid: h.pid,
        guard: h.guard.map(|g| {
            let (gpid, fd) = g.into_parts();
            GuardFd {
                pid: gpid,
                fd: raw(fd),
            }
        }),
        stdout_fd: h.stdout.map(&mut raw),
        stderr_fd: h.stderr.map(&mut raw),
    });
    let control = match listeners {
        Some(l) => ControlFds {
            socket_id: Some(l.socket_id),
            unix: Some(raw(l.unix)),
            tcp: l.tcp.map(&mut raw),
        },
        None => ControlFds::default(),
    };
    let mut envelope = Envelope::new(ui, control, Some(handover.config_text), &handover.state);
    envelope.front = front.map(|(fd, ui_port, stats)| FrontFds {
        listener: raw(fd),
        ui_port,
        stats: Some(stats),
    });
    envelope.sleep_lock = sleep_lock.map(|lock| SleepLockFd {
        fd: raw(lock.fd),
        jobs: lock.jobs,
    });
    let err = match state::write(&envelope) {
        Ok(memfd) => {
            let doc = memfd.as_raw_fd();
            keep.push(doc);
            let args: Vec<OsString> = vec![
                "run".into(),
                "--config".into(),
                path.as_os_str().to_owned(),
                "--handoff-fd".into(),
                doc.to_string().into(),
            ];
            tracing::info!(executable = %handover.exe.display(), "exec");
            super::execve::exec(&handover.exe, &args, &keep).to_string()
        }
        Err(e) => e.to_string(),
    };
    tracing::error!(executable = %handover.exe.display(), error = %err, "cannot exec the new binary; this one carries on");
    envelope.receive()
}
