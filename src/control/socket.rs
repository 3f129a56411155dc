//! Binding the control socket without stealing it.
//!
//! If `control.socket` exists, it is either another supervisor's live socket (then
//! starting must fail: two supervisors on one UI would fight over it), a stale
//! socket left by a crash (replace it), or something else (refuse; never delete a
//! file the supervisor did not make). The new socket is bound under a temporary
//! name, given mode 0660, and renamed into place, so nobody can connect while it
//! still has the umask's mode and there is no moment without a socket at the path.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::{UnixListener, UnixStream};

use super::ControlError;

/// The socket's mode: owner and service group may connect, nobody else.
pub const SOCKET_MODE: u32 = 0o660;

/// The socket file this supervisor created; removed again on drop if it is still
/// the same file (a successor may have replaced it).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// Where the socket lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Device and inode of the socket file, to hand over with its listener.
    pub fn id(&self) -> (u64, u64) {
        (self.dev, self.ino)
    }

    /// Leaves the file in place: a successor binary serves it now.
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

/// Serves a listener handed over by the binary this one replaced, on the socket
/// file it bound (removed at exit only while it is still that file).
pub fn adopt(
    path: &Path,
    fd: std::os::fd::OwnedFd,
    (dev, ino): (u64, u64),
) -> Result<(UnixListener, SocketFile), ControlError> {
    let err = |source: io::Error| ControlError::Socket {
        path: path.to_owned(),
        context: "taking over the listener of the previous binary",
        source,
    };
    let std_listener = std::os::unix::net::UnixListener::from(fd);
    std_listener.set_nonblocking(true).map_err(err)?;
    let listener = UnixListener::from_std(std_listener).map_err(err)?;
    let file = SocketFile {
        path: path.to_owned(),
        dev,
        ino,
    };
    Ok((listener, file))
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if ours && let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(socket = %self.path.display(), error = %e, "could not remove the control socket");
        }
    }
}

/// Binds `path` as described in the module doc.
pub async fn bind(path: &Path) -> Result<(UnixListener, SocketFile), ControlError> {
    let err = |context: &'static str| {
        move |source: io::Error| ControlError::Socket {
            path: path.to_owned(),
            context,
            source,
        }
    };
    refuse_if_taken(path).await?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err("creating its directory"))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    match std::fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("removing a leftover temporary socket")(e)),
    }
    let listener = UnixListener::bind(&temp).map_err(err("binding"))?;
    let placed = std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(err("setting its mode to 0660"))
        .and_then(|()| std::fs::rename(&temp, path).map_err(err("moving it into place")));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    let meta = std::fs::symlink_metadata(path).map_err(err("reading it back"))?;
    let file = SocketFile {
        path: path.to_owned(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    Ok((listener, file))
}

/// Fails when `path` is a live socket or not a socket at all.
async fn refuse_if_taken(path: &Path) -> Result<(), ControlError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Socket {
                path: path.to_owned(),
                context: "checking for an existing socket",
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_owned(),
        });
    }
    match UnixStream::connect(path).await {
        Ok(_) => Err(ControlError::SocketInUse {
            path: path.to_owned(),
        }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "replacing a stale control socket");
            Ok(())
        }
        Err(source) => Err(ControlError::Socket {
            path: path.to_owned(),
            context: "checking whether another supervisor answers on it",
            source,
        }),
    }
}
