//! The inhibitor's side of the system bus: whether logind is there, and its
//! `Inhibit` call. Everything zbus-specific of the inhibitor stays in this file.
//!
//! The bus is found like every D-Bus client finds it: `DBUS_SYSTEM_BUS_ADDRESS`
//! (tests point it at a private bus), else `/var/run/dbus/system_bus_socket`.
//! The connection runs on [`CloexecSocket`], so logind's lock descriptor is
//! never inheritable, not even for a moment.

use std::os::fd::OwnedFd;
use std::time::Duration;

use zbus::address::transport::{Transport, UnixSocket};
use zbus::{Address, Connection, fdo};

use super::socket::CloexecSocket;

/// Who takes the lock, as `systemd-inhibit --list` shows it.
pub const WHO: &str = "sd-webui-supervisor";
/// What the lock holds off.
pub const WHAT: &str = "sleep";
/// `block`: logind refuses to suspend while the lock is held (`delay` would only
/// postpone it by a few seconds, too little for a generation).
pub const MODE: &str = "block";

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";
const DBUS: &str = "org.freedesktop.DBus";
const DBUS_PATH: &str = "/org/freedesktop/DBus";
/// The address when `DBUS_SYSTEM_BUS_ADDRESS` is not set (the D-Bus spec's).
const DEFAULT_ADDRESS: &str = "unix:path=/var/run/dbus/system_bus_socket";
/// Longest wait for the bus to answer (dbus-daemon itself gives up after 25 s);
/// the inhibitor's task waits, the core never does.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why logind could not be asked, or said no.
#[derive(Debug, thiserror::Error)]
pub enum LogindError {
    /// No system bus here (a container, a host without D-Bus): nothing listens
    /// at the address, or it is not one a descriptor can travel over.
    #[error("no system bus at {address}: {reason}")]
    NoBus {
        /// The address tried.
        address: String,
        /// Why it did not work.
        reason: String,
    },
    /// The bus has no logind and cannot start one (a host without systemd).
    #[error("no logind on the system bus")]
    NoLogind,
    /// The bus or logind answered with an error (denied by polkit, the bus
    /// went away, …).
    #[error("{0}")]
    Bus(#[from] zbus::Error),
    /// No answer in time.
    #[error("no answer from the system bus within {0:?}")]
    Timeout(Duration),
}

impl LogindError {
    /// Whether this machine simply has no logind to ask: worth one line at
    /// `info`, then doing without, rather than a warning.
    pub fn unavailable(&self) -> bool {
        match self {
            LogindError::NoBus { .. } | LogindError::NoLogind => true,
            LogindError::Bus(zbus::Error::FDO(e)) => matches!(
                **e,
                fdo::Error::ServiceUnknown(_) | fdo::Error::NameHasNoOwner(_)
            ),
            _ => false,
        }
    }

    /// Whether logind (polkit, for it) refused the caller: a service not
    /// running as root needs `org.freedesktop.login1.inhibit-block-sleep`.
    pub fn denied(&self) -> bool {
        matches!(
            self,
            LogindError::Bus(zbus::Error::FDO(e)) if matches!(
                **e,
                fdo::Error::AccessDenied(_) | fdo::Error::InteractiveAuthorizationRequired(_)
            )
        )
    }

    /// Whether the connection is gone, so the next attempt needs a new one.
    pub fn connection_lost(&self) -> bool {
        matches!(
            self,
            LogindError::Bus(zbus::Error::InputOutput(_)) | LogindError::Timeout(_)
        )
    }
}

/// A connection to the system bus, for logind.
#[derive(Debug)]
pub struct Logind {
    conn: Connection,
}

impl Logind {
    /// Connects to the system bus: the first address of
    /// `DBUS_SYSTEM_BUS_ADDRESS` (`;`-separated) that accepts, else the default.
    pub async fn connect() -> Result<Logind, LogindError> {
        let text = std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .ok()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned());
        let mut last = None;
        for one in text.split(';').filter(|a| !a.is_empty()) {
            match Self::connect_to(one).await {
                Ok(logind) => return Ok(logind),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| LogindError::NoBus {
            address: text,
            reason: "no address".into(),
        }))
    }

    async fn connect_to(text: &str) -> Result<Logind, LogindError> {
        let no_bus = |reason: String| LogindError::NoBus {
            address: text.to_owned(),
            reason,
        };
        let address: Address = text
            .parse()
            .map_err(|e: zbus::Error| no_bus(e.to_string()))?;
        let stream = match address.transport() {
            Transport::Unix(unix) => match unix.path() {
                UnixSocket::File(path) => tokio::net::UnixStream::connect(path).await,
                UnixSocket::Abstract(name) => connect_abstract(name),
                _ => return Err(no_bus("a listening address, not one to connect to".into())),
            },
            _ => {
                return Err(no_bus(
                    "not a unix socket, which a lock's descriptor needs".into(),
                ));
            }
        }
        .map_err(|e| no_bus(e.to_string()))?;
        let socket = CloexecSocket::new(stream);
        let conn = within(zbus::connection::Builder::socket(socket).build()).await?;
        Ok(Logind { conn })
    }

    /// Whether logind runs on this bus or the bus can start it. Asked once, so
    /// that a machine without logind is told apart from a failing call.
    pub async fn present(&self) -> Result<bool, LogindError> {
        let owned: bool = within(self.conn.call_method(
            Some(DBUS),
            DBUS_PATH,
            Some(DBUS),
            "NameHasOwner",
            &(LOGIND,),
        ))
        .await?
        .body()
        .deserialize()?;
        if owned {
            return Ok(true);
        }
        let names: Vec<String> = within(self.conn.call_method(
            Some(DBUS),
            DBUS_PATH,
            Some(DBUS),
            "ListActivatableNames",
            &(),
        ))
        .await?
        .body()
        .deserialize()?;
        Ok(names.iter().any(|n| n == LOGIND))
    }

    /// Takes a sleep lock (`WHAT`, `WHO`, `why`, `MODE`); it lasts until the
    /// returned descriptor, close-on-exec, is closed.
    pub async fn inhibit(&self, why: &str) -> Result<OwnedFd, LogindError> {
        let reply = within(self.conn.call_method(
            Some(LOGIND),
            LOGIND_PATH,
            Some(MANAGER),
            "Inhibit",
            &(WHAT, WHO, why, MODE),
        ))
        .await?;
        // A duplicate made with F_DUPFD_CLOEXEC; the message's own copy goes
        // with the message.
        let fd: zbus::OwnedFd = reply.body().deserialize()?;
        Ok(fd.into())
    }
}

/// `future` with the bus's [`TIMEOUT`].
async fn within<T>(future: impl Future<Output = Result<T, zbus::Error>>) -> Result<T, LogindError> {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(LogindError::Timeout(TIMEOUT)),
    }
}

/// Connects to an abstract socket (`unix:abstract=NAME`, Linux only).
fn connect_abstract(name: &std::ffi::OsStr) -> std::io::Result<tokio::net::UnixStream> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream = std::os::unix::net::UnixStream::connect_addr(&address)?;
    stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fdo(e: fdo::Error) -> LogindError {
        LogindError::Bus(zbus::Error::FDO(Box::new(e)))
    }

    #[test]
    fn no_bus_and_no_logind_are_unavailable_a_denial_is_not() {
        let no_bus = LogindError::NoBus {
            address: DEFAULT_ADDRESS.into(),
            reason: "No such file or directory".into(),
        };
        assert!(no_bus.unavailable());
        assert!(LogindError::NoLogind.unavailable());
        assert!(fdo(fdo::Error::ServiceUnknown("login1".into())).unavailable());
        assert!(!fdo(fdo::Error::AccessDenied("polkit".into())).unavailable());
        assert!(
            !fdo(fdo::Error::InteractiveAuthorizationRequired(
                "polkit".into()
            ))
            .unavailable()
        );
        assert!(!LogindError::Timeout(TIMEOUT).unavailable());
        assert!(fdo(fdo::Error::AccessDenied("polkit".into())).denied());
        assert!(!LogindError::NoLogind.denied());
    }

    #[test]
    fn a_lost_connection_is_told_apart_from_a_refusal() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "gone");
        assert!(LogindError::Bus(zbus::Error::InputOutput(io.into())).connection_lost());
        assert!(LogindError::Timeout(TIMEOUT).connection_lost());
        assert!(!fdo(fdo::Error::AccessDenied("polkit".into())).connection_lost());
    }

    #[tokio::test]
    async fn nothing_at_the_address_is_no_bus() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let address = format!("unix:path={}", dir.path().join("none").display());
        let err = Logind::connect_to(&address)
            .await
            .expect_err("no bus there");
        assert!(err.unavailable(), "{err}");
        assert!(
            err.to_string().starts_with("no system bus at unix:path="),
            "{err}"
        );
        let err = Logind::connect_to("tcp:host=127.0.0.1,port=1")
            .await
            .expect_err("not unix");
        assert!(matches!(err, LogindError::NoBus { .. }), "{err}");
    }
}
