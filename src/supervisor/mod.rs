//! The supervisor core: one task that owns the UI process, the config in force, the
//! pending restart and the counters, and publishes a [`Snapshot`] after every step.
//!
//! Everything else drives it by [`CoreCommand`]s (control API, D-Bus, SIGHUP, the
//! config watcher) and reads it through snapshots. Slow work — preflight, layout,
//! probes, settings, stopping the UI — runs as tracked tasks ([`work`]) that report
//! back as events, so the loop answers a reload or a status within milliseconds
//! even while the UI hangs. `docs/architecture.md` maps the files.
//!
//! This file is the loop; [`state`] holds the core's state by concern,
//! [`snapshot`] builds what it publishes; [`start`] starts the UI, [`probe`]
//! watches it, [`stop`] sees it end and stops it, [`events`] routes the tasks'
//! reports, [`reconfigure`] reloads and restarts, [`pending`] decides when a
//! deferred restart is due, [`crash`] keeps the crash record and backoff,
//! [`timers`] the clock, [`status_line`] the one-line truth.

mod crash;
mod downloads;
mod events;
mod handoff;
mod images;
pub mod instances;
mod pending;
mod probe;
pub mod protocol;
mod queue_age;
mod queue_keep;
mod reconfigure;
mod refresh;
mod snapshot;
mod stall;
mod start;
mod state;
pub mod status_line;
mod stop;
mod timers;
mod transient;
mod unload;
mod watchdog;
mod work;

use std::future::Future;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::supervisor::protocol::CoreCommand;

use pending::Pending;
use state::{LayoutWaiter, Probing, Ui};
use work::Event;

pub use handoff::{Ended, Handover};
pub use state::Supervisor;

/// Hex digest of config text, to tell generations apart and skip no-op reloads.
pub fn config_hash(text: &[u8]) -> String {
    // FNV-1a: tiny, stable, good enough to label generations (not security).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Supervisor {
    /// Runs until `shutdown` resolves (then stops the UI gracefully), a reload
    /// hands over to a new binary (the UI keeps running), or a changed unit needs
    /// a service restart (the UI stopped when idle).
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<CoreCommand>,
        mut events: CoreEvents,
        shutdown: impl Future<Output = ()>,
    ) -> Ended {
        tokio::pin!(shutdown);
        // Downloads run beside the UI, which starts with what is present.
        self.apply_downloads();
        self.keep_load();
        self.watch_followers();
        match self.upgrade.adopting.take() {
            Some(adopting) => self.finish_adoption(adopting),
            None => self.start_ui(),
        }
        let mut front = self.front.busy.take();
        loop {
            // The door's count is read here, not on each of its changes: only a
            // planned handoff waits for it, and a wake per request would cost
            // every proxied request a turn of this loop.
            if let Some(rx) = front.as_mut() {
                self.front.in_flight = *rx.borrow_and_update();
            }
            if self.should_end() {
                break;
            }
            self.publish();
            let wake = tokio::time::Instant::from_std(self.next_wakeup());
            let handoff_waits = self.upgrade.planned.is_some() && self.front.in_flight > 0;
            let front_changed = async {
                let gone = match front.as_mut() {
                    Some(rx) => rx.changed().await.is_err(),
                    None => true,
                };
                // No door, or it is gone (the daemon is ending).
                if gone {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = front_changed, if handoff_waits => {}
                () = &mut shutdown => break,
                Some(cmd) = commands.recv() => self.on_command(cmd),
                ev = self.tasks.next() => self.on_event(ev),
                Some(ev) = events.0.recv() => self.on_event(ev),
                status = stop::child_exit(&mut self.slot.ui) => self.on_exit(status),
                () = tokio::time::sleep_until(wake) => self.on_tick(),
            }
        }
        if let Some(handover) = self.take_handoff() {
            return Ended::Handoff(Box::new(handover));
        }
        self.shutdown().await;
        if self.life.exit_service {
            Ended::ServiceRestart
        } else {
            Ended::Shutdown
        }
    }

    /// The earliest moment something is due.
    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let grace = self.config.restart.idle_grace;
        let ui = match &self.slot.ui {
            Ui::Starting { since, .. } => timers::after(*since, self.config.ui.startup_timeout),
            Ui::Backoff { until, .. } => *until,
            Ui::Waiting { recheck, .. } => *recheck,
            _ => None,
        };
        let probing = !self.slot.probing.in_flight
            && matches!(self.slot.ui, Ui::Starting { .. } | Ui::Ready { .. });
        let pending = self.pending.as_ref();
        self.timers.next_wake(
            now,
            probing,
            [
                ui,
                pending.and_then(Pending::deadline),
                pending.and_then(|p| p.grace_end(grace)),
                self.next_progress(now),
                self.handoff_front_bound(),
            ],
        )
    }

    /// Periodic duties: watchdog, start-timeout extension, probes, timers.
    fn on_tick(&mut self) {
        let now = Instant::now();
        let due = self.timers.take_due(now);
        if due.watchdog {
            self.notifier.watchdog();
        }
        if due.extend && !self.life.sent_ready {
            self.notifier.extend_timeout(timers::EXTEND_EVERY * 6);
        }
        self.on_timers(now);
        self.service_restart_while_down();
        if self.timers.take_relink(now) {
            self.request_layout(Some(LayoutWaiter::Downloads));
        }
    }

    /// Builds and publishes the snapshot; sends `STATUS=` when it changed.
    fn publish(&mut self) {
        let snap = self.snapshot();
        self.report_instance(&snap);
        self.notifier.status(&snap.status_line);
        self.snapshots.send_if_modified(|old| {
            if *old == snap {
                false
            } else {
                *old = snap;
                true
            }
        });
    }

    fn on_command(&mut self, cmd: CoreCommand) {
        match cmd {
            CoreCommand::Reload {
                text,
                parsed,
                reply,
            } => {
                self.forward(match &text {
                    Some(t) => instances::Forward::Reload(t.clone(), parsed.clone()),
                    None => instances::Forward::ReloadFile,
                });
                self.reload(text, parsed, reply)
            }
            CoreCommand::Restart { when, reply } => {
                self.forward(instances::Forward::Restart(when));
                self.request_restart(when);
                self.publish();
                let _ = reply.send(self.snapshots.borrow().status_line.clone());
            }
            CoreCommand::RetryDownloads { reply } => {
                let _ = reply.send(self.retry_downloads());
            }
            CoreCommand::Drain { reply } => {
                if !self.life.draining {
                    tracing::info!("draining: /readyz answers 503 until the supervisor stops");
                }
                self.life.draining = true;
                self.forward(instances::Forward::Drain);
                self.publish();
                let _ = reply.send(());
            }
            CoreCommand::Ping { reply } => {
                let _ = reply.send(());
            }
            CoreCommand::Generate {
                names,
                force,
                reply,
            } => self.images_generate(names, force, reply),
            CoreCommand::QueueAccepted(kept) => self.on_queue_accepted(*kept),
            CoreCommand::Queue { op, reply } => self.on_queue_command(op, reply),
        }
    }

    /// `READY=1` once: when the UI first answers, or when the supervisor settles in
    /// a state that needs the admin (failed, waiting) — so `systemctl start` and
    /// `nixos-rebuild switch` never hang on a UI that cannot start.
    fn ready_once(&mut self) {
        if !self.life.sent_ready {
            self.life.sent_ready = true;
            self.timers.ready_sent();
            self.publish();
            self.notifier.ready();
        }
    }
}

/// The receiving end of events sent from outside the core's task set.
pub struct CoreEvents(mpsc::UnboundedReceiver<Event>);
