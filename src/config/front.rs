//! `[front]`: the front door, the supervisor's own listener on `ui.port` in front
//! of the UI (docs/front-door.md). Kept apart from the other sections so its keys
//! have one home: the raw form, its checks and the typed form.
//!
//! With the front door on (the default) `ui.port` and `ui.listen` describe the
//! supervisor's listener, and the UI runs on a private loopback port: `ui_port`
//! when set, else one the supervisor picks at start and keeps (across a
//! self-upgrade too). The whole section is set up once, at start, like
//! `[control]`: a reload reports a change of it as taking effect at the next start.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checker::Checker;
use super::limits;

/// `front.max_held` when the config does not say.
pub const DEFAULT_MAX_HELD: usize = 1024;
/// `front.max_connections` when the config does not say.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Largest `front.max_held` and `front.max_connections`.
pub const LIMIT: usize = 65_536;
/// `front.hold_timeout` when the config does not say.
pub const DEFAULT_HOLD_TIMEOUT: &str = "5m";

/// `[front]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFront {
    pub enable: Option<bool>,
    pub hold_timeout: Option<String>,
    pub max_held: Option<i64>,
    pub max_connections: Option<i64>,
    pub auth_file: Option<String>,
    pub ui_port: Option<i64>,
}

impl RawFront {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &[
        "enable",
        "hold_timeout",
        "max_held",
        "max_connections",
        "auth_file",
        "ui_port",
    ];
}

/// `[front]`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontConfig {
    /// The supervisor owns `ui.port`; `false`: the UI binds it itself (no front door).
    pub enable: bool,
    /// Longest time an API request is held while the UI is not ready.
    #[serde(with = "super::humantime_serde_compat")]
    pub hold_timeout: Duration,
    /// Most requests held at once; more are answered 503 at once.
    pub max_held: usize,
    /// Most client connections at once; more are closed at once.
    pub max_connections: usize,
    /// Credentials every request must carry (Basic `user:password` lines, bearer
    /// token lines); `None`: no authentication.
    pub auth_file: Option<PathBuf>,
    /// The UI's private loopback port as the config sets it; `None`: picked at
    /// start ([`FrontConfig::pin_ui_port`] records the pick in the config in force).
    pub ui_port: Option<u16>,
}

impl Default for FrontConfig {
    fn default() -> Self {
        FrontConfig {
            enable: true,
            hold_timeout: Duration::from_secs(300),
            max_held: DEFAULT_MAX_HELD,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            auth_file: None,
            ui_port: None,
        }
    }
}

impl FrontConfig {
    /// Records the private port picked at start, so every later use (argv, probes,
    /// a handoff) sees the one port the UI runs on.
    pub fn pin_ui_port(&mut self, port: u16) {
        if self.enable && self.ui_port.is_none() {
            self.ui_port = Some(port);
        }
    }
}

/// Checks `[front]`: the hold timeout a duration, the counts in range, the auth
/// file an absolute path, the private port a port other than `ui_port_public`.
pub(super) fn validate(
    c: &mut Checker<'_>,
    raw: RawFront,
    ui_port_public: Option<u16>,
) -> FrontConfig {
    let hold_timeout = c.duration(
        "front",
        "hold_timeout",
        raw.hold_timeout.as_deref(),
        DEFAULT_HOLD_TIMEOUT,
        limits::HOLD_TIMEOUT,
    );
    let mut count = |key: &str, value: Option<i64>, default: usize| match value {
        None => default,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (1..=LIMIT).contains(&n) => n,
            _ => {
                c.value(
                    ["front", key],
                    format!("{n} is out of range (1 to {LIMIT})"),
                );
                default
            }
        },
    };
    let max_held = count("max_held", raw.max_held, DEFAULT_MAX_HELD);
    let max_connections = count(
        "max_connections",
        raw.max_connections,
        DEFAULT_MAX_CONNECTIONS,
    );
    let auth_file = raw
        .auth_file
        .map(|p| c.absolute(&["front".into(), "auth_file".into()], &p));
    let ui_port = raw.ui_port.and_then(|p| match u16::try_from(p) {
        Ok(p) if p > 0 && Some(p) == ui_port_public => {
            c.value(
                ["front", "ui_port"],
                format!("{p} is ui.port, which the front door listens on; the UI needs another"),
            );
            None
        }
        Ok(p) if p > 0 => Some(p),
        _ => {
            c.value(
                ["front", "ui_port"],
                format!("{p} is out of range (1 to 65535)"),
            );
            None
        }
    });
    FrontConfig {
        enable: raw.enable.unwrap_or(true),
        hold_timeout,
        max_held,
        max_connections,
        auth_file,
        ui_port,
    }
}

impl FrontConfig {
    /// A reload's new config keeps the running front door's settings (its
    /// listener and limits are set up once, at start; the diff reports the
    /// changes as taking effect at the next start): the whole `[front]`, and
    /// behind the front door `ui.port` and `ui.listen`, which are its address.
    pub fn carry_over(old: &super::Config, new: &mut super::Config) {
        new.front = old.front.clone();
        if old.front.enable {
            new.ui.port = old.ui.port;
            new.ui.listen = old.ui.listen;
        }
    }
}
