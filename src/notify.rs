//! Telling systemd the truth: `READY=1`, `RELOADING=1`+`MONOTONIC_USEC`, `STATUS=`,
//! `WATCHDOG=1`, `EXTEND_TIMEOUT_USEC`, `STOPPING=1`.
//!
//! Without `$NOTIFY_SOCKET` every call is a silent no-op, so the daemon runs the same
//! outside systemd. Send failures are logged, never fatal: losing a status update
//! must not take the UI down.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends sd_notify messages; remembers the last status so repeats are not re-sent.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
    last_status: String,
}

impl Notifier {
    /// Tells systemd nothing: the cores of instances other than the leader,
    /// whose truth reaches systemd in the leader's status line.
    pub fn silent() -> Self {
        Notifier {
            enabled: false,
            watchdog: None,
            last_status: String::new(),
        }
    }

    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
            last_status: String::new(),
        }
    }

    /// How often to ping the watchdog (half of `WATCHDOG_USEC`), when systemd asked.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Start-up (or a reload) is complete.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A reload has begun. `MONOTONIC_USEC` must travel in the same datagram, or
    /// systemd never leaves the reload state for `Type=notify-reload`.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read CLOCK_MONOTONIC; not announcing the reload")
            }
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    /// Keep-alive ping.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// Pushes systemd's start timeout `by` into the future (long model loads).
    pub fn extend_timeout(&self, by: Duration) {
        let usec = u32::try_from(by.as_micros()).unwrap_or(u32::MAX);
        self.send(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// Sets the one-line status shown by `systemctl status`, if it changed.
    pub fn status(&mut self, line: &str) {
        if line != self.last_status {
            self.last_status = line.to_string();
            self.send(&[NotifyState::Status(line)]);
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}
