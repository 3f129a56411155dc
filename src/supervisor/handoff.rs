//! The core's side of a self-upgrade (see [`crate::handoff`]): deciding that a
//! reload hands over to a new binary, checking that binary, exporting the state
//! when the loop ends for it, and adopting that state in the new binary.
//!
//! Also the deferred service restart: a changed `[supervisor] unit_fingerprint`
//! is a pending restart like any other (same policy, grace and deadline), but
//! carrying it out stops the UI and ends the supervisor with
//! [`EXIT_SERVICE_RESTART`](crate::handoff::EXIT_SERVICE_RESTART), so systemd
//! starts the service again under the new unit.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::crash::CrashRecord;
use super::pending::Pending;
use super::reconfigure::Reply;
use super::work::Event;
use super::{Probing, Supervisor, Ui};
use crate::config::{Config, RestartPolicy};
use crate::handoff::check::{CheckError, check_binary};
use crate::handoff::state::{CoreState, Received, UiHandle, own_fd};
use crate::supervisor::protocol::ReloadOutcome;
use crate::supervisor::protocol::RestartCause;
use crate::ui::api::Probe;
use crate::ui::comfy_ws::QueueSignal;
use crate::ui::flavor::Flavor;
use crate::ui::guard::GroupGuard;
use crate::ui::process::{HandedOver, UiProcess};

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
    /// The UI's pid, group guard and output pipes, if a UI runs.
    pub ui: Option<HandedOver>,
    /// The config text the running UI has.
    pub config_text: String,
    /// The rest of the core's state.
    pub state: CoreState,
}

/// A handoff decided by a reload, carried out when the loop can end.
#[derive(Debug)]
pub(super) struct Planned {
    exe: PathBuf,
    /// When it was planned: the wait for the front door's requests is bounded
    /// from here.
    at: Instant,
    /// The reload announced `RELOADING=1`; the new binary sends `READY=1`.
    announced: bool,
}

/// What the new binary takes over when its loop starts.
#[derive(Debug)]
pub(super) struct Adopting {
    received: Received,
    /// The core was built from the file: the running UI's config is unknown.
    config_unknown: bool,
    /// The config file as the new binary read it.
    file_text: Vec<u8>,
}

/// The outcome of a new binary's `handoff-check`, back in the loop.
#[derive(Debug)]
pub struct Checked {
    exe: PathBuf,
    result: Result<(), CheckError>,
    reply: Reply,
    outcome: ReloadOutcome,
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
    /// A reload whose file names another executable: check that binary in a
    /// task (the reload is answered when the check is done). `Some`: not a
    /// handoff, the reload goes on.
    pub(super) fn handoff_reload(
        &mut self,
        text: &[u8],
        reply: Reply,
        outcome: ReloadOutcome,
    ) -> Option<(Reply, ReloadOutcome)> {
        if self.upgrade.planned.is_some() {
            // A handoff is planned: the new binary applies this file too.
            let mut outcome = outcome;
            outcome.applied_live = vec!["supervisor.executable".into()];
            reply.send_only(outcome);
            return None;
        }
        // With instances a new binary restarts the service once all are idle
        // (`reconfigure.rs`): the handoff carries one UI.
        let exe = executable_of(text).filter(|e| !is_running_binary(e));
        let Some(exe) = exe.filter(|_| self.member.is_none()) else {
            return Some((reply, outcome));
        };
        self.reloads.in_flight = self.reloads.in_flight.saturating_add(1);
        let path = self.source.path.clone();
        self.tasks.spawn(async move {
            let result = check_binary(&exe, &path).await;
            Event::HandoffChecked(Checked {
                exe,
                result,
                reply,
                outcome,
            })
        });
        None
    }

    /// The check is done: plan the handoff (the loop ends at its next turn and
    /// the new binary applies the file), or reject the reload.
    pub(super) fn on_handoff_checked(&mut self, checked: Checked) {
        let Checked {
            exe,
            result,
            reply,
            mut outcome,
        } = checked;
        self.reloads.in_flight = self.reloads.in_flight.saturating_sub(1);
        if self.upgrade.planned.is_some() {
            outcome.applied_live = vec!["supervisor.executable".into()];
            reply.send_only(outcome);
            return;
        }
        match result {
            Ok(()) => {
                tracing::info!(executable = %exe.display(), "handing over to a new supervisor binary; the UI keeps running");
                outcome.applied_live = vec!["supervisor.executable".into()];
                self.upgrade.planned = Some(Planned {
                    exe,
                    at: Instant::now(),
                    announced: reply.announced(),
                });
                self.reloads.rejected = None;
                reply.send_only(outcome);
            }
            Err(e) => {
                let why = format!(
                    "supervisor.executable: {e}; the running supervisor and its UI stay as they are"
                );
                tracing::error!(reason = %why, "reload rejected");
                let outcome = self.rejected(outcome, vec![why.clone()], Some(why));
                self.answer(reply, outcome);
            }
        }
    }

    /// Whether the loop should end now: a planned handoff (not while a stop
    /// task holds the UI, nor while the front door has requests in flight, up to
    /// `front.hold_timeout`) or a service restart.
    pub(super) fn should_end(&self) -> bool {
        self.life.exit_service
            || (self.upgrade.planned.is_some()
                && self.reloads.in_flight == 0
                && !matches!(self.slot.ui, Ui::Stopping { .. })
                && (self.front.in_flight == 0
                    || self
                        .handoff_front_bound()
                        .is_some_and(|t| Instant::now() >= t)))
    }

    /// When a planned handoff stops waiting for the front door's requests.
    pub(super) fn handoff_front_bound(&self) -> Option<Instant> {
        let plan = self.upgrade.planned.as_ref()?;
        (self.front.in_flight > 0)
            .then(|| super::timers::after(plan.at, self.config.front.hold_timeout))
            .flatten()
    }

    /// Lets a self-upgrade wait for the front door's requests in flight, and a
    /// planned stop for the answers the UI is sending.
    pub fn watch_front(
        &mut self,
        busy: tokio::sync::watch::Receiver<usize>,
        answers: crate::front::Answers,
    ) {
        self.front.in_flight = *busy.borrow();
        self.front.busy = Some(busy);
        self.front.answers = Some(answers);
    }

    /// The loop ended for a handoff: give the UI up and export the state.
    pub(super) fn take_handoff(&mut self) -> Option<Handover> {
        let plan = self.upgrade.planned.take()?;
        let now = Instant::now();
        let (ui, ready, since) = match std::mem::replace(&mut self.slot.ui, Ui::Down) {
            Ui::Starting { proc, since, .. } => (Some(proc.into_handoff()), false, since),
            Ui::Ready { proc, since, .. } => (Some(proc.into_handoff()), true, since),
            other => {
                self.slot.ui = other;
                (None, false, now)
            }
        };
        // Nothing the tasks would report can reach the new binary.
        self.tasks.abort_all();
        let (crash_ages_ms, consecutive_crashes) = self.slot.crashes.handed_over(now);
        let state = CoreState {
            ui_ready: ready,
            ui_age_ms: ms(now.saturating_duration_since(since)),
            ready_since_unix: self.slot.ready_since_unix,
            queue: self.slot.probing.queue,
            config_generation: self.source.hash.clone(),
            pending: self.pending.as_ref().map(|p| p.handed_over(now)),
            crash_ages_ms,
            consecutive_crashes,
            restarts: self.counters.restarts.clone(),
            crashes: self.counters.crashes,
            reloads: self.counters.reloads.clone(),
            last_reload: self.reloads.last.clone(),
            reload_rejected: self.reloads.rejected.clone(),
            last_time_to_ready_ms: self.slot.last_time_to_ready_ms,
            sent_ready: self.life.sent_ready,
            reload_announced: plan.announced,
            uptime_ms: ms(now.saturating_duration_since(self.life.started)),
            conflicts: self.layout.conflicts.clone(),
            start_reason: self.slot.start_reason,
        };
        Some(Handover {
            exe: plan.exe,
            ui,
            config_text: String::from_utf8_lossy(&self.source.text).into_owned(),
            state,
        })
    }

    /// In the new binary, before [`Supervisor::run`]: take over what the old one
    /// handed over. `config_unknown`: the core was built from the config file
    /// because the running UI's config could not be read; `file_text`: the file
    /// as read now, which the first step reloads.
    pub fn adopt(&mut self, received: Received, config_unknown: bool, file_text: Vec<u8>) {
        self.upgrade.adopting = Some(Adopting {
            received,
            config_unknown,
            file_text,
        });
    }

    /// The first step of a run after a handoff: restore, adopt the UI, reload
    /// the file (the old binary left that to us); the reload's answer sends
    /// `READY=1`, completing a `systemctl reload`.
    pub(super) fn finish_adoption(&mut self, adopting: Adopting) {
        let Adopting {
            received,
            config_unknown,
            file_text,
        } = adopting;
        let now = Instant::now();
        let back = |ms: u64| now.checked_sub(Duration::from_millis(ms)).unwrap_or(now);
        let state = received.state;
        let (ready, since, announce) = match &state {
            Some(s) => {
                self.life.started = back(s.uptime_ms);
                self.slot.ready_since_unix = s.ready_since_unix;
                self.slot.probing = Probing {
                    queue: s.queue,
                    ..Probing::default()
                };
                self.pending = s.pending.as_ref().map(|p| Pending::taken_over(p, now));
                self.slot.crashes =
                    CrashRecord::taken_over(&s.crash_ages_ms, s.consecutive_crashes, now);
                self.counters.restarts = s.restarts.clone();
                self.counters.crashes = s.crashes;
                self.counters.reloads = s.reloads.clone();
                self.reloads.last = s.last_reload.clone();
                self.reloads.rejected = s.reload_rejected.clone();
                self.slot.last_time_to_ready_ms = s.last_time_to_ready_ms;
                self.life.sent_ready = s.sent_ready;
                self.layout.conflicts = s.conflicts.clone();
                self.slot.start_reason = s.start_reason;
                (
                    s.ui_ready,
                    back(s.ui_age_ms),
                    s.reload_announced || s.sent_ready,
                )
            }
            // Never announce a start: systemd has long seen us ready.
            None => {
                self.life.sent_ready = true;
                (false, now, true)
            }
        };
        if self.life.sent_ready {
            self.timers.ready_sent();
        }
        match received.envelope.ui {
            Some(handle) => self.adopt_ui(handle, ready, since),
            None => self.start_ui(),
        }
        tracing::info!(
            state_known = state.is_some(),
            "took over from the previous binary; reloading the config file"
        );
        // Nobody waits for this reload's answer but systemd (READY=1).
        let (to, _) = oneshot::channel();
        self.reload_bytes(Ok(file_text), Reply::new(to, announce));
        if config_unknown && matches!(self.slot.ui, Ui::Starting { .. } | Ui::Ready { .. }) {
            self.schedule(vec![RestartCause::ConfigUnknown], RestartPolicy::WhenIdle);
        }
    }

    fn adopt_ui(&mut self, handle: UiHandle, ready: bool, since: Instant) {
        let guard = handle
            .guard
            .and_then(|g| own_fd(g.fd).map(|fd| GroupGuard::adopt(g.pid, fd)));
        let handed = HandedOver {
            pid: handle.pid,
            guard,
            stdout: handle.stdout_fd.and_then(own_fd),
            stderr: handle.stderr_fd.and_then(own_fd),
        };
        // The credentials file is small; this runs once, before the loop.
        let prepared = crate::ui::launch::prepare(&self.config).ok();
        let redactor = prepared
            .as_ref()
            .map(|p| p.redactor.clone())
            .unwrap_or_default();
        let proc = match UiProcess::adopt(handed, &redactor) {
            Ok(proc) => proc,
            Err(e) => {
                tracing::error!(pid = handle.pid, error = %e, "cannot adopt the UI");
                self.record_crash(
                    format!("UI (pid {}) could not be adopted: {e}", handle.pid),
                    crate::supervisor::protocol::RestartReason::Crash,
                );
                return;
            }
        };
        let auth = prepared.and_then(|p| p.auth);
        let probe = Probe::new(self.config.ui.flavor, self.config.ui_own_port(), auth);
        tracing::info!(pid = handle.pid, ready, "adopted the running UI");
        self.timers.probe_at(Some(Instant::now()));
        self.slot.ui = if ready {
            let signal = (self.config.ui.flavor == Flavor::Comfyui).then(|| {
                let events = self.signals.clone();
                QueueSignal::start(self.config.ui_own_port(), move |news| {
                    let _ = events.send(Event::from(news));
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
        // The refresh routes are this binary's to learn (the old one's died with it).
        if let Ui::Ready { probe, .. } = &self.slot.ui {
            let probe = probe.clone();
            self.learn_routes(probe);
        }
    }

    /// A reload changed the unit's fingerprint: a service restart is owed.
    pub(super) fn unit_changed(old: &Config, new: &Config) -> bool {
        new.supervisor.unit_fingerprint.is_some()
            && new.supervisor.unit_fingerprint != old.supervisor.unit_fingerprint
    }

    /// Whether carrying out the pending restart means restarting the service.
    pub(super) fn restart_is_service(reasons: &[RestartCause]) -> bool {
        reasons.contains(&RestartCause::UnitChanged) || reasons.contains(&RestartCause::Upgrade)
    }

    /// Whether `text` names a supervisor binary other than this one.
    pub(super) fn new_binary(&self, text: &[u8]) -> bool {
        executable_of(text).is_some_and(|e| !is_running_binary(&e))
    }

    /// The UI is stopped for a service restart: end the loop.
    pub(super) fn exit_for_service_restart(&mut self) {
        tracing::info!(
            status = crate::handoff::EXIT_SERVICE_RESTART,
            "the service unit changed; exiting for systemd to start the new unit"
        );
        self.life.exit_service = true;
        self.pending = None;
    }
}
