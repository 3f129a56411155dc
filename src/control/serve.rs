//! Serving the control API with limits, so that a local user without the token can
//! neither use up the daemon's file descriptors nor keep connections forever:
//! at most `control.max_connections` connections per listener (more are accepted
//! and closed at once, so they cost no fd and no backlog slot), and a connection
//! that has not sent a complete request head within [`HEADER_TIMEOUT`] — an idle
//! or half-written one, before or between requests — is closed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

/// Longest wait for a request head (also the idle limit of a kept-alive connection).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (EMFILE): the error repeats until an fd frees up.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// At most one "over the cap" warning per this period.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// A listener the control API can serve: TCP or unix.
pub trait Acceptor: Send + 'static {
    /// The accepted stream.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept_io(&self) -> impl std::future::Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        let (io, _) = self.accept().await?;
        let _ = io.set_nodelay(true);
        Ok(io)
    }
}

impl Acceptor for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept_io(&self) -> std::io::Result<Self::Io> {
        Ok(self.accept().await?.0)
    }
}

/// Serves `router` on `listener` with at most `max` connections until `stopped`
/// turns true; connections in flight then get to finish (the caller bounds that).
pub fn serve<L: Acceptor>(
    listener: L,
    router: axum::Router,
    max: usize,
    mut stopped: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(max));
        let graceful = GracefulShutdown::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT);
        let stop = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tokio::pin!(stop);
        let mut refused: u64 = 0;
        let mut last_warning: Option<Instant> = None;
        loop {
            let io = tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept_io() => match accepted {
                    Ok(io) => io,
                    Err(e) => {
                        tracing::warn!(error = %e, "control API: cannot accept a connection");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                drop(io);
                refused += 1;
                if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        max,
                        refused,
                        "control API: connection limit reached; closing new connections (control.max_connections)"
                    );
                }
                continue;
            };
            let service = TowerToHyperService::new(router.clone());
            let conn = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
            tokio::spawn(async move {
                let _ = conn.await;
                drop(slot);
            });
        }
        graceful.shutdown().await;
    })
}
