//! GPU preflight before each UI launch.
//!
//! A UI started without its GPU either crashes in a loop or silently falls back to
//! the CPU. After an NVIDIA driver update the kernel module and the user-space
//! library disagree until reboot; `nvidia-smi` then says "Driver/library version
//! mismatch". Both cases become a `waiting` state with a clear reason, re-checked
//! periodically, instead of a crash loop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

/// Where to look; injectable so tests can fake devices and `nvidia-smi`.
#[derive(Debug, Clone)]
pub struct GpuEnv {
    /// Directory holding `nvidiactl` and `nvidia<N>` (normally `/dev`).
    pub dev_dir: PathBuf,
    /// The `nvidia-smi` to run, if any.
    pub nvidia_smi: Option<PathBuf>,
    /// How often a waiting supervisor checks again.
    pub recheck: Duration,
}

/// Environment variables that override the defaults (used by tests).
pub const DEV_DIR_ENV: &str = "SD_WEBUI_SUPERVISOR_DEV_DIR";
/// Path of the `nvidia-smi` to run instead of the one on `PATH`.
pub const NVIDIA_SMI_ENV: &str = "SD_WEBUI_SUPERVISOR_NVIDIA_SMI";
/// Seconds between re-checks while waiting (default 30).
pub const RECHECK_ENV: &str = "SD_WEBUI_SUPERVISOR_GPU_RECHECK_SECS";

impl GpuEnv {
    /// `/dev`, `nvidia-smi` from `PATH`, 30 s re-checks, unless overridden.
    pub fn from_env() -> Self {
        let dev_dir =
            std::env::var_os(DEV_DIR_ENV).map_or_else(|| PathBuf::from("/dev"), PathBuf::from);
        let nvidia_smi = std::env::var_os(NVIDIA_SMI_ENV)
            .map(PathBuf::from)
            .or_else(|| find_on_path("nvidia-smi"));
        let recheck = std::env::var(RECHECK_ENV)
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| *s > 0.0)
            .map_or(Duration::from_secs(30), Duration::from_secs_f64);
        GpuEnv {
            dev_dir,
            nvidia_smi,
            recheck,
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The outcome of a preflight check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preflight {
    /// Launch.
    Ok,
    /// Do not launch; the reason goes to the status line.
    Waiting(String),
}

/// Checks device nodes and the driver before a launch. With no GPUs configured
/// the UI is launched without checks.
pub async fn preflight(env: &GpuEnv, gpus: Option<&[u32]>) -> Preflight {
    let Some(gpus) = gpus else {
        return Preflight::Ok;
    };
    if !exists(&env.dev_dir.join("nvidiactl")) {
        return Preflight::Waiting(format!(
            "NVIDIA driver not loaded ({} missing)",
            env.dev_dir.join("nvidiactl").display()
        ));
    }
    for id in gpus {
        let node = env.dev_dir.join(format!("nvidia{id}"));
        if !exists(&node) {
            return Preflight::Waiting(format!("GPU {id} not found ({} missing)", node.display()));
        }
    }
    if let Some(smi) = &env.nvidia_smi
        && driver_mismatch(smi).await
    {
        return Preflight::Waiting("NVIDIA driver/library mismatch, reboot required".into());
    }
    Preflight::Ok
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// Runs `nvidia-smi` (10 s limit) and looks for the mismatch message. Any other
/// failure is logged and does not block the launch: the UI's own error is clearer.
async fn driver_mismatch(smi: &Path) -> bool {
    let run = Command::new(smi).kill_on_drop(true).output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(out)) => {
            let text = [out.stdout, out.stderr].concat();
            let text = String::from_utf8_lossy(&text);
            if text.contains("Driver/library version mismatch") {
                return true;
            }
            if !out.status.success() {
                tracing::warn!(status = %out.status, output = %text.trim(), "nvidia-smi failed");
            }
            false
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, smi = %smi.display(), "cannot run nvidia-smi");
            false
        }
        Err(_) => {
            tracing::warn!(smi = %smi.display(), "nvidia-smi did not answer within 10s");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(dir: &Path, smi: Option<PathBuf>) -> GpuEnv {
        GpuEnv {
            dev_dir: dir.to_path_buf(),
            nvidia_smi: smi,
            recheck: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn no_gpus_means_no_checks() {
        let e = env(Path::new("/nonexistent"), None);
        assert_eq!(preflight(&e, None).await, Preflight::Ok);
    }

    #[tokio::test]
    async fn missing_device_nodes_wait() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(dir.path(), None);
        assert!(
            matches!(preflight(&e, Some(&[0])).await, Preflight::Waiting(r) if r.contains("nvidiactl"))
        );
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        std::fs::write(dir.path().join("nvidia0"), "").unwrap();
        assert_eq!(preflight(&e, Some(&[0])).await, Preflight::Ok);
        assert!(
            matches!(preflight(&e, Some(&[0, 1])).await, Preflight::Waiting(r) if r.starts_with("GPU 1 not found"))
        );
    }
}
