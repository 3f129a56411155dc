//! Downloads in words: the status line's part (`downloading 2 (3.1/13.0 GB)`,
//! `1 download failed`) and the per-model lines `sd-webui-supervisor status`
//! prints, with a bar when stdout is a terminal.

use super::{ModelProgress, Phase};

/// The status line's part for downloads; `None` when there is nothing to say
/// (none declared, or all done).
pub fn status_part(models: &[ModelProgress]) -> Option<String> {
    let mut parts = Vec::new();
    let active: Vec<&ModelProgress> = models
        .iter()
        .filter(|m| !matches!(m.state, Phase::Done | Phase::Failed))
        .collect();
    if !active.is_empty() {
        let done: u64 = active.iter().map(|m| m.bytes_done).sum();
        let total: Option<u64> = active.iter().map(|m| m.bytes_total).sum();
        let size = match total {
            Some(t) => format!("{}/{} GB", gb(done), gb(t)),
            None => format!("{} GB", gb(done)),
        };
        parts.push(format!("downloading {} ({size})", active.len()));
    }
    let failed = models.iter().filter(|m| m.state == Phase::Failed).count();
    match failed {
        0 => {}
        1 => parts.push("1 download failed".into()),
        n => parts.push(format!("{n} downloads failed")),
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

fn gb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / 1e9)
}

/// One line per model: `checkpoints/a.safetensors  downloading  1.2/6.5 GB  85 MB/s  ETA 1m02s`,
/// with a `[#####-----]` bar of `bar` characters when `bar > 0`.
pub fn lines(models: &[ModelProgress], bar: usize) -> Vec<String> {
    models
        .iter()
        .map(|m| {
            let mut line = format!("{}/{}  {}", m.kind, m.name, m.state.name());
            if let Some(reason) = &m.reason {
                line.push_str(&format!(": {reason}"));
            }
            if m.state != Phase::Done {
                if bar > 0
                    && let Some(total) = m.bytes_total.filter(|t| *t > 0)
                {
                    let filled =
                        ((m.bytes_done.min(total) as f64 / total as f64) * bar as f64) as usize;
                    line.push_str(&format!(
                        "  [{}{}]",
                        "#".repeat(filled),
                        "-".repeat(bar.saturating_sub(filled))
                    ));
                }
                match m.bytes_total {
                    Some(t) => line.push_str(&format!("  {}/{} GB", gb(m.bytes_done), gb(t))),
                    None => line.push_str(&format!("  {} GB", gb(m.bytes_done))),
                }
                if m.rate > 0.0 {
                    line.push_str(&format!("  {:.0} MB/s", m.rate / 1e6));
                }
                if let Some(eta) = m.eta_seconds {
                    let eta = std::time::Duration::from_secs(eta);
                    line.push_str(&format!("  ETA {}", humantime::format_duration(eta)));
                }
            }
            line
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::flavor::ModelKind;

    fn m(name: &str, state: Phase, done: u64, total: Option<u64>) -> ModelProgress {
        ModelProgress {
            kind: ModelKind::Checkpoints,
            name: name.into(),
            sha256: String::new(),
            state,
            reason: (state == Phase::Failed).then(|| "sha256 mismatch".into()),
            bytes_done: done,
            bytes_total: total,
            rate: 0.0,
            eta_seconds: None,
        }
    }

    #[test]
    fn the_status_part_counts_active_and_failed() {
        assert_eq!(status_part(&[]), None);
        assert_eq!(status_part(&[m("a", Phase::Done, 5, Some(5))]), None);
        let all = [
            m("a", Phase::Downloading, 3_100_000_000, Some(6_500_000_000)),
            m("b", Phase::Queued, 0, Some(6_500_000_000)),
            m("c", Phase::Failed, 0, None),
            m("d", Phase::Done, 1, Some(1)),
        ];
        assert_eq!(
            status_part(&all).as_deref(),
            Some("downloading 2 (3.1/13.0 GB); 1 download failed")
        );
    }

    #[test]
    fn a_bar_shows_the_fraction() {
        let l = lines(&[m("a", Phase::Downloading, 50, Some(100))], 10);
        assert_eq!(l[0], "checkpoints/a  downloading  [#####-----]  0.0/0.0 GB");
    }
}
