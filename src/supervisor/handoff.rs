//! The core's side of a self-upgrade (see [`crate::handoff`]): deciding that a
//! reload hands over to a new binary, checking that binary, exporting the state
//! when the loop ends for it, and adopting that state in the new binary.
//!
//! Also the deferred service restart: a changed `[supervisor] unit_fingerprint`
//! is a pending restart like any other (same policy, grace and deadline), but
//! carrying it out stops the UI and ends the supervisor with
//! [`EXIT_SERVICE_RESTART`](crate::handoff::EXIT_SERVICE_RESTART), so systemd
//! starts the service again under the new unit.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::lifecycle::api_auth;
use super::{Pending, Supervisor, Ui};
use crate::config::{Config, RestartPolicy};
use crate::handoff::UNIT_CHANGED;
use crate::handoff::check::check_binary;
use crate::handoff::state::{CoreState, PendingState, Received};
use crate::supervisor::protocol::ReloadOutcome;
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::guard::GroupGuard;
use crate::ui::process::UiProcess;

/// The pending-restart reason when the new binary could not read the state and
/// cannot tell which config the running UI has.
const UNKNOWN_CONFIG: &str = "supervisor upgrade (running config unknown)";

/// Why [`Supervisor::run`] returned.
#[derive(Debug)]
pub enum Ended {
    /// SIGTERM/SIGINT: the UI was stopped.
    Shutdown,
    /// The unit changed: the UI was stopped; exit for systemd to start us again.
    ServiceRestart,
    /// Hand over to a new binary: the UI runs on, its state is in here.
    Handoff(Box<Handover>),
}

/// What the old binary passes to the new one.
#[derive(Debug)]
pub struct Handover {
    /// The new binary.
    pub exe: PathBuf,
    /// The UI's pid and group guard, if a UI runs.
    pub ui: Option<(i32, Option<GroupGuard>)>,
    /// The config text the running UI has.
    pub config_text: String,
    /// The rest of the core's state.
    pub state: CoreState,
}

/// A handoff decided by a reload, carried out when the loop can end.
#[derive(Debug)]
pub(super) struct Planned {
    exe: PathBuf,
    /// The reload announced `RELOADING=1`; the new binary sends `READY=1`.
    announced: bool,
}

/// `[supervisor] executable` of a config text, read leniently: a config only
/// the new binary understands must still reach it.
fn executable_of(text: &[u8]) -> Option<PathBuf> {
    let table: toml::Table = toml::from_str(&String::from_utf8_lossy(text)).ok()?;
    let exe = table.get("supervisor")?.get("executable")?.as_str()?;
    Some(PathBuf::from(exe))
}

/// Whether `exe` is the binary running now.
fn is_running_binary(exe: &Path) -> bool {
    let Ok(current) = std::env::current_exe() else {
        return false;
    };
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    canonical(exe) == canonical(&current)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Supervisor {
    /// A reload whose file names another executable: check it, and plan the
    /// handoff (the new binary applies the file), or reject the reload.
    /// `None`: not a handoff; the reload goes on as usual.
    pub(super) async fn handoff_reload(
        &mut self,
        text: &[u8],
        outcome: &ReloadOutcome,
    ) -> Option<ReloadOutcome> {
        let exe = executable_of(text).filter(|e| !is_running_binary(e))?;
        let mut outcome = outcome.clone();
        match check_binary(&exe, &self.path).await {
            Ok(()) => {
                tracing::info!(executable = %exe.display(), "handing over to a new supervisor binary; the UI keeps running");
                outcome.applied_live = vec!["supervisor.executable".into()];
                self.handoff = Some(Planned {
                    exe,
                    announced: false,
                });
                self.reload_rejected = None;
                Some(outcome)
            }
            Err(e) => {
                let why = format!(
                    "supervisor.executable: {e}; the running supervisor and its UI stay as they are"
                );
                tracing::error!(reason = %why, "reload rejected");
                Some(self.rejected(outcome, vec![why.clone()], Some(why)))
            }
        }
    }

    /// Called by `reload` once the reply is ready: whether it was a handoff
    /// (then the counters and `READY=1` are the new binary's).
    pub(super) fn handoff_planned(&mut self, announced: bool) -> bool {
        match self.handoff.as_mut() {
            Some(p) => {
                p.announced = announced;
                true
            }
            None => false,
        }
    }

    /// Whether the loop should end now: a planned handoff (not while a stop
    /// task holds the UI) or a service restart.
    pub(super) fn should_end(&self) -> bool {
        self.exit_service || (self.handoff.is_some() && !matches!(self.ui, Ui::Stopping { .. }))
    }

    /// Ends the loop's work: the handoff's state, or stops for good.
    pub(super) fn take_handoff(&mut self) -> Option<Handover> {
        let plan = self.handoff.take()?;
        let now = Instant::now();
        let (ui, ready, age) = match std::mem::replace(&mut self.ui, Ui::Down) {
            Ui::Starting { proc, since, .. } => (Some(proc.into_handoff()), false, since),
            Ui::Ready { proc, since, .. } => (Some(proc.into_handoff()), true, since),
            other => {
                self.ui = other;
                (None, false, now)
            }
        };
        let pending = self.pending.as_ref().map(|p| PendingState {
            reasons: p.reasons.clone(),
            policy: p.policy,
            since_unix: p.since_unix,
            deadline_unix: p.deadline_unix,
            deadline_in_ms: p.deadline.map(|d| ms(d.saturating_duration_since(now))),
        });
        let state = CoreState {
            ui_ready: ready,
            ui_age_ms: ms(now.duration_since(age)),
            ready_since_unix: self.ready_since_unix,
            queue: self.queue,
            config_generation: self.config_hash.clone(),
            pending,
            crash_ages_ms: self
                .crash_times
                .iter()
                .map(|t| ms(now.duration_since(*t)))
                .collect(),
            consecutive_crashes: self.consecutive_crashes,
            restarts: self.counters.restarts.clone(),
            crashes: self.counters.crashes,
            reloads: self.counters.reloads.clone(),
            last_reload: self.last_reload.clone(),
            reload_rejected: self.reload_rejected.clone(),
            last_time_to_ready_ms: self.last_time_to_ready_ms,
            sent_ready: self.sent_ready,
            reload_announced: plan.announced,
            uptime_ms: ms(self.started.elapsed()),
            conflicts: self.conflicts.clone(),
            start_reason: self.start_reason,
        };
        Some(Handover {
            exe: plan.exe,
            ui,
            config_text: String::from_utf8_lossy(&self.config_text).into_owned(),
            state,
        })
    }

    /// In the new binary, before [`Supervisor::run`]: take over what the old one
    /// handed over. `config_unknown`: the core was built from the config file
    /// because the running UI's config could not be read.
    pub fn adopt(&mut self, received: Received, config_unknown: bool) {
        self.adopting = Some((received, config_unknown));
    }

    /// The first step of a run after a handoff: restore, adopt the UI, reload
    /// the file (the old binary left that to us), tell systemd.
    pub(super) async fn finish_adoption(&mut self, received: Received, config_unknown: bool) {
        let now = Instant::now();
        let back = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        let state = received.state;
        let mut age = now;
        let mut ready = false;
        let announced;
        if let Some(s) = &state {
            ready = s.ui_ready;
            age = back(s.ui_age_ms);
            announced = s.reload_announced;
            self.started = back(s.uptime_ms);
            self.ready_since_unix = s.ready_since_unix;
            self.queue = s.queue;
            self.pending = s.pending.as_ref().map(|p| {
                let mut pending = Pending::new(p.reasons.clone(), p.policy, None);
                pending.since_unix = p.since_unix;
                pending.deadline_unix = p.deadline_unix;
                pending.deadline = p.deadline_in_ms.map(|d| now + Duration::from_millis(d));
                pending
            });
            self.crash_times = s.crash_ages_ms.iter().map(|a| back(*a)).collect();
            self.consecutive_crashes = s.consecutive_crashes;
            self.counters.restarts = s.restarts.clone();
            self.counters.crashes = s.crashes;
            self.counters.reloads = s.reloads.clone();
            self.last_reload = s.last_reload.clone();
            self.reload_rejected = s.reload_rejected.clone();
            self.last_time_to_ready_ms = s.last_time_to_ready_ms;
            self.sent_ready = s.sent_ready;
            self.conflicts = s.conflicts.clone();
            self.start_reason = s.start_reason;
        } else {
            // Never announce a start: systemd has long seen us ready.
            self.sent_ready = true;
            announced = true;
        }
        match received.envelope.ui {
            Some(handle) => self.adopt_ui(handle, ready, age),
            None => self.start_ui().await,
        }
        let outcome = self.reload_inner().await;
        *self.counters.reloads.entry(outcome.result).or_default() += 1;
        tracing::info!(result = %outcome.result, live = ?outcome.applied_live, restart = ?outcome.needs_restart, state_known = state.is_some(), "handoff complete: running the new binary");
        self.last_reload = Some(outcome);
        if config_unknown && matches!(self.ui, Ui::Starting { .. } | Ui::Ready { .. }) {
            self.schedule(vec![UNKNOWN_CONFIG.into()], RestartPolicy::WhenIdle)
                .await;
        }
        self.publish();
        if announced || self.sent_ready {
            self.notifier.ready();
        }
    }

    fn adopt_ui(&mut self, handle: crate::handoff::state::UiHandle, ready: bool, since: Instant) {
        let guard = handle.guard.and_then(|g| {
            // SAFETY: F_GETFD only checks that the handed-over number is open.
            let open = unsafe { libc::fcntl(g.fd, libc::F_GETFD) } >= 0;
            // SAFETY: an open descriptor handed to this binary to own.
            open.then(|| GroupGuard::adopt(g.pid, unsafe { OwnedFd::from_raw_fd(g.fd) }))
        });
        let proc = match UiProcess::adopt(handle.pid, guard) {
            Ok(proc) => proc,
            Err(e) => {
                tracing::error!(pid = handle.pid, error = %e, "cannot adopt the UI");
                self.record_crash(format!("UI (pid {}) could not be adopted: {e}", handle.pid));
                return;
            }
        };
        let auth = api_auth(&self.config).ok().flatten();
        let probe = Probe::new(self.config.ui.flavor, self.config.ui.port, auth);
        tracing::info!(pid = handle.pid, ready, "adopted the running UI");
        self.next_probe = Instant::now();
        self.probe_in_flight = false;
        self.ui = if ready {
            let signal = (self.config.ui.flavor == Flavor::Comfyui).then(|| {
                let events = self.events.clone();
                QueueSignal::start(self.config.ui.port, move |n| {
                    let _ = events.send(super::Event::QueueChanged(n));
                })
            });
            Ui::Ready {
                proc,
                probe,
                since,
                _signal: signal,
            }
        } else {
            Ui::Starting { proc, probe, since }
        };
    }

    /// A reload changed the unit's fingerprint: a service restart is owed.
    pub(super) fn unit_changed(old: &Config, new: &Config) -> bool {
        new.supervisor.unit_fingerprint.is_some()
            && new.supervisor.unit_fingerprint != old.supervisor.unit_fingerprint
    }

    /// Whether carrying out the pending restart means restarting the service.
    pub(super) fn restart_is_service(reasons: &[String]) -> bool {
        reasons.iter().any(|r| r == UNIT_CHANGED)
    }

    /// The UI is stopped for a service restart: end the loop.
    pub(super) fn exit_for_service_restart(&mut self) {
        tracing::info!(
            status = crate::handoff::EXIT_SERVICE_RESTART,
            "the service unit changed; exiting for systemd to start the new unit"
        );
        self.exit_service = true;
        self.pending = None;
    }
}
