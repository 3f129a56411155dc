//! Reload and restart: validate the new config first, apply what can be applied
//! live (settings, model links), and schedule what needs a UI restart under
//! `restart.policy` — a running generation is never interrupted by a reload.

use std::collections::BTreeSet;
use std::time::Instant;

use super::lifecycle::AfterStop;
use super::{Pending, Supervisor, Ui, config_hash, unix_now};
use crate::config::diff::{ConfigDiff, diff};
use crate::config::{Config, RestartPolicy};
use crate::supervisor::protocol::{ReloadOutcome, ReloadResult, RestartReason, RestartWhen};

/// The pending-restart reason a `restart` request adds (the others are config keys).
const REQUESTED: &str = "requested";

impl Supervisor {
    /// Reloads the config file: `RELOADING=1`+`MONOTONIC_USEC`, then `READY=1` once
    /// validation, the live part and the scheduling are done (never the queue).
    ///
    /// Every reload is announced, whoever asked: systemd shows the truth, and
    /// `MONOTONIC_USEC` lets it tell a watcher's reload that began before its own
    /// SIGHUP from the answer to that SIGHUP (which then finds the content
    /// unchanged and is still announced, as `systemctl reload` waits for it).
    pub(super) async fn reload(&mut self) -> ReloadOutcome {
        // Before the first READY=1 systemd is still starting us: a reload announced
        // now would end the start job early.
        let announce = self.sent_ready;
        if announce {
            self.notifier.reloading();
        }
        let outcome = self.reload_inner().await;
        *self.counters.reloads.entry(outcome.result).or_default() += 1;
        tracing::info!(result = %outcome.result, live = ?outcome.applied_live, restart = ?outcome.needs_restart, "reload");
        self.last_reload = Some(outcome.clone());
        self.publish();
        if announce {
            self.notifier.ready();
        }
        outcome
    }

    async fn reload_inner(&mut self) -> ReloadOutcome {
        let mut outcome = ReloadOutcome {
            result: ReloadResult::Applied,
            at_unix: unix_now(),
            errors: Vec::new(),
            applied_live: Vec::new(),
            needs_restart: Vec::new(),
            unknown_settings: Vec::new(),
        };
        let text = match std::fs::read(&self.path) {
            Ok(t) => t,
            Err(e) => {
                return self.rejected(
                    outcome,
                    vec![format!("{}: cannot read: {e}", self.path.display())],
                    None,
                );
            }
        };
        let hash = config_hash(&text);
        if hash == self.config_hash {
            self.reload_rejected = None;
            outcome.result = ReloadResult::Unchanged;
            return outcome;
        }
        let new = match Config::from_bytes(&self.path, &text) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("reload rejected, keeping the running config:\n{e}");
                let summary = e.summary();
                return self.rejected(
                    outcome,
                    e.to_string().lines().map(String::from).collect(),
                    Some(summary),
                );
            }
        };
        let change = diff(&self.config, &new);
        self.config = new;
        self.config_hash = hash;
        // Before the relayout, whose sweep removes the files of dropped downloads.
        self.apply_downloads();
        self.reload_rejected = None;
        if change.is_empty() {
            outcome.result = ReloadResult::Unchanged;
            return outcome;
        }
        outcome.applied_live = change.live_changes();
        outcome
            .applied_live
            .extend(change.supervisor_only.iter().cloned());
        outcome.needs_restart = change.restart_reasons.clone();
        self.apply_live(&change, &mut outcome).await;
        if change.needs_restart() {
            self.schedule(change.restart_reasons.clone(), self.config.restart.policy)
                .await;
        }
        outcome
    }

    fn rejected(
        &mut self,
        mut outcome: ReloadOutcome,
        errors: Vec<String>,
        summary: Option<String>,
    ) -> ReloadOutcome {
        self.reload_rejected =
            Some(summary.unwrap_or_else(|| errors.first().cloned().unwrap_or_default()));
        outcome.result = ReloadResult::Rejected;
        outcome.errors = errors;
        outcome
    }

    /// Relayout (models, settings file, extension links), then the live API calls.
    async fn apply_live(&mut self, change: &ConfigDiff, outcome: &mut ReloadOutcome) {
        let running_flavor = match &self.ui {
            Ui::Ready { .. } => Some(self.config.ui.flavor),
            _ => None,
        };
        if let Err(e) = self.lay_out().await {
            tracing::error!(error = %e, "relayout during reload failed");
            outcome.errors.push(e);
        }
        let Ui::Ready { probe, .. } = &self.ui else {
            return;
        };
        let probe = probe.clone();
        let Some(flavor) = running_flavor.filter(|f| f.has_options_api()) else {
            return;
        };
        if !change.settings_changed.is_empty() {
            outcome.unknown_settings =
                send_settings(&probe, &change.settings_changed, &mut outcome.errors).await;
        }
        let endpoints: BTreeSet<&'static str> =
            change.refresh_endpoints(flavor).into_iter().collect();
        if !endpoints.is_empty() {
            // Refresh calls wait for the UI's queue lock: never block the reload on them.
            tokio::spawn(async move {
                for ep in endpoints {
                    match probe.refresh(ep).await {
                        Ok(()) => tracing::info!(endpoint = ep, "model list refreshed"),
                        Err(e) => tracing::warn!(endpoint = ep, error = %e, "model refresh failed"),
                    }
                }
            });
        }
    }
}

/// Sends changed settings the UI knows in one background POST; returns the keys it
/// does not know (never sent: A1111 answers 500 after applying the keys before it).
pub(super) async fn send_settings(
    probe: &crate::ui::api::Probe,
    changed: &serde_json::Map<String, serde_json::Value>,
    errors: &mut Vec<String>,
) -> Vec<String> {
    let known = match probe.options().await {
        Ok(known) => known,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the UI's options; settings apply at the next start");
            errors.push(format!("settings not applied live: {e}"));
            return Vec::new();
        }
    };
    let mut send = serde_json::Map::new();
    let mut unknown = Vec::new();
    for (k, v) in changed {
        if known.contains_key(k) {
            send.insert(k.clone(), v.clone());
        } else {
            tracing::warn!(key = %k, "setting not known to the UI; not sent (it stays in the settings file)");
            unknown.push(k.clone());
        }
    }
    if !send.is_empty() {
        let probe = probe.clone();
        tokio::spawn(async move {
            match probe.set_options(&send).await {
                Ok(()) => {
                    tracing::info!(keys = ?send.keys().collect::<Vec<_>>(), "settings applied live")
                }
                Err(e) => tracing::error!(error = %e, "applying settings live failed"),
            }
        });
    }
    unknown
}

impl Supervisor {
    /// Adds reasons to the pending restart (merging several reloads into one).
    pub(super) async fn schedule(&mut self, reasons: Vec<String>, policy: RestartPolicy) {
        if !matches!(
            self.ui,
            Ui::Ready { .. } | Ui::Starting { .. } | Ui::Stopping { .. }
        ) {
            // No UI runs (backoff, waiting, failed): start the new config right away.
            tracing::info!(reasons = ?reasons, "no UI running; starting with the new config");
            self.crash_times.clear();
            self.consecutive_crashes = 0;
            self.ui = Ui::Down;
            self.start_ui().await;
            return;
        }
        let deadline_after = self.config.restart.deadline;
        let p = self
            .pending
            .get_or_insert_with(|| Pending::new(Vec::new(), policy, deadline_after));
        if policy != RestartPolicy::Manual {
            p.policy = policy;
        }
        for r in reasons {
            if !p.reasons.contains(&r) {
                p.reasons.push(r);
            }
        }
        // A UI still counted as starting may already have accepted a job (it
        // answers before our next readiness probe): it waits like a ready one.
        if p.policy == RestartPolicy::Immediately {
            self.restart_now(RestartReason::Config);
        }
    }

    /// Carries out the pending restart now.
    fn restart_now(&mut self, counter: RestartReason) {
        let Some(p) = self.pending.take() else { return };
        let why = format!("restarting for {}", p.reasons.join(", "));
        self.start_reason = Some(counter);
        if matches!(self.ui, Ui::Stopping { .. }) {
            // A stop is under way; its follow-up start uses the newest config.
            return;
        }
        self.begin_stop(why, AfterStop::Start);
    }

    /// Decides whether a pending `when-idle` restart is due: queue empty for
    /// `idle_grace`, or the deadline passed.
    pub(super) fn check_pending(&mut self, now: Instant) {
        let grace = self.config.restart.idle_grace;
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if p.policy == RestartPolicy::Manual || !matches!(self.ui, Ui::Ready { .. }) {
            return;
        }
        if p.deadline.is_some_and(|d| now >= d) {
            tracing::warn!(reasons = ?p.reasons, "restart deadline passed; restarting although the UI may be busy");
            self.restart_now(RestartReason::Config);
            return;
        }
        // A reading taken before the restart was scheduled says nothing about
        // jobs submitted since.
        let current = self.queue_sent.is_some_and(|sent| sent >= p.created);
        match self.queue {
            Some(q) if q.is_idle() && current => {
                let since = *p.idle_since.get_or_insert(now);
                // Act only on a reading taken after the grace ended: a job may
                // have arrived since the probe that started it.
                let fresh = self.queue_sent.is_some_and(|sent| sent >= since + grace);
                if now.duration_since(since) >= grace && fresh {
                    let counter = if p.reasons.iter().all(|r| r == REQUESTED) {
                        RestartReason::Requested
                    } else {
                        RestartReason::Config
                    };
                    self.restart_now(counter);
                } else {
                    // Probe again right when the grace ends, to confirm the queue is still empty.
                    self.next_probe = self.next_probe.min(since + grace);
                }
            }
            _ => p.idle_since = None,
        }
    }

    /// `restart --now` / `--when-idle` from the control plane.
    pub(super) async fn request_restart(&mut self, when: RestartWhen) {
        match (&self.ui, when) {
            (Ui::Ready { .. } | Ui::Starting { .. }, RestartWhen::Now) => {
                self.pending.get_or_insert_with(|| {
                    Pending::new(vec![REQUESTED.into()], RestartPolicy::Immediately, None)
                });
                self.restart_now(RestartReason::Requested);
            }
            (Ui::Ready { .. } | Ui::Starting { .. } | Ui::Stopping { .. }, RestartWhen::Idle) => {
                self.schedule(vec![REQUESTED.into()], RestartPolicy::WhenIdle)
                    .await;
            }
            (Ui::Stopping { .. }, RestartWhen::Now) => {}
            _ => {
                // Failed, waiting or backing off: start now with a clean crash record.
                self.start_reason = Some(RestartReason::Requested);
                self.crash_times.clear();
                self.consecutive_crashes = 0;
                self.ui = Ui::Down;
                self.start_ui().await;
            }
        }
    }
}
