//! Warn once per distinct error: a failure that repeats on every retry is one
//! warning, then `debug` lines, until the error changes or the work succeeds.
//!
//! The tasks beside the core that talk to something outside (the sleep
//! inhibitor to logind, the Pod's deletion cost to the API server) retry on
//! their own, some every second; warning at each try would bury the rest of
//! the log under one unchanged line. Each keeps a [`WarnOnce`] and asks it
//! which level a failure gets; the log call itself stays with the caller, which
//! knows its message and fields.

/// The error last warned about, so that a repeat of it is not warned again.
#[derive(Debug, Default)]
pub struct WarnOnce {
    last: Option<String>,
}

impl WarnOnce {
    /// Whether `error` is to be warned about: `true` when it is not the one
    /// warned about last (it becomes that one), `false` for a repeat, which
    /// the caller logs at `debug`.
    #[must_use]
    pub fn is_new(&mut self, error: &str) -> bool {
        if self.last.as_deref() == Some(error) {
            return false;
        }
        self.last = Some(error.to_string());
        true
    }

    /// The failure is over: the next error is warned about again, even the
    /// same one. `true` when one had been warned about, so the caller can say
    /// that the work goes through again.
    pub fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeat_is_quiet_until_the_error_changes_or_clears() {
        let mut w = WarnOnce::default();
        assert!(w.is_new("refused"));
        assert!(!w.is_new("refused"));
        assert!(!w.is_new("refused"));
        assert!(w.is_new("timed out"));
        assert!(w.is_new("refused"), "only the last error is remembered");
        assert!(w.clear(), "one was warned about");
        assert!(!w.clear(), "nothing is left to clear");
        assert!(
            w.is_new("refused"),
            "after a success the same error warns again"
        );
    }
}
