//! Bounded polling: every wait in the tests ends, with what it waited for in the
//! panic message.

use std::time::{Duration, Instant};

/// Polls `f` every 10 ms until it returns `Some`, or `None` after `timeout`.
pub fn poll_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`poll_until`], panicking after `timeout` with `what` in the message.
pub fn wait_for<T>(what: &str, timeout: Duration, check: impl FnMut() -> Option<T>) -> T {
    wait_for_with(|| what.to_string(), timeout, check)
}

/// Like [`wait_for`], with the panic message computed at the timeout (so it can show
/// what was seen instead).
pub fn wait_for_with<T>(
    what: impl Fn() -> String,
    timeout: Duration,
    check: impl FnMut() -> Option<T>,
) -> T {
    poll_until(timeout, check)
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {}", what()))
}
