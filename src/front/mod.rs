//! The front door (docs/front-door.md): the supervisor listens on `ui.port` and
//! passes requests to the UI on a private loopback port, so a restart of the UI
//! is never "connection refused". While the UI is not ready, API requests are
//! held and sent on once it is, browsers get a page that reloads itself, and
//! websockets are closed with a code that makes the frontends reconnect.
//!
//! The door reads the core only through its snapshots (the [`gate`]) and holds
//! no state of the core's; the core sees the door only through the number of
//! requests in flight ([`FrontDoor::busy`]), which a self-upgrade waits on, and
//! the answers the UI is sending ([`Answers`]), which a planned stop of the UI
//! lets finish.
//! Its listener is handed to the next binary with the rest
//! ([`FrontDoor::hand_over`]): connections wait in the kernel's queue meanwhile.

pub mod auth;
mod forward;
pub mod gate;
mod keep;
mod page;
mod request;
pub mod route;
pub mod stats;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::supervisor::protocol::{CoreHandle, Snapshot};

pub use auth::{AuthError, Credentials};
pub use page::STATUS_PATH;
pub use stats::{FrontStatus, Stats};

/// Longest wait for a request head; also how long a kept-alive connection may
/// idle (nginx keeps 75 s).
const HEADER_TIMEOUT: Duration = Duration::from_secs(75);
/// Pause after a failed `accept` (EMFILE): the error repeats until an fd frees up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How often the door looks whether it served anything and is idle now, to hand
/// the memory its buffers freed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Why the front door cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    /// Binding `ui.port` failed.
    #[error(
        "front door: cannot listen on {addr} (ui.port): {source}; is the UI or another supervisor still running there? (front.enable = false lets the UI bind it itself)"
    )]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// No private port could be had for the UI.
    #[error("front door: cannot pick a private port for the UI: {0}")]
    PickPort(#[source] std::io::Error),
    /// The credentials file is unusable.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// Turning the socket into a tokio one failed.
    #[error("front door: {0}")]
    Io(#[from] std::io::Error),
}

/// The address the front door listens on: `ui.port` on loopback, or on every
/// IPv4 address with `ui.listen` (what the UIs' own `--listen` binds).
pub fn address(config: &Config) -> SocketAddr {
    let ip = if config.ui.listen {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    };
    SocketAddr::new(ip, config.ui.port)
}

/// Binds the front door's listener.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, FrontError> {
    std::net::TcpListener::bind(addr).map_err(|source| FrontError::Bind { addr, source })
}

/// Where the kernel's ephemeral ports begin when `ip_local_port_range` cannot
/// be read (its default).
const EPHEMERAL_FROM: u16 = 32768;
/// How many ports below the ephemeral range the UI's private port is picked from.
const PRIVATE_SPAN: u16 = 10_000;

/// A free loopback port for the UI, picked just below the kernel's ephemeral
/// range (`net.ipv4.ip_local_port_range`). A port from that range could be
/// taken between the pick and the UI's bind by any outgoing connection on the
/// machine, the door's own connections to the UI among them. The search starts
/// at a place of this process's own, so supervisors starting side by side
/// rarely try the same port.
pub fn pick_ui_port(avoid: &[u16]) -> Result<u16, FrontError> {
    let (from, to) = private_band(ephemeral_start());
    let span = u32::from(to - from);
    let start = std::process::id().wrapping_mul(7919) % span;
    let mut last = None;
    for i in 0..span {
        let port = from + u16::try_from((start + i) % span).unwrap_or(0);
        if avoid.contains(&port) {
            continue;
        }
        match std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(_) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(FrontError::PickPort(last.unwrap_or_else(|| {
        std::io::Error::other(format!("no free port in {from}..{to}"))
    })))
}

/// The first ephemeral port, from `/proc/sys/net/ipv4/ip_local_port_range`.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(EPHEMERAL_FROM)
}

/// The ports the private port is picked from, `[from, to)`: the
/// [`PRIVATE_SPAN`] below `ephemeral` and above the privileged ones. With an
/// ephemeral range set that low, every port is ephemeral; the top ones then.
fn private_band(ephemeral: u16) -> (u16, u16) {
    if ephemeral >= 1024 + PRIVATE_SPAN {
        (ephemeral - PRIVATE_SPAN, ephemeral)
    } else {
        (u16::MAX - PRIVATE_SPAN, u16::MAX)
    }
}

/// The settings the door runs with (from `[front]`, read once at start).
#[derive(Debug, Clone)]
pub struct Settings {
    /// The UI's private loopback port.
    pub ui_port: u16,
    /// `front.hold_timeout`.
    pub hold_timeout: Duration,
    /// `front.max_held`.
    pub max_held: usize,
    /// `front.max_connections`.
    pub max_connections: usize,
    /// `front.auth_file`, read.
    pub auth: Option<Credentials>,
    /// The previous binary's counters, after a handoff.
    pub resumed: Option<FrontStatus>,
    /// Whether ComfyUI's submissions are journaled (and held while the queue
    /// is paused or replaying): ComfyUI with `queue.keep`.
    pub keep: bool,
    /// With `[instances]`: each instance's name and private port, in the
    /// config's order (the snapshot's `instances`); empty: one UI at `ui_port`.
    pub instances: Vec<(String, u16)>,
}

impl Settings {
    /// Reads the settings of `config` (the credentials file among them);
    /// `ui_port` must be the port pinned in the config.
    pub fn of(config: &Config) -> Result<Settings, FrontError> {
        let auth = match &config.front.auth_file {
            Some(path) => Some(Credentials::load(path)?),
            None => None,
        };
        Ok(Settings {
            ui_port: config.ui_own_port(),
            hold_timeout: config.front.hold_timeout,
            max_held: config.front.max_held,
            max_connections: config.front.max_connections,
            auth,
            resumed: None,
            instances: Vec::new(),
            keep: config.ui.flavor == crate::ui::flavor::Flavor::Comfyui && config.queue.keep,
        })
    }
}

/// The answers the UI is sending through the door. A planned stop of the UI
/// (a restart, `restart --now`, the supervisor's stop) closes the gate, so new
/// requests are held, and waits for these before its signal: the UIs exit at
/// once on SIGINT, cutting off whatever they were sending.
#[derive(Clone)]
pub struct Answers {
    sending: watch::Receiver<usize>,
    snapshots: watch::Receiver<Snapshot>,
    /// With instances: which one's gate and answers.
    instance: Option<usize>,
}

impl Answers {
    /// Waits, at most `bound`, until the core's snapshot has closed the gate
    /// and no request is on its way to the UI or being answered; whether all
    /// were answered.
    pub async fn finished(mut self, bound: Duration) -> bool {
        let all = async {
            let instance = self.instance;
            let _ = self
                .snapshots
                .wait_for(|s| match instance {
                    None => gate::Gate::of(s) != gate::Gate::Open,
                    Some(i) => !route::serves(s, i),
                })
                .await;
            let _ = self.sending.wait_for(|n| *n == 0).await;
        };
        tokio::time::timeout(bound, all).await.is_ok()
    }

    /// How many answers are on their way now.
    pub fn now(&self) -> usize {
        *self.sending.borrow()
    }
}

/// The running front door.
pub struct FrontDoor {
    stop: watch::Sender<bool>,
    accept: JoinHandle<()>,
    /// A second descriptor of the listener, kept for a handoff.
    kept: OwnedFd,
    stats: Arc<Stats>,
    busy: watch::Receiver<usize>,
    /// One per UI behind the door (one without instances).
    answers: Vec<Answers>,
    local: SocketAddr,
}

impl FrontDoor {
    /// Serves `listener` (bound by [`bind`] or inherited) in front of the UI.
    pub fn start(
        listener: std::net::TcpListener,
        settings: Settings,
        core: &CoreHandle,
    ) -> Result<FrontDoor, FrontError> {
        let local = listener.local_addr()?;
        let kept: OwnedFd = listener.try_clone()?.into();
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let (stop, stop_rx) = watch::channel(false);
        let (busy, busy_rx) = watch::channel(0usize);
        let uis = settings.instances.len().max(1);
        let (sending, answers): (Vec<_>, Vec<_>) = (0..uis)
            .map(|i| {
                let (tx, rx) = watch::channel(0usize);
                let answers = Answers {
                    sending: rx,
                    snapshots: core.subscribe(),
                    instance: (!settings.instances.is_empty()).then_some(i),
                };
                (tx, answers)
            })
            .unzip();
        let stats = Arc::new(
            settings
                .resumed
                .as_ref()
                .map_or_else(Stats::default, Stats::resumed),
        );
        let max_connections = settings.max_connections;
        let shared = Arc::new(request::Shared {
            ui_port: settings.ui_port,
            instances: settings.instances.clone(),
            table: Mutex::new(route::Table::default()),
            hold_timeout: settings.hold_timeout,
            max_held: settings.max_held,
            auth: settings.auth,
            limiter: Mutex::new(auth::Limiter::default()),
            snapshots: core.subscribe(),
            stats: stats.clone(),
            busy,
            sending,
            stop: stop_rx.clone(),
            keep: settings.keep.then(|| keep::Tap::new(core.clone())),
        });
        tokio::spawn(release_memory_when_idle(
            stats.clone(),
            busy_rx.clone(),
            stop_rx.clone(),
        ));
        let accept = tokio::spawn(accept_loop(listener, shared, max_connections, stop_rx));
        tracing::info!(address = %local, ui_port = settings.ui_port, "front door listening");
        Ok(FrontDoor {
            stop,
            accept,
            kept,
            stats,
            busy: busy_rx,
            answers,
            local,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The counters, for status, metrics and D-Bus.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Requests in flight (proxied or held), for the core's handoff decision.
    pub fn busy(&self) -> watch::Receiver<usize> {
        self.busy.clone()
    }

    /// The answers the UI (with instances: instance `i`) is sending, for the
    /// core's planned stops.
    pub fn answers(&self, i: usize) -> Answers {
        // `start` makes one per UI, at least one.
        let last = self.answers.len().saturating_sub(1);
        self.answers[i.min(last)].clone()
    }

    /// Stops accepting (new connections wait in the kernel's queue), ends every
    /// connection once its current answer is sent, waits up to `grace` for the
    /// requests in flight, and returns the listener and the counters for the
    /// next binary.
    pub async fn hand_over(self, grace: Duration) -> (OwnedFd, FrontStatus) {
        self.finish(grace).await;
        (self.kept, self.stats.status())
    }

    /// Like [`FrontDoor::hand_over`], for a stop: the listener closes.
    pub async fn shutdown(self, grace: Duration) {
        self.finish(grace).await;
    }

    async fn finish(&self, grace: Duration) {
        let _ = self.stop.send(true);
        self.accept.abort();
        let mut busy = self.busy.clone();
        let drained = tokio::time::timeout(grace, busy.wait_for(|n| *n == 0)).await;
        if drained.is_err() {
            tracing::warn!(
                in_flight = *self.busy.borrow(),
                "front door: requests still in flight after the grace; they are cut off"
            );
        }
    }
}

/// A 20 MB answer or a thousand held requests leave freed memory in the
/// allocator's heap, which it keeps: the daemon's idle RSS would stay raised
/// after one busy minute. Every [`TRIM_EVERY`], if the door served anything
/// since the last look and nothing is in flight now, the free memory goes back
/// to the kernel (`malloc_trim`; glibc only, a no-op elsewhere).
async fn release_memory_when_idle(
    stats: Arc<Stats>,
    busy: watch::Receiver<usize>,
    mut stop: watch::Receiver<bool>,
) {
    let mut seen = stats.status().answered();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TRIM_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = stats.status().answered();
        if now != seen && *busy.borrow() == 0 {
            seen = now;
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only returns free heap pages to the kernel.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<request::Shared>,
    max: usize,
    stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    let mut refused: u64 = 0;
    loop {
        let (io, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "front door: cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(io);
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    max,
                    refused,
                    "front door: connection limit reached; closing new connections (front.max_connections)"
                );
            }
            continue;
        };
        let _ = io.set_nodelay(true);
        let shared = shared.clone();
        let mut stop = stop.clone();
        let conn = builder.serve_connection(
            TokioIo::new(io),
            service_fn(move |req| request::handle(shared.clone(), peer.ip(), req)),
        );
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            let stopped = tokio::select! {
                _ = conn.as_mut() => false,
                r = stop.wait_for(|s| *s) => r.is_ok(),
            };
            if stopped {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_private_port_lies_below_the_ephemeral_range() {
        assert_eq!(private_band(32768), (22768, 32768));
        assert_eq!(private_band(11024), (1024, 11024));
        assert_eq!(private_band(2000), (55535, 65535));
        let port = pick_ui_port(&[]).expect("a free port");
        let (from, to) = private_band(ephemeral_start());
        assert!((from..to).contains(&port), "{port} not in {from}..{to}");
        std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("still free");
    }
}
