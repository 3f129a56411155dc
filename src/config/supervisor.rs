//! `[supervisor]`: what the supervisor applies to itself on an upgrade
//! (DESIGN §2 flow 4). Kept apart from the other sections so the self-upgrade
//! keys have one home: the raw form, its checks and the typed form.
//!
//! - `executable`: absolute path of the binary the service should run. A reload
//!   that names a different binary hands the running state over to it in place
//!   (`execve`, same PID, the UI keeps running). Omitted: never self-upgrade.
//! - `unit_fingerprint`: an opaque label of the systemd unit's settings, computed
//!   by the NixOS module. A reload that changes it schedules a whole-service
//!   restart for when the UI is idle. Omitted: never.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::diagnostics::{At, Problem};

/// Longest `unit_fingerprint`: a label, not a document.
const FINGERPRINT_MAX: usize = 256;

/// `[supervisor]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    pub executable: Option<String>,
    pub unit_fingerprint: Option<String>,
}

impl RawSupervisor {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["executable", "unit_fingerprint"];
}

/// `[supervisor]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SupervisorConfig {
    /// The binary the service should run; a different one is handed over to.
    pub executable: Option<PathBuf>,
    /// Label of the unit's settings; a change schedules a service restart.
    pub unit_fingerprint: Option<String>,
}

/// Checks `[supervisor]`: the executable must be an absolute path (whether it
/// exists is checked when a reload wants to hand over to it, so a config can be
/// checked before the package is built), the fingerprint a non-empty line.
pub fn validate(raw: RawSupervisor, problems: &mut Vec<Problem>) -> SupervisorConfig {
    let executable = raw.executable.map(|e| {
        let why = if e.is_empty() {
            Some("must not be empty".to_string())
        } else if e.contains('\0') {
            Some("must not contain a NUL byte".to_string())
        } else if !e.starts_with('/') {
            Some(format!("{e:?} is not an absolute path"))
        } else if e.len() > super::limits::PATH_MAX {
            Some(format!(
                "is {} bytes long; a path has at most {}",
                e.len(),
                super::limits::PATH_MAX
            ))
        } else {
            None
        };
        if let Some(why) = why {
            problems.push(Problem::new(["supervisor", "executable"], At::Value, why));
        }
        PathBuf::from(e)
    });
    let unit_fingerprint = raw.unit_fingerprint.inspect(|f| {
        if f.trim().is_empty() || f.contains(['\n', '\0']) || f.len() > FINGERPRINT_MAX {
            problems.push(Problem::new(
                ["supervisor", "unit_fingerprint"],
                At::Value,
                format!("must be a non-empty single line of at most {FINGERPRINT_MAX} bytes"),
            ));
        }
    });
    SupervisorConfig {
        executable,
        unit_fingerprint,
    }
}
