//! `GET /metrics`: the snapshot in the Prometheus text exposition format 0.0.4.
//!
//! Everything here is computed from one [`Snapshot`]; the supervisor keeps no metric
//! state of its own, so the numbers always agree with `/v1/status`. Counters with a
//! label (`restarts_total`, `reloads_total`) always list their well-known label values,
//! at 0 until they happen, so `rate()` and alerts work from the first scrape.

use std::fmt::Write as _;

use crate::supervisor::protocol::{Phase, ReloadResult, RestartReason, Snapshot};

mod instances;

/// The `Content-Type` of the exposition format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric name starts with this.
pub const PREFIX: &str = "sd_webui_supervisor_";

/// Every phase, in the order the `state` metric lists them.
pub const PHASES: [Phase; 6] = [
    Phase::Starting,
    Phase::Ready,
    Phase::Backoff,
    Phase::Waiting,
    Phase::Failed,
    Phase::Stopping,
];

/// Renders the whole exposition for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut out = Exposition::default();
    let ready = s.state == Phase::Ready;
    out.single(
        "ui_up",
        "gauge",
        "1 when the UI answers its readiness probe (state ready), else 0.",
        bool_value(ready),
    );
    out.family(
        "state",
        "gauge",
        "The supervisor's state, one-hot over all states.",
    );
    for phase in PHASES {
        out.sample(
            "state",
            &[("state", phase.name())],
            bool_value(s.state == phase),
        );
    }
    let queue_help =
        "while the UI is not ready the last probed queue is unknown and the sample is absent.";
    // Each family's sample right under its HELP and TYPE: the format wants
    // the lines of one metric together.
    let oldest_help = "How long the oldest waiting job has waited, 0 when none waits (timed from the first probe that listed it; with queue_pending what an autoscaler scales on)";
    let queue = s.queue.map(|q| {
        (
            f64::from(q.running),
            f64::from(q.pending),
            s.queue_oldest_wait_seconds.unwrap_or(0.0),
        )
    });
    for (name, help, value) in [
        (
            "queue_running",
            "Generation jobs running in the UI",
            queue.map(|q| q.0),
        ),
        (
            "queue_pending",
            "Generation jobs waiting in the UI",
            queue.map(|q| q.1),
        ),
        ("queue_oldest_wait_seconds", oldest_help, queue.map(|q| q.2)),
    ] {
        out.family(name, "gauge", &format!("{help}; {queue_help}"));
        if let Some(v) = value {
            out.sample(name, &[], v);
        }
    }
    out.labelled_counter(
        "restarts_total",
        "UI restarts by reason.",
        "reason",
        RestartReason::ALL.map(|r| (r.name(), s.restarts.get(&r).copied().unwrap_or(0))),
    );
    out.single(
        "crashes_total",
        "counter",
        "UI crashes (unexpected exits and startup timeouts).",
        s.crashes as f64,
    );
    out.labelled_counter(
        "reloads_total",
        "Config reloads by result.",
        "result",
        ReloadResult::ALL.map(|r| (r.name(), s.reloads.get(&r).copied().unwrap_or(0))),
    );
    out.single(
        "restart_pending",
        "gauge",
        "1 while a UI restart is owed (config change or request), else 0.",
        bool_value(s.restart_pending.is_some()),
    );
    out.family(
        "time_to_ready_seconds",
        "gauge",
        "Seconds from exec to ready for the last UI start; absent before the first.",
    );
    if let Some(ms) = s.last_time_to_ready_ms {
        out.sample("time_to_ready_seconds", &[], ms as f64 / 1000.0);
    }
    out.single(
        "uptime_seconds",
        "gauge",
        "Seconds the supervisor has been running.",
        s.uptime_seconds as f64,
    );
    out.single(
        "layout_conflicts",
        "gauge",
        "User files sitting where managed links should go.",
        s.layout_conflicts.len() as f64,
    );
    out.single(
        "missing_model_targets",
        "gauge",
        "Declared model files whose target does not exist (not linked).",
        s.missing_targets.len() as f64,
    );
    out.single(
        "refresh_failures_total",
        "counter",
        "Model-list refresh calls the UI answered with an error or not at all.",
        s.refresh_failures as f64,
    );
    out.single(
        "stalled_jobs_total",
        "counter",
        "Jobs interrupted for making no progress within health.stall_timeout.",
        s.health.stalled_jobs as f64,
    );
    out.single(
        "job_stalled",
        "gauge",
        "1 while the running job has made no progress within health.stall_timeout, else 0.",
        bool_value(s.health.stalled_since_unix.is_some()),
    );
    out.single(
        "models_unloaded",
        "gauge",
        "1 while the models are unloaded from the GPU for idleness (gpu.unload_after), else 0.",
        bool_value(s.vram.unloaded),
    );
    out.single(
        "model_unloads_total",
        "counter",
        "Unloads of the models from the GPU after gpu.unload_after of idleness.",
        s.vram.unloads as f64,
    );
    out.single(
        "gpu_faults_total",
        "counter",
        "CUDA faults (errors, out of memory) in the UI's output.",
        s.health.gpu_faults as f64,
    );
    out.single(
        "draining",
        "gauge",
        "1 while the supervisor drains for a stop (/readyz answers 503), else 0.",
        bool_value(s.draining),
    );
    queue_keep(&mut out, &s.queue_keep);
    downloads(&mut out, s);
    out.single(
        "images_declared",
        "gauge",
        "Declared images ([images.<name>]).",
        s.images.declared as f64,
    );
    out.family(
        "images",
        "gauge",
        "Declared images by state: rendered (on disk, matching), pending (waiting or rendering), failed.",
    );
    for (state, n) in [
        ("rendered", s.images.rendered),
        ("pending", s.images.pending),
        ("failed", s.images.failed.len()),
    ] {
        out.sample("images", &[("state", state)], n as f64);
    }
    if let Some(f) = &s.front {
        front(&mut out, f);
    }
    if let Some(cost) = &s.pod_deletion_cost {
        deletion_cost(&mut out, cost);
    }
    if !s.instances.is_empty() {
        instances::render(&mut out, s);
    }
    out.text
}

/// The Pod's deletion cost (`kubernetes.pod_deletion_cost`); present only while
/// it is kept, the gauge once the API server accepted a value.
fn deletion_cost(out: &mut Exposition, c: &crate::kube::DeletionCostStatus) {
    if let Some(value) = c.value {
        out.single(
            "pod_deletion_cost",
            "gauge",
            "The Pod's controller.kubernetes.io/pod-deletion-cost as last accepted by the API server (jobs running and waiting).",
            f64::from(value),
        );
    }
    out.single(
        "pod_deletion_cost_failures_total",
        "counter",
        "Patches of the Pod's deletion cost the API server refused or did not answer.",
        c.failures as f64,
    );
}

/// The queue journal's families; present only where one is kept (ComfyUI
/// behind the front door).
fn queue_keep(out: &mut Exposition, k: &crate::journal::KeepStatus) {
    if !k.enabled {
        return;
    }
    out.single(
        "queue_paused",
        "gauge",
        "1 while new prompts are held at the front door (queue pause), else 0.",
        bool_value(k.paused),
    );
    out.single(
        "queue_kept",
        "gauge",
        "Unfinished prompts in the queue journal, quarantined ones included.",
        k.kept as f64,
    );
    out.single(
        "queue_quarantined",
        "gauge",
        "Prompts held back after the UI went down twice while they ran.",
        k.quarantined.len() as f64,
    );
    out.single(
        "queue_resubmitted_total",
        "counter",
        "Journaled prompts sent again to a new UI.",
        k.resubmitted as f64,
    );
    out.single(
        "queue_journaled_total",
        "counter",
        "Prompts the UI accepted through the front door and the journal kept.",
        k.journaled as f64,
    );
}

/// The front door's families; present only while a front door runs.
fn front(out: &mut Exposition, f: &crate::front::FrontStatus) {
    out.labelled_counter(
        "front_requests_total",
        "Requests the UI answered through the front door, by status class.",
        "class",
        f.proxied.classes(),
    );
    out.labelled_counter(
        "front_rejected_total",
        "Requests the front door answered itself, by reason.",
        "reason",
        crate::front::stats::Rejected::ALL
            .map(|r| (r.name(), f.rejected.get(r.name()).copied().unwrap_or(0))),
    );
    out.single(
        "front_held_total",
        "counter",
        "Requests the front door held while the UI was not ready.",
        f.held_total as f64,
    );
    out.single(
        "front_held",
        "gauge",
        "Requests held now, waiting for the UI.",
        f.held_now as f64,
    );
    out.single(
        "front_in_flight",
        "gauge",
        "Requests proxied or held now (a self-upgrade waits for none).",
        f.in_flight as f64,
    );
    out.single(
        "front_websockets_total",
        "counter",
        "Websockets relayed to the UI.",
        f.websockets_total as f64,
    );
    out.single(
        "front_websockets",
        "gauge",
        "Websockets relayed now.",
        f.websockets_open as f64,
    );
    let name = "front_latency_seconds";
    out.family(
        name,
        "histogram",
        "Seconds from a request's head to the UI's answer head (holds included).",
    );
    let mut cumulative = 0u64;
    for (i, n) in f.latency_buckets.iter().enumerate() {
        cumulative = cumulative.saturating_add(*n);
        let le = crate::front::stats::LATENCY_BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
        out.sample(&format!("{name}_bucket"), &[("le", &le)], cumulative as f64);
    }
    out.sample(&format!("{name}_sum"), &[], f.latency_sum_seconds);
    out.sample(&format!("{name}_count"), &[], cumulative as f64);
}

/// Per-model download progress; the families appear once a model is declared
/// with a url (the label values are the config's own names, never the URL).
fn downloads(out: &mut Exposition, s: &Snapshot) {
    if s.downloads.is_empty() {
        return;
    }
    out.family(
        "download_bytes_done",
        "gauge",
        "Bytes of a model download on disk.",
    );
    for m in &s.downloads {
        let kind = m.kind.to_string();
        out.sample(
            "download_bytes_done",
            &[("kind", &kind), ("name", &m.name)],
            m.bytes_done as f64,
        );
    }
    out.family(
        "download_bytes_total",
        "gauge",
        "Size of a model download; absent until a server said.",
    );
    for m in &s.downloads {
        if let Some(total) = m.bytes_total {
            let kind = m.kind.to_string();
            out.sample(
                "download_bytes_total",
                &[("kind", &kind), ("name", &m.name)],
                total as f64,
            );
        }
    }
    out.family(
        "download_rate_bytes",
        "gauge",
        "Bytes per second of a model download over its current attempt.",
    );
    for m in &s.downloads {
        let kind = m.kind.to_string();
        out.sample(
            "download_rate_bytes",
            &[("kind", &kind), ("name", &m.name)],
            m.rate,
        );
    }
    out.family(
        "download_state",
        "gauge",
        "A model download's state, one-hot over all states.",
    );
    for m in &s.downloads {
        let kind = m.kind.to_string();
        for phase in crate::download::Phase::ALL {
            out.sample(
                "download_state",
                &[("kind", &kind), ("name", &m.name), ("state", phase.name())],
                bool_value(m.state == phase),
            );
        }
    }
}

fn bool_value(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// A text buffer with the few writing helpers the format needs.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {PREFIX}{name} {help}");
        let _ = writeln!(self.text, "# TYPE {PREFIX}{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let _ = write!(self.text, "{PREFIX}{name}");
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A counter with one label: the well-known values first (0 when absent), then
    /// any other value the core reported.
    fn labelled_counter(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        counts: impl IntoIterator<Item = (&'static str, u64)>,
    ) {
        self.family(name, "counter", help);
        for (key, n) in counts {
            self.sample(name, &[(label, key)], n as f64);
        }
    }
}

/// Escapes a label value as the text format requires (`\`, `"` and newline).
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Fails to compile when a phase is added, so [`PHASES`] gets updated with it.
#[allow(dead_code)]
fn phases_are_complete(p: Phase) {
    match p {
        Phase::Starting
        | Phase::Ready
        | Phase::Backoff
        | Phase::Waiting
        | Phase::Failed
        | Phase::Stopping => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
    }
}
