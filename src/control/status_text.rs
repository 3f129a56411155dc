//! The one-screen status that `sd-webui-supervisor status` prints for people.
//!
//! Scripts use `status --json` (the snapshot itself); this text may change between
//! versions. Times are shown in the local time zone, because a person reading
//! "deadline 18:00" thinks in wall-clock time.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Local, TimeZone};

use crate::supervisor::protocol::Snapshot;

/// Renders `s` for a terminal, with times in the local time zone.
pub fn render(s: &Snapshot, now_unix: u64) -> String {
    render_in(s, now_unix, &Local)
}

/// [`render`] in an explicit time zone (tests use UTC).
pub fn render_in<Tz>(s: &Snapshot, now_unix: u64, tz: &Tz) -> String
where
    Tz: TimeZone,
    Tz::Offset: std::fmt::Display,
{
    let at = |unix: u64| local_time(unix, tz);
    let ago = |unix: u64| span(now_unix.saturating_sub(unix));
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{label:<10} {text}");
    };
    line("Status:", s.status_line.clone());
    let state = match s.ready_since_unix {
        Some(t) => format!("{} since {} ({} ago)", s.state.name(), at(t), ago(t)),
        None => s.state.name().to_owned(),
    };
    line("State:", state);
    if let Some(reason) = &s.reason {
        line("Reason:", reason.clone());
    }
    let gpus = match &s.gpus {
        Some(g) if g.is_empty() => "no GPU".to_owned(),
        Some(g) => {
            let list: Vec<String> = g.iter().map(u32::to_string).collect();
            format!("GPU {}", list.join(","))
        }
        None => "inherited GPUs".to_owned(),
    };
    let pid = s
        .ui_pid
        .map_or_else(|| "not running".to_owned(), |p| format!("pid {p}"));
    if s.instances.is_empty() {
        line("UI:", format!("{} on {gpus}; {pid}", s.flavor));
    } else {
        line(
            "UI:",
            format!("{}, {} instances", s.flavor, s.instances.len()),
        );
    }
    let queue = match s.queue {
        Some(q) => format!("{} running, {} pending", q.running, q.pending),
        None => "unknown (UI not ready)".to_owned(),
    };
    line("Queue:", queue);
    for (k, i) in s.instances.iter().enumerate() {
        let label = if k == 0 { "Instances:" } else { "" };
        let gpus = i.gpus.as_ref().map_or_else(
            || "inherited GPUs".to_owned(),
            |g| {
                let list: Vec<String> = g.iter().map(u32::to_string).collect();
                format!("GPU {}", list.join(","))
            },
        );
        let pid = i
            .ui_pid
            .map_or_else(|| "not running".to_owned(), |p| format!("pid {p}"));
        let routed = s
            .front
            .as_ref()
            .map_or(0, |f| f.routed.get(k).copied().unwrap_or(0));
        let drain = if i.draining { ", draining" } else { "" };
        line(
            label,
            format!(
                "{} on {gpus}, port {}; {pid}{drain}; {routed} requests; {}",
                i.name, i.port, i.status_line
            ),
        );
    }
    if let Some(f) = &s.front {
        let answered: u64 = f.proxied.classes().iter().map(|(_, n)| *n).sum();
        let rejected: u64 = f.rejected.values().sum();
        line(
            "Front:",
            format!(
                "{answered} answered by the UI, {} held now ({} ever), {rejected} answered by the front door, {} websockets open",
                f.held_now, f.held_total, f.websockets_open
            ),
        );
    }
    if let Some(c) = &s.pod_deletion_cost {
        // What a scale-in reads: the Pod's deletion cost as the API server has it.
        let value = c
            .value
            .map_or_else(|| "not patched yet".to_owned(), |v| v.to_string());
        let text = match &c.error {
            Some(e) => format!("{value} on pod {}; the last patch failed: {e}", c.pod),
            None => format!("{value} on pod {}", c.pod),
        };
        line("Pod cost:", text);
    }
    if s.draining {
        line(
            "Draining:",
            "yes: takes no new work (/readyz 503) until it stops".to_owned(),
        );
    }
    match &s.restart_pending {
        Some(r) => {
            let deadline = match r.deadline_unix {
                Some(d) if d > now_unix => {
                    format!("deadline {} (in {})", at(d), span(d - now_unix))
                }
                Some(d) => format!("deadline {} (passed)", at(d)),
                None => "no deadline".to_owned(),
            };
            line(
                "Restart:",
                format!(
                    "pending: {}",
                    crate::supervisor::protocol::RestartCause::describe_all(&r.reasons)
                ),
            );
            line(
                "",
                format!(
                    "policy {}; since {}; {deadline}",
                    r.policy,
                    at(r.since_unix)
                ),
            );
        }
        None => line("Restart:", "none pending".to_owned()),
    }
    match &s.last_reload {
        Some(r) => {
            line("Reload:", format!("{} at {}", r.result, at(r.at_unix)));
            let lists = [
                ("applied live", &r.applied_live),
                ("needs restart", &r.needs_restart),
                ("takes effect at the next start", &r.next_start),
                ("unknown settings (not sent)", &r.unknown_settings),
            ];
            for (name, list) in lists.into_iter().filter(|(_, l)| !l.is_empty()) {
                line("", format!("{name}: {}", list.join(", ")));
            }
            for e in &r.errors {
                line("", format!("  {e}"));
            }
        }
        None => line("Reload:", "none since start".to_owned()),
    }
    line(
        "Config:",
        format!("generation {}; {} models", s.config_generation, s.models),
    );
    if s.layout_conflicts.is_empty() {
        line("Layout:", "no conflicts".to_owned());
    } else {
        let n = s.layout_conflicts.len();
        let noun = if n == 1 { "conflict" } else { "conflicts" };
        line("Layout:", format!("{n} {noun}:"));
        for c in &s.layout_conflicts {
            line("", format!("  {c}"));
        }
    }
    let im = &s.images;
    if im.declared > 0 {
        let rendering = im
            .rendering
            .as_ref()
            .map(|n| format!(" (rendering {n})"))
            .unwrap_or_default();
        line(
            "Images:",
            format!(
                "{} declared: {} rendered, {} pending{rendering}, {} failed",
                im.declared,
                im.rendered,
                im.pending,
                im.failed.len()
            ),
        );
        for f in &im.failed {
            line("", format!("  {}: {}", f.name, f.error));
        }
    }
    if !s.missing_targets.is_empty() {
        let n = s.missing_targets.len();
        let noun = if n == 1 { "target" } else { "targets" };
        line("Models:", format!("{n} missing {noun} (not linked):"));
        for m in &s.missing_targets {
            line("", format!("  {m}"));
        }
    }
    if let Some(r) = &s.refresh_failed {
        line("Refresh:", format!("failed: {r}"));
    }
    let restarts: Vec<String> = s.restarts.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let restarts = if restarts.is_empty() {
        "none".to_owned()
    } else {
        restarts.join(", ")
    };
    let ttr = s
        .last_time_to_ready_ms
        .map(|ms| format!("; last start took {:.1}s to ready", ms as f64 / 1000.0))
        .unwrap_or_default();
    line("Uptime:", span(s.uptime_seconds));
    line(
        "Restarts:",
        format!("{restarts}; crashes {}{ttr}", s.crashes),
    );
    out
}

/// `2026-05-01 18:00:00 +02:00` in `tz`.
fn local_time<Tz>(unix: u64, tz: &Tz) -> String
where
    Tz: TimeZone,
    Tz::Offset: std::fmt::Display,
{
    match i64::try_from(unix)
        .ok()
        .and_then(|t| DateTime::from_timestamp(t, 0))
    {
        Some(t) => t
            .with_timezone(tz)
            .format("%Y-%m-%d %H:%M:%S %:z")
            .to_string(),
        None => format!("@{unix}"),
    }
}

/// A span of seconds like `1h 2m 3s`.
fn span(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}
