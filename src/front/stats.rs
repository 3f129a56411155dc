//! What the front door counts: requests proxied by status class, held, rejected
//! by reason, websockets, and a latency histogram. Lock-free counters the serving
//! tasks bump; adapters read a [`FrontStatus`] (status JSON, metrics, D-Bus).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets (time from the request head to the UI's
/// answer head, holds included), in seconds; the last bucket is `+Inf`.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 300.0,
];

/// Why the front door answered a request itself instead of the UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rejected {
    /// No or wrong credentials (401).
    Unauthorized,
    /// Too many failed attempts from the address (429).
    RateLimited,
    /// `front.max_held` requests were already held (503).
    HoldFull,
    /// The UI did not become ready within `front.hold_timeout` (503).
    HoldTimeout,
    /// The UI failed (crash loop, layout error) and will not start by itself (503).
    UiFailed,
    /// The UI closed the connection before answering (502).
    UiGone,
    /// A browser got the "restarting" page while the UI was not ready (503).
    RestartingPage,
    /// A websocket was closed with 1012 (service restart) while the UI was not ready.
    WebsocketClosed,
}

impl Rejected {
    /// Every reason, in the order metrics list them.
    pub const ALL: [Rejected; 8] = [
        Rejected::Unauthorized,
        Rejected::RateLimited,
        Rejected::HoldFull,
        Rejected::HoldTimeout,
        Rejected::UiFailed,
        Rejected::UiGone,
        Rejected::RestartingPage,
        Rejected::WebsocketClosed,
    ];

    /// The name used in JSON and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Rejected::Unauthorized => "unauthorized",
            Rejected::RateLimited => "rate-limited",
            Rejected::HoldFull => "hold-full",
            Rejected::HoldTimeout => "hold-timeout",
            Rejected::UiFailed => "ui-failed",
            Rejected::UiGone => "ui-gone",
            Rejected::RestartingPage => "restarting-page",
            Rejected::WebsocketClosed => "websocket-closed",
        }
    }

    fn index(self) -> usize {
        Rejected::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

/// The counters. One per front door, shared by its serving tasks.
#[derive(Debug, Default)]
pub struct Stats {
    proxied: [AtomicU64; 5],
    held_total: AtomicU64,
    held_now: AtomicU64,
    rejected: [AtomicU64; Rejected::ALL.len()],
    websockets_total: AtomicU64,
    websockets_open: AtomicU64,
    in_flight: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
    /// With `[instances]`: requests answered per instance, by index.
    routed: [AtomicU64; crate::config::instances::MAX_INSTANCES],
}

impl Stats {
    /// The UI answered with `status` after `took`.
    pub fn proxied(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.proxied[class].fetch_add(1, Relaxed);
        let secs = took.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, Relaxed);
    }

    /// Instance `i` answered a request.
    pub fn routed(&self, i: usize) {
        if let Some(n) = self.routed.get(i) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// The front door answered itself.
    pub fn rejected(&self, why: Rejected) {
        self.rejected[why.index()].fetch_add(1, Relaxed);
    }

    /// A request starts waiting for the UI; the guard ends the wait.
    pub fn hold(&self) -> HeldGuard<'_> {
        self.held_total.fetch_add(1, Relaxed);
        self.held_now.fetch_add(1, Relaxed);
        HeldGuard(self)
    }

    /// Requests held right now.
    pub fn held_now(&self) -> u64 {
        self.held_now.load(Relaxed)
    }

    /// A websocket was relayed to the UI; call [`Stats::websocket_closed`] at its end.
    pub fn websocket_opened(&self) {
        self.websockets_total.fetch_add(1, Relaxed);
        self.websockets_open.fetch_add(1, Relaxed);
    }

    /// A relayed websocket ended.
    pub fn websocket_closed(&self) {
        let _ = self
            .websockets_open
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }

    /// Sets the number of requests in flight (proxied or held).
    pub fn set_in_flight(&self, n: usize) {
        self.in_flight
            .store(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counters that go on from `before` (what the previous binary counted);
    /// the gauges start at zero, as nothing is held or open in a new binary.
    pub fn resumed(before: &FrontStatus) -> Stats {
        let s = Stats::default();
        let p = &before.proxied;
        for (slot, n) in s.proxied.iter().zip([
            p.informational,
            p.success,
            p.redirect,
            p.client_error,
            p.server_error,
        ]) {
            slot.store(n, Relaxed);
        }
        s.held_total.store(before.held_total, Relaxed);
        for r in Rejected::ALL {
            let n = before.rejected.get(r.name()).copied().unwrap_or(0);
            s.rejected[r.index()].store(n, Relaxed);
        }
        s.websockets_total.store(before.websockets_total, Relaxed);
        for (slot, n) in s.buckets.iter().zip(&before.latency_buckets) {
            slot.store(*n, Relaxed);
        }
        let us = (before.latency_sum_seconds * 1e6).clamp(0.0, u64::MAX as f64) as u64;
        s.latency_sum_us.store(us, Relaxed);
        for (slot, n) in s.routed.iter().zip(&before.routed) {
            slot.store(*n, Relaxed);
        }
        s
    }

    /// A copy of every counter.
    pub fn status(&self) -> FrontStatus {
        let load = |a: &AtomicU64| a.load(Relaxed);
        FrontStatus {
            proxied: ProxiedByClass {
                informational: load(&self.proxied[0]),
                success: load(&self.proxied[1]),
                redirect: load(&self.proxied[2]),
                client_error: load(&self.proxied[3]),
                server_error: load(&self.proxied[4]),
            },
            held_total: load(&self.held_total),
            held_now: load(&self.held_now),
            in_flight: load(&self.in_flight),
            rejected: Rejected::ALL
                .iter()
                .map(|r| (r.name().to_string(), load(&self.rejected[r.index()])))
                .collect(),
            websockets_total: load(&self.websockets_total),
            websockets_open: load(&self.websockets_open),
            latency_buckets: self.buckets.iter().map(load).collect(),
            latency_sum_seconds: load(&self.latency_sum_us) as f64 / 1e6,
            routed: {
                let mut r: Vec<u64> = self.routed.iter().map(load).collect();
                while r.last() == Some(&0) {
                    r.pop();
                }
                r
            },
        }
    }
}

/// Ends a hold when dropped.
#[derive(Debug)]
pub struct HeldGuard<'a>(&'a Stats);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .held_now
            .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
    }
}

/// Requests the UI answered, by the class of its status code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxiedByClass {
    /// 1xx (a websocket's 101 among them).
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirect: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx.
    pub server_error: u64,
}

impl FrontStatus {
    /// Every request the door has answered, forwarded or with one of its own.
    pub fn answered(&self) -> u64 {
        let proxied: u64 = self.proxied.classes().iter().map(|(_, n)| n).sum();
        let rejected: u64 = self.rejected.values().sum();
        proxied.saturating_add(rejected)
    }
}

impl ProxiedByClass {
    /// `(label, count)` pairs in metrics order.
    pub fn classes(&self) -> [(&'static str, u64); 5] {
        [
            ("1xx", self.informational),
            ("2xx", self.success),
            ("3xx", self.redirect),
            ("4xx", self.client_error),
            ("5xx", self.server_error),
        ]
    }
}

/// The front door's counters as status, metrics and D-Bus show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FrontStatus {
    /// Requests the UI answered.
    pub proxied: ProxiedByClass,
    /// Requests that waited for the UI, ever.
    pub held_total: u64,
    /// Requests waiting for the UI now.
    pub held_now: u64,
    /// Requests proxied or held right now (a self-upgrade waits for zero).
    pub in_flight: u64,
    /// Requests answered by the front door itself, by reason.
    pub rejected: std::collections::BTreeMap<String, u64>,
    /// Websockets relayed, ever.
    pub websockets_total: u64,
    /// Websockets relayed now.
    pub websockets_open: u64,
    /// Non-cumulative counts per [`LATENCY_BUCKETS`] bound, then `+Inf`.
    pub latency_buckets: Vec<u64>,
    /// Sum of the latencies counted, in seconds.
    pub latency_sum_seconds: f64,
    /// With `[instances]`: requests each instance answered, in the config's
    /// order (trailing zeros left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routed: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_buckets_and_holds_are_counted() {
        let s = Stats::default();
        s.proxied(200, Duration::from_micros(500));
        s.proxied(101, Duration::from_millis(20));
        s.proxied(503, Duration::from_secs(400));
        s.proxied(999, Duration::ZERO);
        s.rejected(Rejected::HoldFull);
        {
            let _held = s.hold();
            assert_eq!(s.held_now(), 1);
        }
        let st = s.status();
        assert_eq!(st.proxied.success, 1);
        assert_eq!(st.proxied.informational, 1);
        assert_eq!(st.proxied.server_error, 2);
        assert_eq!(st.latency_buckets[0], 2);
        assert_eq!(st.latency_buckets[4], 1);
        assert_eq!(*st.latency_buckets.last().unwrap(), 1);
        assert_eq!(st.held_total, 1);
        assert_eq!(st.held_now, 0);
        assert_eq!(st.rejected["hold-full"], 1);
        let again = Stats::resumed(&st).status();
        assert_eq!(again, st, "the counters go on across a handoff");
    }
}
