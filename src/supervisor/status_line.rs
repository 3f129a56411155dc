//! The one-line truth shown as systemd's `Status:` and at the top of
//! `sd-webui-supervisor status` (docs/design.md#users-and-their-flows), e.g.
//! `ready; busy: 1 running, 2 queued; restart pending (ui.extra_args changed), waits for idle, deadline 14:05`.

use crate::supervisor::protocol::{PendingRestart, Phase, Queue, RestartCause, RestartPolicy};

/// What the status line is made of.
#[derive(Debug, Clone, Default)]
pub struct StatusInput<'a> {
    /// Coarse state.
    pub phase: Option<Phase>,
    /// Why (crash, waiting reason, stop reason).
    pub reason: Option<&'a str>,
    /// `forge`, …
    pub flavor: &'a str,
    /// Configured GPUs.
    pub gpus: Option<&'a [u32]>,
    /// Declared model files.
    pub models: usize,
    /// Last probed queue.
    pub queue: Option<Queue>,
    /// Whether a queue probe has answered or failed since the UI became ready.
    pub queue_probed: bool,
    /// Pending restart.
    pub pending: Option<&'a PendingRestart>,
    /// Local `HH:MM` of the pending restart's deadline.
    pub deadline_local: Option<String>,
    /// First validation error of the last rejected reload, with the count of others.
    pub reload_rejected: Option<&'a str>,
    /// Errors of the last reload that was applied (a link that failed, say):
    /// the config is in force but not everything it asks for is done.
    pub reload_errors: usize,
    /// Number of layout conflicts.
    pub conflicts: usize,
    /// Downloads in words (`downloading 2 (3.1/13.0 GB)`), while there is news.
    pub downloads: Option<&'a str>,
    /// Number of declared model files whose target does not exist.
    pub missing_targets: usize,
    /// The running job's stall in words (`job stalled: no progress since 12:01`).
    pub stalled: Option<&'a str>,
    /// The models were unloaded from the GPU for idleness (`gpu.unload_after`).
    pub unloaded: bool,
}

/// Renders the status line.
pub fn render(s: &StatusInput<'_>) -> String {
    let phase = s.phase.unwrap_or(Phase::Starting);
    let mut parts: Vec<String> = Vec::new();
    match phase {
        Phase::Ready => {
            parts.push("ready".into());
            match s.queue {
                Some(q) if !q.is_idle() => {
                    parts.push(format!("busy: {} running, {} queued", q.running, q.pending))
                }
                Some(_) => parts.extend(["idle".to_string(), what(s)]),
                None if s.queue_probed => {
                    parts.extend(["not answering queue probes".to_string(), what(s)])
                }
                None => parts.push(what(s)),
            }
        }
        Phase::Starting => parts.push(format!(
            "starting: {}",
            s.reason.unwrap_or("waiting for the UI to answer")
        )),
        other => {
            let head = other.name();
            parts.push(match s.reason {
                Some(r) => format!("{head}: {r}"),
                None => head.to_string(),
            });
        }
    }
    if let Some(stall) = s.stalled {
        parts.push(stall.to_string());
    }
    if s.unloaded && phase == Phase::Ready {
        parts.push("models unloaded from the GPU (idle)".into());
    }
    if let Some(d) = s.downloads {
        parts.push(d.to_string());
    }
    if let Some(p) = s.pending {
        let mut line = format!(
            "restart pending ({})",
            RestartCause::describe_all(&p.reasons)
        );
        match p.policy {
            RestartPolicy::Manual => line.push_str(", manual: run 'sd-webui-supervisor restart'"),
            _ => {
                line.push_str(", waits for idle");
                if let Some(d) = &s.deadline_local {
                    line.push_str(&format!(", deadline {d}"));
                }
            }
        }
        parts.push(line);
    }
    if let Some(r) = s.reload_rejected {
        parts.push(format!("reload rejected: {r}"));
    }
    if s.reload_errors > 0 {
        parts.push(format!(
            "last reload incomplete ({} error{}; see status)",
            s.reload_errors,
            if s.reload_errors == 1 { "" } else { "s" }
        ));
    }
    if s.conflicts > 0 {
        parts.push(format!(
            "{} layout conflict{}",
            s.conflicts,
            if s.conflicts == 1 { "" } else { "s" }
        ));
    }
    if s.missing_targets > 0 {
        parts.push(format!(
            "{} missing model target{}",
            s.missing_targets,
            if s.missing_targets == 1 { "" } else { "s" }
        ));
    }
    parts.join("; ")
}

/// `forge on GPU 0; 12 models`.
fn what(s: &StatusInput<'_>) -> String {
    let gpus = match s.gpus {
        Some([one]) => format!(" on GPU {one}"),
        Some(many) => {
            let ids: Vec<String> = many.iter().map(u32::to_string).collect();
            format!(" on GPUs {}", ids.join(","))
        }
        None => String::new(),
    };
    let models = match s.models {
        1 => "; 1 model".to_string(),
        n => format!("; {n} models"),
    };
    format!("{}{gpus}{models}", s.flavor)
}

/// The leader's line with `[instances]`: how many are ready, then each
/// instance's own line — `ready: 2/2 instances | gpu0: ready … | gpu1: busy …`
/// (the daemon-wide parts, downloads or a rejected reload, are in the
/// leader's instance's line).
pub fn instances_line(all: &[crate::supervisor::protocol::InstanceSnapshot]) -> String {
    let n = all.len();
    let ready = all
        .iter()
        .filter(|i| i.state == crate::supervisor::protocol::Phase::Ready)
        .count();
    let head = if ready == n {
        format!("ready: {n}/{n} instances")
    } else if ready > 0 {
        format!("degraded: {ready}/{n} instances ready")
    } else {
        format!("down: 0/{n} instances ready")
    };
    let mut line = head;
    for i in all {
        line.push_str(" | ");
        line.push_str(&i.name);
        if i.draining {
            line.push_str(" (draining)");
        }
        line.push_str(": ");
        line.push_str(&i.status_line);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StatusInput<'static> {
        StatusInput {
            phase: Some(Phase::Ready),
            flavor: "forge",
            gpus: Some(&[0]),
            models: 12,
            ..Default::default()
        }
    }

    #[test]
    fn ready_idle_matches_the_design() {
        let s = StatusInput {
            queue: Some(Queue::default()),
            ..base()
        };
        assert_eq!(render(&s), "ready; idle; forge on GPU 0; 12 models");
    }

    #[test]
    fn causes_that_are_not_config_keys_read_as_what_they_are() {
        let p = PendingRestart {
            reasons: vec![
                RestartCause::Key("ui.extra_args".into()),
                RestartCause::Requested,
                RestartCause::UnitChanged,
                RestartCause::ConfigUnknown,
            ],
            policy: RestartPolicy::WhenIdle,
            since_unix: 0,
            deadline_unix: None,
        };
        let s = StatusInput {
            pending: Some(&p),
            ..base()
        };
        assert_eq!(
            render(&s),
            "ready; forge on GPU 0; 12 models; restart pending (ui.extra_args changed; \
             restart requested; service unit changed; supervisor upgraded, running config unknown), \
             waits for idle"
        );
    }

    #[test]
    fn busy_with_pending_restart() {
        let p = PendingRestart {
            reasons: vec![
                RestartCause::Key("ui.extra_args".into()),
                RestartCause::Key("extensions".into()),
            ],
            policy: RestartPolicy::WhenIdle,
            since_unix: 0,
            deadline_unix: Some(1),
        };
        let s = StatusInput {
            queue: Some(Queue {
                running: 1,
                pending: 2,
            }),
            pending: Some(&p),
            deadline_local: Some("14:05".into()),
            ..base()
        };
        assert_eq!(
            render(&s),
            "ready; busy: 1 running, 2 queued; restart pending (ui.extra_args, extensions changed), waits for idle, deadline 14:05"
        );
    }

    #[test]
    fn failed_and_rejected() {
        let s = StatusInput {
            phase: Some(Phase::Failed),
            reason: Some("UI crashed 5 times in 60s (exit 1)"),
            ..base()
        };
        assert_eq!(render(&s), "failed: UI crashed 5 times in 60s (exit 1)");
        let s = StatusInput {
            queue: Some(Queue::default()),
            reload_rejected: Some("ui.port: 0 is out of range (+1 more)"),
            gpus: None,
            ..base()
        };
        assert_eq!(
            render(&s),
            "ready; idle; forge; 12 models; reload rejected: ui.port: 0 is out of range (+1 more)"
        );
    }
}
