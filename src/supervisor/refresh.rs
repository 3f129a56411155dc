//! Model-list refreshes that fit the running UI: which refresh routes it really
//! has (learned from its `/openapi.json` once ready — real Forge has no lora routes,
//! ui-apis.md §10), and failed refreshes as a soft condition in the status and the
//! metrics instead of a warning on every reload.

use std::collections::{BTreeMap, BTreeSet};

use super::Supervisor;
use super::work::Event;
use crate::config::diff::ConfigDiff;
use crate::ui::api::{Probe, ProbeError};
use crate::ui::flavor::ModelKind;

/// What the core knows about the running UI's refresh routes and their failures.
#[derive(Debug, Default)]
pub(super) struct RefreshState {
    /// POST routes of the running UI; `None` until learned (or when the UI has no
    /// schema), in which case every refresh route is tried.
    routes: Option<BTreeSet<String>>,
    /// Endpoint → why its last call failed.
    failed: BTreeMap<&'static str, String>,
    /// Failed refresh calls since the supervisor started.
    pub(super) failures: u64,
    /// Model kinds linked while the UI was starting: it listed its models
    /// before they were there, so they are refreshed once it is ready.
    after_ready: BTreeSet<ModelKind>,
}

impl RefreshState {
    /// A new UI process starts: its routes are learned again (they may differ
    /// from the last one's), and it lists every model linked so far itself.
    pub(super) fn ui_launched(&mut self) {
        self.routes = None;
        self.after_ready.clear();
    }

    /// `kinds` were linked after the starting UI listed its models.
    pub(super) fn refresh_once_ready(&mut self, kinds: impl IntoIterator<Item = ModelKind>) {
        self.after_ready.extend(kinds);
    }

    /// The endpoints among `wanted` the running UI has.
    pub(super) fn callable(
        &self,
        wanted: impl IntoIterator<Item = &'static str>,
    ) -> BTreeSet<&'static str> {
        wanted
            .into_iter()
            .filter(|ep| self.routes.as_ref().is_none_or(|r| r.contains(*ep)))
            .collect()
    }

    /// The soft condition for the status: every endpoint whose last call failed.
    pub(super) fn failed(&self) -> Option<String> {
        (!self.failed.is_empty()).then(|| {
            self.failed
                .iter()
                .map(|(ep, why)| format!("{ep}: {why}"))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

impl Supervisor {
    /// Asks the ready UI which routes it has (Forge/A1111 only); the answer comes
    /// back as [`Event::Routes`].
    pub(super) fn learn_routes(&mut self, probe: Probe) {
        if !self.config.ui.flavor.has_options_api() {
            self.refresh_linked_while_starting(probe);
            return;
        }
        self.tasks.spawn(async move {
            let routes = match probe.post_routes().await {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::debug!(error = %e, "no route list from the UI; every refresh route will be tried");
                    None
                }
            };
            Event::Routes(routes)
        });
    }

    /// Records the routes learned by [`Supervisor::learn_routes`].
    pub(super) fn on_routes(&mut self, routes: Option<BTreeSet<String>>) {
        if let Some(r) = &routes {
            let missing: Vec<&str> = crate::ui::flavor::ModelKind::ALL
                .iter()
                .filter_map(|k| k.refresh_endpoint())
                .filter(|ep| !r.contains(*ep))
                .collect();
            if !missing.is_empty() {
                tracing::info!(routes = ?missing, "the UI lacks these refresh routes; they will not be called");
            }
        }
        self.slot.refresh.routes = routes;
        if let super::Ui::Ready { probe, .. } = &self.slot.ui {
            let probe = probe.clone();
            self.refresh_linked_while_starting(probe);
        }
    }

    /// The UI is ready and its routes known: rescans the kinds linked while it
    /// was starting ([`RefreshState::refresh_once_ready`]).
    fn refresh_linked_while_starting(&mut self, probe: Probe) {
        let kinds = std::mem::take(&mut self.slot.refresh.after_ready);
        if !kinds.is_empty() {
            tracing::info!(kinds = ?kinds, "refreshing the models linked while the UI started");
            self.refresh_kinds(probe, kinds);
        }
    }

    /// Asks the UI to rescan the lists of `kinds` it has refresh routes for.
    pub(super) fn refresh_kinds(&mut self, probe: Probe, kinds: BTreeSet<ModelKind>) {
        let change = ConfigDiff {
            models_changed: kinds,
            ..ConfigDiff::default()
        };
        let endpoints = self
            .slot
            .refresh
            .callable(change.refresh_endpoints(self.config.ui.flavor));
        self.spawn_refresh(probe, endpoints);
    }

    /// Calls `endpoints` one after the other in a task (they wait for the UI's
    /// queue lock); the results come back as [`Event::Refreshed`].
    pub(super) fn spawn_refresh(&mut self, probe: Probe, endpoints: BTreeSet<&'static str>) {
        if endpoints.is_empty() {
            return;
        }
        self.tasks.spawn(async move {
            let mut results = Vec::new();
            for endpoint in endpoints {
                results.push((endpoint, probe.refresh(endpoint).await));
            }
            Event::Refreshed(results)
        });
    }

    /// Counts and reports refresh results; logs only when the condition changes.
    pub(super) fn on_refreshed(&mut self, results: Vec<(&'static str, Result<(), ProbeError>)>) {
        for (endpoint, result) in results {
            self.on_refresh_result(endpoint, result.map_err(|e| refresh_failure(&e)));
        }
    }

    fn on_refresh_result(&mut self, endpoint: &'static str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                tracing::info!(endpoint, "model list refreshed");
                if self.slot.refresh.failed.remove(endpoint).is_some() {
                    tracing::info!(endpoint, "model refresh works again");
                }
            }
            Err(why) => {
                self.slot.refresh.failures += 1;
                if self.slot.refresh.failed.get(endpoint) != Some(&why) {
                    tracing::info!(endpoint, error = %why, "model refresh failed (shown in the status; the UI rescans at its next start)");
                } else {
                    tracing::debug!(endpoint, error = %why, "model refresh failed again");
                }
                self.slot.refresh.failed.insert(endpoint, why);
            }
        }
    }
}

/// How a failed refresh reads in the status: the UI's error status and the
/// start of its answer (real Forge's lora and embedding refresh routes fail,
/// ui-apis.md §10), or the transport error.
fn refresh_failure(e: &ProbeError) -> String {
    match e {
        ProbeError::Status { status, body, .. } => {
            let body: String = body.chars().take(120).collect();
            format!("HTTP {status}: {body}")
        }
        other => other.to_string(),
    }
}
