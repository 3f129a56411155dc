//! Reload and restart: validate the new config first, put it in force, lay it out
//! and apply what can be applied live (settings, model refreshes), and schedule
//! what needs a UI restart under `restart.policy` ([`super::pending`]) — a running
//! generation is never interrupted by a reload.

use std::collections::BTreeSet;
use std::time::Instant;

use tokio::sync::oneshot;

use super::pending::Pending;
use super::protocol::RestartCause;
use super::timers::unix_now;
use super::work::{AfterStop, Event};
use super::{LayoutWaiter, Supervisor, Ui, config_hash};
use crate::config::diff::diff;
use crate::config::{Config, RestartPolicy};
use crate::supervisor::protocol::{ReloadOutcome, ReloadResult, RestartReason, RestartWhen};

/// A reload whose config is in force and waits for its layout.
#[derive(Debug)]
pub(super) struct Applying {
    reply: Reply,
    outcome: ReloadOutcome,
    settings: serde_json::Map<String, serde_json::Value>,
    refresh: BTreeSet<&'static str>,
}

/// Who gets a reload's outcome, and whether systemd was told it began.
#[derive(Debug)]
pub(super) struct Reply {
    to: oneshot::Sender<ReloadOutcome>,
    announced: bool,
}

impl Reply {
    /// A reply to `to`; `announced`: `READY=1` is owed when it is answered.
    pub(super) fn new(to: oneshot::Sender<ReloadOutcome>, announced: bool) -> Reply {
        Reply { to, announced }
    }

    /// Whether `RELOADING=1` went out for this reload.
    pub(super) fn announced(&self) -> bool {
        self.announced
    }

    /// Sends the outcome without counting it or `READY=1` (a handoff: the new
    /// binary does both).
    pub(super) fn send_only(self, outcome: ReloadOutcome) {
        let _ = self.to.send(outcome);
    }
}

/// A config file's parse: the config, or everything wrong with it.
pub(super) type Parsed = Result<Box<Config>, crate::config::ConfigError>;

impl Supervisor {
    /// Reloads the config: `RELOADING=1`+`MONOTONIC_USEC` now, `READY=1` once
    /// validation, scheduling and the layout are done (never the queue, never the
    /// UI's answers). `text`: the file's bytes if the caller read them.
    ///
    /// Every reload is announced, whoever asked: systemd shows the truth, and
    /// `MONOTONIC_USEC` lets it tell a watcher's reload that began before its own
    /// SIGHUP from the answer to that SIGHUP (which then finds the content
    /// unchanged and is still announced, as `systemctl reload` waits for it).
    pub(super) fn reload(
        &mut self,
        text: Option<Vec<u8>>,
        parsed: Option<Box<Config>>,
        reply: oneshot::Sender<ReloadOutcome>,
    ) {
        // Before the first READY=1 systemd is still starting us: a reload announced
        // now would end the start job early.
        let announced = self.life.sent_ready;
        if announced {
            self.notifier.reloading();
        }
        let reply = Reply {
            to: reply,
            announced,
        };
        match text {
            Some(text) => self.reload_parsed(Ok(text), parsed.map(Ok), reply),
            None => {
                self.reloads.in_flight = self.reloads.in_flight.saturating_add(1);
                let path = self.source.path.clone();
                self.tasks.spawn(async move {
                    let text = tokio::fs::read(&path).await;
                    let parsed = match &text {
                        Ok(bytes) => {
                            let bytes = bytes.clone();
                            tokio::task::spawn_blocking(move || {
                                Config::from_bytes(&path, &bytes).map(Box::new)
                            })
                            .await
                            .ok()
                        }
                        Err(_) => None,
                    };
                    Event::ConfigRead {
                        text,
                        parsed,
                        reply,
                    }
                });
            }
        }
    }

    /// The config file's bytes are here: validate, diff, put in force.
    pub(super) fn reload_bytes(&mut self, text: std::io::Result<Vec<u8>>, reply: Reply) {
        self.reload_parsed(text, None, reply);
    }

    /// [`Self::reload_bytes`] with the bytes' parse when the reader made one
    /// (`None`: parsed here).
    pub(super) fn reload_parsed(
        &mut self,
        text: std::io::Result<Vec<u8>>,
        parsed: Option<Parsed>,
        reply: Reply,
    ) {
        let mut outcome = ReloadOutcome {
            result: ReloadResult::Applied,
            at_unix: unix_now(),
            errors: Vec::new(),
            applied_live: Vec::new(),
            needs_restart: Vec::new(),
            unknown_settings: Vec::new(),
            next_start: Vec::new(),
        };
        let text = match text {
            Ok(t) => t,
            Err(e) => {
                let errors = vec![format!("{}: cannot read: {e}", self.source.path.display())];
                let outcome = self.rejected(outcome, errors, None);
                return self.answer(reply, outcome);
            }
        };
        let hash = config_hash(&text);
        if hash == self.source.hash {
            self.reloads.rejected = None;
            outcome.result = ReloadResult::Unchanged;
            return self.answer(reply, outcome);
        }
        let (reply, mut outcome) = match self.handoff_reload(&text, reply, outcome) {
            Some(going_on) => going_on,
            None => return,
        };
        let parsed =
            parsed.unwrap_or_else(|| Config::from_bytes(&self.source.path, &text).map(Box::new));
        let mut new = match parsed {
            Ok(c) => self.derive_reloaded(*c),
            Err(e) => {
                tracing::error!("reload rejected, keeping the running config:\n{e}");
                let summary = e.summary();
                let errors = e.to_string().lines().map(String::from).collect();
                let outcome = self.rejected(outcome, errors, Some(summary));
                return self.answer(reply, outcome);
            }
        };
        let change = diff(&self.config, &new);
        crate::config::FrontConfig::carry_over(&self.config, &mut new);
        // With instances the leader alone restarts the service (for a new
        // unit, or a new binary: the handoff carries one UI).
        let unit_changed = self.leads() && Supervisor::unit_changed(&self.config, &new);
        let upgrade = self.member.is_some() && self.leads() && self.new_binary(&text);
        let running_flavor =
            matches!(self.slot.ui, Ui::Ready { .. }).then_some(self.config.ui.flavor);
        self.config = new;
        self.source.hash = hash;
        self.source.text = text;
        // Before the relayout, after which the core sweeps the files of dropped
        // downloads.
        self.apply_downloads();
        self.reloads.rejected = None;
        self.images_config_changed();
        if change.is_empty() && !upgrade {
            outcome.result = ReloadResult::Unchanged;
            return self.answer(reply, outcome);
        }
        outcome.applied_live = change.live_changes();
        outcome
            .applied_live
            .extend(change.supervisor_only.iter().cloned());
        outcome.needs_restart = change.restart_reasons.clone();
        if unit_changed {
            outcome
                .needs_restart
                .push(RestartCause::UnitChanged.name().to_owned());
        }
        if upgrade {
            outcome
                .needs_restart
                .push(RestartCause::Upgrade.name().to_owned());
        }
        outcome.next_start = change.next_start.clone();
        if !outcome.next_start.is_empty() {
            tracing::warn!(changed = ?outcome.next_start, "these changes take effect when the daemon next starts");
        }
        let live = running_flavor.filter(|f| f.has_options_api());
        let applying = Applying {
            reply,
            outcome,
            settings: if live.is_some() {
                change.settings_changed.clone()
            } else {
                serde_json::Map::new()
            },
            refresh: live
                .map(|f| change.refresh_endpoints(f).into_iter().collect())
                .unwrap_or_default(),
        };
        if change.needs_restart() {
            let causes = change
                .restart_reasons
                .iter()
                .map(|k| RestartCause::Key(k.clone()));
            self.schedule(causes.collect(), self.config.restart.policy);
        }
        if unit_changed {
            tracing::info!("the service unit changed: a service restart is pending");
            self.schedule(vec![RestartCause::UnitChanged], self.config.restart.policy);
        }
        if upgrade {
            tracing::info!(
                "a new supervisor binary with instances: the service restarts once every instance is idle"
            );
            self.schedule(vec![RestartCause::Upgrade], self.config.restart.policy);
        }
        self.request_layout(Some(LayoutWaiter::Reload(applying)));
    }

    /// The reload's config is laid out: send the live part, answer.
    pub(super) fn finish_reload(&mut self, applying: Applying, layout_error: Option<String>) {
        let Applying {
            reply,
            mut outcome,
            settings,
            refresh,
        } = applying;
        if let Some(e) = layout_error {
            tracing::error!(error = %e, "relayout during reload failed");
            outcome.errors.push(e);
        }
        if let Ui::Ready { probe, .. } = &self.slot.ui {
            // Only the routes the UI has; the calls wait for the UI's queue lock,
            // so they run in a task and report back (super::refresh).
            let probe = probe.clone();
            let refresh = self.slot.refresh.callable(refresh);
            self.spawn_refresh(probe, refresh);
            self.sync_settings(settings);
        }
        self.answer(reply, outcome);
    }

    /// Counts, logs and publishes a reload's outcome, then answers it.
    pub(super) fn answer(&mut self, reply: Reply, outcome: ReloadOutcome) {
        *self.counters.reloads.entry(outcome.result).or_default() += 1;
        // A rejected reload is a warning: `journalctl -p warning` shows it.
        if outcome.result == ReloadResult::Rejected {
            tracing::warn!(reload_result = %outcome.result, errors = ?outcome.errors, "reload rejected");
        } else {
            tracing::info!(reload_result = %outcome.result, live = ?outcome.applied_live, restart = ?outcome.needs_restart, "reload");
        }
        self.reloads.last = Some(outcome.clone());
        self.publish();
        if reply.announced {
            self.notifier.ready();
        }
        let _ = reply.to.send(outcome);
    }

    pub(super) fn rejected(
        &mut self,
        mut outcome: ReloadOutcome,
        errors: Vec<String>,
        summary: Option<String>,
    ) -> ReloadOutcome {
        self.reloads.rejected =
            Some(summary.unwrap_or_else(|| errors.first().cloned().unwrap_or_default()));
        outcome.result = ReloadResult::Rejected;
        outcome.errors = errors;
        outcome
    }

    /// Adds reasons to the pending restart (merging several reloads into one).
    pub(super) fn schedule(&mut self, reasons: Vec<RestartCause>, policy: RestartPolicy) {
        match self.slot.ui {
            Ui::Ready { .. } | Ui::Starting { .. } | Ui::Stopping { .. } => {}
            _ => {
                // No UI runs (preparing, backoff, waiting, failed): start the new
                // config right away (a start under way begins again).
                if Supervisor::restart_is_service(&reasons) {
                    if self.may_restart(true) {
                        self.exit_for_service_restart();
                    } else {
                        // With instances the others may be busy: owed until
                        // they are idle (`instances.rs`).
                        let deadline = self.config.restart.deadline;
                        self.pending
                            .get_or_insert_with(|| Pending::new(Instant::now(), policy, deadline))
                            .merge(reasons, policy);
                    }
                    return;
                }
                tracing::info!(reasons = ?reasons, "no UI running; starting with the new config");
                self.slot.crashes.clear();
                self.start_ui();
                return;
            }
        }
        let deadline_after = self.config.restart.deadline;
        let p = self
            .pending
            .get_or_insert_with(|| Pending::new(Instant::now(), policy, deadline_after));
        p.merge(reasons, policy);
        // A UI still counted as starting may already have accepted a job (it
        // answers before our next readiness probe): it waits like a ready one.
        let (now, service) = (
            p.policy == RestartPolicy::Immediately,
            Supervisor::restart_is_service(&p.reasons),
        );
        if now && self.may_restart(service) {
            self.restart_now(RestartReason::Config, false);
        } else {
            self.check_pending(Instant::now());
        }
    }

    /// Carries out the pending restart now; `planned`: see
    /// [`Supervisor::answers_wait`].
    pub(super) fn restart_now(&mut self, counter: RestartReason, planned: bool) {
        let Some(p) = self.pending.take() else { return };
        let why = format!("restarting: {}", RestartCause::describe_all(&p.reasons));
        self.slot.start_reason = Some(counter);
        let service = Supervisor::restart_is_service(&p.reasons);
        if matches!(self.slot.ui, Ui::Stopping { .. }) {
            // A stop is under way; its follow-up start uses the newest config.
            // A service restart stays owed: the new unit needs a new process.
            if service {
                self.pending = Some(p);
            }
            return;
        }
        let then = if service {
            AfterStop::ExitService
        } else {
            AfterStop::Start
        };
        let wait = self.answers_wait(planned);
        self.begin_stop(why, then, wait);
    }

    /// `restart --now` / `--when-idle` from the control plane.
    pub(super) fn request_restart(&mut self, when: RestartWhen) {
        match (&self.slot.ui, when) {
            (Ui::Ready { .. } | Ui::Starting { .. }, RestartWhen::Now) => {
                self.pending.get_or_insert_with(|| {
                    let mut p = Pending::new(Instant::now(), RestartPolicy::Immediately, None);
                    p.merge(vec![RestartCause::Requested], RestartPolicy::Immediately);
                    p
                });
                self.restart_now(RestartReason::Requested, true);
            }
            (Ui::Ready { .. } | Ui::Starting { .. } | Ui::Stopping { .. }, RestartWhen::Idle) => {
                self.schedule(vec![RestartCause::Requested], RestartPolicy::WhenIdle);
            }
            (Ui::Stopping { .. }, RestartWhen::Now) => {}
            _ => {
                // Failed, waiting, backing off or preparing: start now with a
                // clean crash record.
                self.slot.start_reason = Some(RestartReason::Requested);
                self.slot.crashes.clear();
                self.start_ui();
            }
        }
    }
}
