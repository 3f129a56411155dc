//! The core's dispatch of the events its tasks report ([`super::work::Event`]):
//! each goes to the concern that owns it.

use std::time::Instant;

use super::work::{AfterStop, Event};
use super::{Supervisor, Ui};
use crate::ui::process::describe_exit;

impl Supervisor {
    /// Routes one task's event to its handler (stale ones, of a start or a UI
    /// that is gone, are dropped by the handlers).
    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Prepared {
                start,
                preflight,
                launch,
                port_held,
            } => self.on_prepared(start, preflight, launch, port_held),
            Event::LaidOut { report, transient } => self.on_laid_out(report, transient),
            Event::Routes(routes) => self.on_routes(routes),
            Event::Refreshed(results) => self.on_refreshed(results),
            Event::ConfigRead {
                text,
                parsed,
                reply,
            } => {
                self.reloads.in_flight = self.reloads.in_flight.saturating_sub(1);
                self.reload_parsed(text, parsed, reply)
            }
            Event::Ready(ok) => {
                self.slot.probing.in_flight = false;
                if let (true, Ui::Starting { .. }) = (ok, &self.slot.ui) {
                    self.became_ready();
                }
            }
            Event::Queue(result, sent) => {
                self.slot.probing.in_flight = false;
                self.slot.probing.sent = Some(sent);
                if !matches!(self.slot.ui, Ui::Ready { .. }) {
                    return;
                }
                match result {
                    Ok(r) => {
                        self.slot.probing.queue = Some(r.queue);
                        self.watch_reading(&r, sent);
                        self.unload_reading(sent);
                        self.slot.queue_age.reading(sent, &r.waiting);
                        self.keep_reading(&r, sent);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "queue probe failed");
                        self.slot.probing.queue = None;
                    }
                }
                self.check_pending(Instant::now());
                self.maybe_render();
            }
            Event::ImageDone {
                name,
                fingerprint,
                result,
            } => self.on_image_done(&name, &fingerprint, result),
            Event::QueueChanged(remaining) => {
                if (self.pending.is_some() || self.keep_wants_probe())
                    && matches!(self.slot.ui, Ui::Ready { .. })
                {
                    tracing::debug!(remaining, "queue broadcast: probing now");
                    self.timers.probe_at(Some(Instant::now()));
                }
            }
            Event::Progressed(prompt) => {
                self.keep_progress(prompt.as_ref());
                self.watch_progress(prompt)
            }
            Event::Interrupted(Err(e)) => {
                tracing::warn!(error = %e, "could not interrupt the stalled job");
            }
            Event::Interrupted(Ok(())) => {}
            Event::Unloaded(result) => self.on_unloaded(result),
            Event::Download(ev) => self.on_download(ev),
            Event::Instance(i, seen) => self.on_instance(i, seen),
            Event::SettingsSynced(done) => self.on_settings_synced(done),
            Event::HandoffChecked(checked) => self.on_handoff_checked(checked),
            Event::Keep(ev) => self.on_keep(ev),
            Event::Gone { status, then } => {
                if let Ok(s) = &status {
                    tracing::info!(exit = %describe_exit(s), "UI stopped; its process group is gone");
                }
                self.slot.ui = Ui::Down;
                match then {
                    AfterStop::Start => self.start_ui(),
                    AfterStop::Crash { why, counter } => self.record_crash(why, counter),
                    AfterStop::Exit => {}
                    AfterStop::ExitService => self.exit_for_service_restart(),
                }
            }
        }
    }
}
