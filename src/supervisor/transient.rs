//! Failures that pass by themselves — no free file descriptor, a full disk, an I/O
//! error, no memory for a fork — are retried with a backoff and reported as
//! `waiting`, never turned into a `failed` that only a manual restart clears.

use std::io;
use std::time::Duration;

/// First retry delay; doubles up to [`MAX_DELAY`].
const FIRST_DELAY: Duration = Duration::from_secs(1);
/// Longest retry delay.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Whether `e` (or an error it wraps) is an OS error that may pass by itself.
pub fn is_transient(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && io_transient(io)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// The errnos [`is_transient`] accepts.
pub fn io_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOSPC
                | libc::EDQUOT
                | libc::EIO
                | libc::ENOMEM
                | libc::EAGAIN
                | libc::EBUSY
                | libc::EINTR
                | libc::ETXTBSY
        )
    )
}

/// Consecutive transient failures and the delay before the next try.
#[derive(Debug, Default)]
pub struct Retry {
    failures: u32,
}

impl Retry {
    /// Counts a failure; returns how long to wait before trying again.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(6);
        FIRST_DELAY
            .checked_mul(1 << shift)
            .unwrap_or(MAX_DELAY)
            .min(MAX_DELAY)
    }

    /// A try succeeded: the next failure starts from the first delay again.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_fds_and_space_are_transient_permission_is_not() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOSPC, libc::EIO] {
            let e = io::Error::from_raw_os_error(errno);
            assert!(is_transient(&e), "{e}");
        }
        assert!(!is_transient(&io::Error::from_raw_os_error(libc::EACCES)));
        let wrapped = crate::layout::LayoutError::Io {
            op: "create",
            path: "/x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC),
        };
        assert!(is_transient(&wrapped));
    }

    #[test]
    fn the_delay_doubles_to_a_minute_and_resets() {
        let mut r = Retry::default();
        let d: Vec<u64> = (0..9).map(|_| r.failed().as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        r.succeeded();
        assert_eq!(r.failed().as_secs(), 1);
    }
}
