//! One UI per GPU (`[instances]`, docs/instances.md), the core's side: the
//! daemon runs one core per instance, each with the config
//! [`Config::for_instance`] derives. The first instance's core leads: it
//! alone downloads, renders declared images, talks to systemd and answers
//! the control plane, and its snapshot carries every instance's
//! ([`InstanceSnapshot`]), which the front door routes by.
//!
//! The cores share one [`Roll`]: the rule of the rolling restart. A planned
//! restart of one instance waits for its turn — no other instance holds it
//! and every other one is ready — so capacity never drops to zero; while it
//! holds its turn it is `draining` and the door sends it no new work, so its
//! queue empties. The turn passes on once its new UI is ready. A restart that
//! cannot wait (`restart --now`, a crash, a stall) takes no turn.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::protocol::{CoreHandle, InstanceSnapshot, Phase, Snapshot};
use super::work::Event;
use super::{Supervisor, Ui};
use crate::config::Config;

/// What each core last said, and whose turn it is.
#[derive(Debug)]
pub struct Roll {
    state: Mutex<RollState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    ready: bool,
    idle: bool,
    sent: Option<Instant>,
}

#[derive(Debug, Default)]
struct RollState {
    /// The instance whose planned restart runs now.
    turn: Option<usize>,
    /// Per instance: ready, idle (ready with an empty queue), and when the
    /// probe behind that reading was sent.
    seen: Vec<Seen>,
}

impl Roll {
    /// The rule for `n` instances, none ready yet.
    pub fn new(n: usize) -> Arc<Roll> {
        Arc::new(Roll {
            state: Mutex::new(RollState {
                turn: None,
                seen: vec![Seen::default(); n],
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RollState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Instance `i` is `ready`, and `idle` or not by a probe sent at `sent`.
    fn report(&self, i: usize, ready: bool, idle: bool, sent: Option<Instant>) {
        if let Some(s) = self.lock().seen.get_mut(i) {
            *s = Seen { ready, idle, sent };
        }
    }

    /// Whether `i` may carry out its planned restart now (takes the turn if
    /// so): nobody else holds the turn and every other instance is ready.
    /// A service restart (`service`: owed since then) stops them all: every
    /// other instance must also be idle by a probe sent since.
    fn take_turn(&self, i: usize, service: Option<Instant>) -> bool {
        let mut s = self.lock();
        if s.turn.is_some_and(|t| t != i) {
            return false;
        }
        let fresh_idle = |x: &Seen| {
            x.idle
                && x.sent
                    .zip(service)
                    .is_some_and(|(sent, since)| sent >= since)
        };
        let others_up = s
            .seen
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .all(|(_, x)| x.ready && (service.is_none() || fresh_idle(x)));
        if others_up {
            s.turn = Some(i);
        }
        others_up
    }

    /// Whether `i` holds the turn.
    fn holds(&self, i: usize) -> bool {
        self.lock().turn == Some(i)
    }

    /// `i` is done with its turn.
    fn release(&self, i: usize) {
        let mut s = self.lock();
        if s.turn == Some(i) {
            s.turn = None;
        }
    }
}

/// A core's place among the instances.
#[derive(Debug)]
pub struct Member {
    /// Its index in the config's `[instances]` (0 leads).
    pub index: usize,
    /// Its name.
    pub name: String,
    /// The shared rule.
    pub roll: Arc<Roll>,
    /// The leader's: the other cores, which it forwards reloads and restarts to.
    pub followers: Vec<CoreHandle>,
    /// The leader's: each instance as its core last published it.
    pub seen: Vec<Option<InstanceSnapshot>>,
}

impl Member {
    /// Whether this core leads (downloads, images, systemd, control plane).
    pub fn leads(&self) -> bool {
        self.index == 0
    }

    /// The config this instance runs from a reloaded file's: its own
    /// derived one; when the file no longer declares it, the one in force
    /// with the file's list (the set of instances changes at the next start).
    /// A follower keeps the leader's business (`[supervisor]`) as it is.
    fn derive(&self, file: Config, old: &Config) -> Config {
        let mut new = match file.instances.iter().position(|i| i.name == self.name) {
            Some(i) => file.for_instance(i).unwrap_or(file),
            None => {
                let mut kept = old.clone();
                kept.instances = file.instances;
                kept
            }
        };
        if !self.leads() {
            new.supervisor = old.supervisor.clone();
        }
        new
    }
}

impl Supervisor {
    /// Makes this core instance `index` of `roll`'s; the leader gets the
    /// other cores' handles. Before [`Supervisor::run`].
    pub fn join_instances(&mut self, index: usize, roll: Arc<Roll>, followers: Vec<CoreHandle>) {
        let name = self.config.instance.clone().unwrap_or_default();
        let n = self.config.instances.len();
        self.member = Some(Member {
            index,
            name,
            roll,
            followers,
            seen: vec![None; n],
        });
    }

    /// Whether this core does what happens once per daemon (downloads,
    /// images, the self-upgrade): alone, or the leader.
    pub(super) fn leads(&self) -> bool {
        self.member.as_ref().is_none_or(Member::leads)
    }

    /// The leader watches the followers' snapshots (as events, so its loop
    /// wakes on them).
    pub(super) fn watch_followers(&self) {
        let Some(m) = &self.member else { return };
        for (k, follower) in m.followers.iter().enumerate() {
            let mut rx = follower.subscribe();
            let tx = self.signals.clone();
            let index = k + 1;
            tokio::spawn(async move {
                loop {
                    let own = rx.borrow_and_update().instances.first().cloned();
                    if tx.send(Event::Instance(index, own.map(Box::new))).is_err() {
                        return;
                    }
                    if rx.changed().await.is_err() {
                        let _ = tx.send(Event::Instance(index, None));
                        return;
                    }
                }
            });
        }
    }

    /// A follower published.
    pub(super) fn on_instance(&mut self, index: usize, seen: Option<Box<InstanceSnapshot>>) {
        if let Some(slot) = self.member.as_mut().and_then(|m| m.seen.get_mut(index)) {
            *slot = seen.map(|s| *s);
        }
        self.service_restart_while_down();
    }

    /// A service restart owed while this core's own UI is not running waits
    /// for the others to be idle, not for its own queue: called when a
    /// follower publishes and on the clock.
    pub(super) fn service_restart_while_down(&mut self) {
        let running = matches!(
            self.slot.ui,
            Ui::Ready { .. } | Ui::Starting { .. } | Ui::Stopping { .. }
        );
        let owed = self
            .pending
            .as_ref()
            .is_some_and(|p| Supervisor::restart_is_service(&p.reasons));
        if self.member.is_some() && !running && owed && self.may_restart(true) {
            self.exit_for_service_restart();
        }
    }

    /// A reloaded file's config, as this core runs it.
    pub(super) fn derive_reloaded(&self, file: Config) -> Config {
        match &self.member {
            Some(m) => m.derive(file, &self.config),
            None => file,
        }
    }

    /// Whether a planned restart may be carried out now (rolling restarts);
    /// `service`: it stops every instance.
    pub(super) fn may_restart(&self, service: bool) -> bool {
        let since = service.then(|| {
            self.pending
                .as_ref()
                .map_or_else(Instant::now, super::pending::Pending::created)
        });
        self.member
            .as_ref()
            .is_none_or(|m| m.roll.take_turn(m.index, since))
    }

    /// Tells the others where this instance stands, and passes the turn on
    /// once its restart is done (ready, nothing pending).
    pub(super) fn report_instance(&self, snap: &Snapshot) {
        let Some(m) = &self.member else { return };
        // Its own entry: the leader's top-level fields sum up all instances.
        let Some(own) = snap.instances.first() else {
            return;
        };
        let ready = own.state == Phase::Ready;
        let idle = ready && own.queue.is_some_and(|q| q.is_idle());
        m.roll.report(m.index, ready, idle, self.slot.probing.sent);
        if ready && self.pending.is_none() {
            m.roll.release(m.index);
        }
    }

    /// Sends a reload or restart on to the followers (the leader's control
    /// plane, signals and watcher reach the leader only). Their answers are
    /// their own business: each logs and publishes its outcome.
    pub(super) fn forward(&self, what: Forward) {
        let Some(m) = &self.member else { return };
        for f in &m.followers {
            let f = f.clone();
            let what = what.clone();
            tokio::spawn(async move {
                let _ = match what {
                    Forward::Reload(text, parsed) => f.reload_bytes(text, parsed).await.map(drop),
                    Forward::ReloadFile => f.reload().await.map(drop),
                    Forward::Restart(when) => f.restart(when).await.map(drop),
                    Forward::Drain => f.drain(std::time::Duration::ZERO).await.map(drop),
                };
            });
        }
    }

    /// This instance as published: from the snapshot just built.
    pub(super) fn instance_snapshot(&self, snap: &Snapshot) -> Option<InstanceSnapshot> {
        let m = self.member.as_ref()?;
        Some(InstanceSnapshot {
            name: m.name.clone(),
            port: self.config.ui_own_port(),
            gpus: snap.gpus.clone(),
            state: snap.state,
            status_line: snap.status_line.clone(),
            reason: snap.reason.clone(),
            ui_pid: snap.ui_pid,
            queue: snap.queue,
            restart_pending: snap.restart_pending.clone(),
            draining: snap.restart_pending.is_some() && m.roll.holds(m.index),
            restarts: snap.restarts.values().sum(),
            crashes: snap.crashes,
            last_time_to_ready_ms: snap.last_time_to_ready_ms,
        })
    }

    /// Adds the instances to the snapshot: a follower's carries its own
    /// only; the leader's carries all, and its top-level fields sum them up.
    pub(super) fn add_instances(&self, snap: &mut Snapshot) {
        let Some(own) = self.instance_snapshot(snap) else {
            return;
        };
        let Some(m) = self.member.as_ref().filter(|m| m.leads()) else {
            snap.instances = vec![own];
            return;
        };
        let mut all = vec![own];
        for (i, seen) in m.seen.iter().enumerate().skip(1) {
            all.push(seen.clone().unwrap_or_else(|| {
                InstanceSnapshot {
                    name: self
                        .config
                        .instances
                        .get(i)
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                    port: 0,
                    gpus: None,
                    state: Phase::Starting,
                    status_line: "starting".into(),
                    reason: None,
                    ui_pid: None,
                    queue: None,
                    restart_pending: None,
                    draining: false,
                    restarts: 0,
                    crashes: 0,
                    last_time_to_ready_ms: None,
                }
            }));
        }
        summarize(snap, all);
    }
}

/// What the leader forwards.
#[derive(Debug, Clone)]
pub(super) enum Forward {
    Reload(Vec<u8>, Option<Box<Config>>),
    ReloadFile,
    Restart(super::protocol::RestartWhen),
    Drain,
}

/// The leader's top-level fields over all instances: ready while one is,
/// failed when all are; the queues summed; the first pending restart; the
/// counters summed; the status line says how many are ready.
fn summarize(snap: &mut Snapshot, all: Vec<InstanceSnapshot>) {
    let ready = all.iter().filter(|i| i.state == Phase::Ready).count();
    snap.state = if ready > 0 {
        Phase::Ready
    } else if all.iter().all(|i| i.state == Phase::Failed) {
        Phase::Failed
    } else {
        all.iter()
            .map(|i| i.state)
            .find(|s| *s != Phase::Failed)
            .unwrap_or(Phase::Starting)
    };
    let queues: Vec<_> = all.iter().filter_map(|i| i.queue).collect();
    snap.queue = (!queues.is_empty()).then(|| super::protocol::Queue {
        running: queues
            .iter()
            .map(|q| q.running)
            .fold(0, u32::saturating_add),
        pending: queues
            .iter()
            .map(|q| q.pending)
            .fold(0, u32::saturating_add),
    });
    if snap.restart_pending.is_none() {
        snap.restart_pending = all.iter().find_map(|i| i.restart_pending.clone());
    }
    snap.crashes = all.iter().map(|i| i.crashes).fold(0, u64::saturating_add);
    snap.ui_pid = all.iter().find_map(|i| i.ui_pid);
    snap.gpus = None;
    snap.status_line = super::status_line::instances_line(&all);
    snap.instances = all;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_turn_at_a_time_and_only_while_the_others_are_ready() {
        let roll = Roll::new(3);
        assert!(!roll.take_turn(0, None), "the others are not ready yet");
        for i in 0..3 {
            roll.report(i, true, false, None);
        }
        assert!(roll.take_turn(1, None));
        assert!(roll.take_turn(1, None), "the holder keeps it");
        assert!(!roll.take_turn(0, None), "one turn at a time");
        roll.report(1, false, false, None);
        roll.release(0);
        assert!(!roll.take_turn(2, None), "not released by another");
        roll.release(1);
        assert!(!roll.take_turn(2, None), "1 is down: capacity first");
        roll.report(1, true, false, None);
        assert!(roll.take_turn(2, None));
    }

    #[test]
    fn a_service_restart_waits_for_every_other_instance_to_be_idle_by_a_fresh_probe() {
        let roll = Roll::new(2);
        let t0 = Instant::now();
        let later = t0 + std::time::Duration::from_secs(1);
        roll.report(0, true, true, Some(t0));
        roll.report(1, true, false, Some(t0));
        assert!(!roll.take_turn(0, Some(t0)), "1 is busy");
        roll.report(1, true, true, Some(t0));
        assert!(
            !roll.take_turn(0, Some(later)),
            "idle by a probe sent before"
        );
        roll.report(1, true, true, Some(later));
        assert!(roll.take_turn(0, Some(later)));
    }
}
