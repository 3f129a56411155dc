//! The metrics of `[instances]`: one sample per instance, labelled with its
//! name, so a dashboard shows which GPU's UI is up, busy or restarting, and
//! how the front door spread the work.

use super::{Exposition, PHASES};
use crate::supervisor::protocol::{Phase, Snapshot};

/// Adds the per-instance families of `s` to `out`.
pub(super) fn render(out: &mut Exposition, s: &Snapshot) {
    out.family(
        "instance_up",
        "gauge",
        "1 when the instance's UI answers (state ready), else 0.",
    );
    for i in &s.instances {
        let up = if i.state == Phase::Ready { 1.0 } else { 0.0 };
        out.sample("instance_up", &[("instance", &i.name)], up);
    }
    out.family(
        "instance_state",
        "gauge",
        "Each instance's state, one-hot over all states.",
    );
    for i in &s.instances {
        for phase in PHASES {
            let v = if i.state == phase { 1.0 } else { 0.0 };
            out.sample(
                "instance_state",
                &[("instance", &i.name), ("state", phase.name())],
                v,
            );
        }
    }
    for (name, help, pick) in [
        (
            "instance_queue_running",
            "Jobs running in the instance's UI (absent while it is not ready).",
            (|q: crate::supervisor::protocol::Queue| q.running) as fn(_) -> u32,
        ),
        (
            "instance_queue_pending",
            "Jobs waiting in the instance's UI (absent while it is not ready).",
            |q| q.pending,
        ),
    ] {
        out.family(name, "gauge", help);
        for i in &s.instances {
            if let Some(q) = i.queue {
                out.sample(name, &[("instance", &i.name)], f64::from(pick(q)));
            }
        }
    }
    out.family(
        "instance_draining",
        "gauge",
        "1 while the instance takes its turn of a rolling restart (no new work).",
    );
    for i in &s.instances {
        let v = if i.draining { 1.0 } else { 0.0 };
        out.sample("instance_draining", &[("instance", &i.name)], v);
    }
    out.family(
        "instance_restarts_total",
        "counter",
        "The instance's UI restarts, all reasons.",
    );
    for i in &s.instances {
        out.sample(
            "instance_restarts_total",
            &[("instance", &i.name)],
            i.restarts as f64,
        );
    }
    if let Some(front) = &s.front {
        out.family(
            "front_routed_total",
            "counter",
            "Requests the front door sent to each instance and got an answer for.",
        );
        for (k, i) in s.instances.iter().enumerate() {
            let n = front.routed.get(k).copied().unwrap_or(0);
            out.sample("front_routed_total", &[("instance", &i.name)], n as f64);
        }
    }
}
