//! The control plane (docs/design.md#control-plane): the HTTP/JSON API on the unix socket and the
//! optional TCP port, the D-Bus interface, Prometheus metrics, and the CLI client.
//!
//! Every part here only translates between a wire format and the core's
//! [`CoreHandle`]: requests become [`CoreHandle`] calls, answers and properties come
//! from the one [`Snapshot`](crate::supervisor::protocol::Snapshot) the core publishes. The daemon
//! calls [`start`] once everything else is up and [`Control::shutdown`] on the way out.

pub mod client;
pub mod dbus;
pub mod health;
pub mod http;
pub mod metrics;
mod serve;
mod socket;
pub mod status_text;
pub mod token;
pub mod wire;

use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{ControlConfig, DbusBus};
use crate::supervisor::protocol::CoreHandle;

pub use socket::SOCKET_MODE;

/// How long [`Control::shutdown`] lets in-flight requests (a long `wait-idle`)
/// finish before cutting them off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the control plane could not start. All of these are fatal at startup.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another process answers on the socket: most likely a second supervisor.
    #[error(
        "control socket {}: another supervisor is answering on it; stop that one first or set a different control.socket",
        path.display()
    )]
    SocketInUse {
        /// The socket.
        path: PathBuf,
    },
    /// The socket path holds something that is not a socket.
    #[error(
        "control socket {}: the path exists and is not a socket; remove it or set a different control.socket",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Creating or binding the socket failed.
    #[error("control socket {}: {context}: {source}", path.display())]
    Socket {
        /// The socket.
        path: PathBuf,
        /// The step that failed.
        context: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `http_listen` is set without `token_file` (validation normally prevents this).
    #[error(
        "control.http_listen is set but control.token_file is not; the TCP listener requires a token"
    )]
    TokenMissing,
    /// The token file could not be read.
    #[error("control token file {}: {source}", path.display())]
    TokenRead {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The token file is empty.
    #[error("control token file {} is empty; put a secret in it", path.display())]
    TokenEmpty {
        /// The file.
        path: PathBuf,
    },
    /// Binding the TCP listener failed.
    #[error("control TCP listener {addr}: {source}")]
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the bus, serving the object or owning the name failed.
    #[error(
        "D-Bus ({bus} bus): cannot own {name}: {source} (is another supervisor running, and is the bus policy installed?)",
        name = dbus::BUS_NAME
    )]
    Dbus {
        /// `system`, `session` or the address.
        bus: String,
        /// The cause.
        #[source]
        source: zbus::Error,
    },
}

/// The listening sockets of a control plane, handed from one binary to the next
/// (a self-upgrade) so that connections wait in the kernel's queue meanwhile.
#[derive(Debug)]
pub struct Listeners {
    /// The unix socket's listener.
    pub unix: OwnedFd,
    /// Device and inode of the socket file.
    pub socket_id: (u64, u64),
    /// The TCP listener, if one runs.
    pub tcp: Option<OwnedFd>,
}

/// The running control plane; [`Control::shutdown`] stops it.
#[derive(Debug)]
pub struct Control {
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    /// Second descriptors of the listeners, kept for a handoff: the servers
    /// close theirs when they stop.
    kept: Option<(OwnedFd, Option<OwnedFd>)>,
    socket: socket::SocketFile,
    dbus: Option<dbus::DbusService>,
    tcp_addr: Option<SocketAddr>,
}

/// Binds the unix socket (mode 0660; refuses if another supervisor answers on it or
/// the path is not a socket; replaces a stale one), the optional TCP listener
/// (bearer token from `token_file`), and D-Bus on `config.dbus`. Any failure is
/// returned and nothing is left behind.
pub async fn start(handle: CoreHandle, config: &ControlConfig) -> Result<Control, ControlError> {
    let bus = match config.dbus {
        DbusBus::System => Some(dbus::Bus::System),
        DbusBus::Session => Some(dbus::Bus::Session),
        DbusBus::Off => None,
    };
    start_with_bus(handle, config, bus).await
}

/// [`start`] with the bus given explicitly, so tests can use a private bus address.
pub async fn start_with_bus(
    handle: CoreHandle,
    config: &ControlConfig,
    bus: Option<dbus::Bus>,
) -> Result<Control, ControlError> {
    start_inner(handle, config, bus, None).await
}

/// [`start`] on listeners handed over by the binary this one replaced.
pub async fn start_inherited(
    handle: CoreHandle,
    config: &ControlConfig,
    listeners: Listeners,
) -> Result<Control, ControlError> {
    let bus = match config.dbus {
        DbusBus::System => Some(dbus::Bus::System),
        DbusBus::Session => Some(dbus::Bus::Session),
        DbusBus::Off => None,
    };
    start_inner(handle, config, bus, Some(listeners)).await
}

async fn start_inner(
    handle: CoreHandle,
    config: &ControlConfig,
    bus: Option<dbus::Bus>,
    inherited: Option<Listeners>,
) -> Result<Control, ControlError> {
    let token = match (&config.http_listen, &config.token_file) {
        (Some(_), Some(path)) => Some(token::Token::read(path)?),
        (Some(_), None) => return Err(ControlError::TokenMissing),
        (None, _) => None,
    };
    let (inherited_tcp, (listener, socket)) = match inherited {
        Some(l) => (l.tcp, socket::adopt(&config.socket, l.unix, l.socket_id)?),
        None => (None, socket::bind(&config.socket).await?),
    };
    let dup = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().ok();
    let kept_unix = dup(listener.as_fd());
    let (stop, stopped) = watch::channel(false);
    let router = http::router(handle.clone());
    let max = config.max_connections;
    let health = health::router(handle.clone());
    let mut servers = vec![serve::serve(
        listener,
        health.clone().merge(router.clone()),
        max,
        stopped.clone(),
    )];
    let mut tcp_addr = None;
    let mut kept_tcp = None;
    if let (Some(addr), Some(token)) = (config.http_listen, token) {
        let tcp = match inherited_tcp {
            Some(fd) => {
                let std_tcp = std::net::TcpListener::from(fd);
                std_tcp
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(std_tcp))
            }
            None => tokio::net::TcpListener::bind(addr).await,
        }
        .map_err(|source| ControlError::Tcp { addr, source })?;
        tcp_addr = tcp.local_addr().ok();
        kept_tcp = dup(tcp.as_fd());
        // The health routes need no token: a kubelet's probe has none.
        let guarded = health.merge(token::require_token(router, token));
        servers.push(serve::serve(tcp, guarded, max, stopped));
    }
    let mut control = Control {
        stop,
        servers,
        kept: kept_unix.map(|u| (u, kept_tcp)),
        socket,
        dbus: None,
        tcp_addr,
    };
    if let Some(bus) = bus {
        match dbus::serve(handle, &bus).await {
            Ok(service) => control.dbus = Some(service),
            Err(source) => {
                control.shutdown().await;
                let bus = match bus {
                    dbus::Bus::System => "system".to_owned(),
                    dbus::Bus::Session => "session".to_owned(),
                    dbus::Bus::Address(a) => a,
                };
                return Err(ControlError::Dbus { bus, source });
            }
        }
    }
    tracing::info!(socket = %control.socket.path().display(), tcp = ?control.tcp_addr, "control API listening");
    Ok(control)
}

impl Control {
    /// The unix socket being served.
    pub fn socket_path(&self) -> &Path {
        self.socket.path()
    }

    /// The TCP address actually bound (resolves port 0), if a TCP listener runs.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// The D-Bus service, if one runs.
    pub fn dbus(&self) -> Option<&dbus::DbusService> {
        self.dbus.as_ref()
    }

    /// Stops serving like [`Control::shutdown`] but keeps the listeners open and
    /// the socket file in place, for the binary that replaces this one. New
    /// connections queue in the kernel meanwhile; answers in flight are finished.
    pub async fn hand_over(mut self) -> Option<Listeners> {
        let kept = self.kept.take();
        let socket_id = self.socket.id();
        self.stop_servers().await;
        let Control { socket, .. } = self;
        socket.keep();
        kept.map(|(unix, tcp)| Listeners {
            unix,
            socket_id,
            tcp,
        })
    }

    /// Stops serving (in-flight requests get [`SHUTDOWN_GRACE`]), gives up the bus
    /// name and removes the socket file this supervisor created.
    pub async fn shutdown(mut self) {
        self.stop_servers().await;
    }

    async fn stop_servers(&mut self) {
        let stop = &self.stop;
        let servers = std::mem::take(&mut self.servers);
        let dbus = self.dbus.take();
        let _ = stop.send(true);
        if let Some(service) = dbus {
            service.shutdown().await;
        }
        for mut server in servers {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
}
