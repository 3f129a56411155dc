//! The unix socket the inhibitor's D-Bus connection runs on: like zbus's own,
//! except that descriptors arrive close-on-exec.
//!
//! logind answers `Inhibit` with a file descriptor, and the lock lasts as long as
//! any process holds a copy of it. zbus receives descriptors with a plain
//! `recvmsg`, so until someone sets `FD_CLOEXEC` the lock is inheritable, and a
//! UI, a download helper or `nvidia-smi` started in that moment would keep the
//! machine from sleeping for as long as it runs. `MSG_CMSG_CLOEXEC` has the
//! kernel set the flag as it installs the descriptor, so there is no such moment.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, Shutdown, recvmsg, sendmsg, shutdown,
};
use tokio::io::Interest;
use tokio::net::UnixStream;
use zbus::connection::socket::{ReadHalf, Socket, Split, WriteHalf};

/// Most descriptors one read takes (logind sends one; the kernel closes any
/// beyond the room given).
const MAX_FDS: usize = 8;

/// A connected unix stream for [`zbus::connection::Builder::socket`]. Must be
/// made inside the tokio runtime that drives the connection.
#[derive(Debug)]
pub struct CloexecSocket(Arc<UnixStream>);

impl CloexecSocket {
    /// Wraps a connected stream.
    pub fn new(stream: UnixStream) -> CloexecSocket {
        CloexecSocket(Arc::new(stream))
    }
}

impl Socket for CloexecSocket {
    type ReadHalf = Reader;
    type WriteHalf = Writer;

    fn split(self) -> Split<Reader, Writer> {
        Split::new(Reader(self.0.clone()), Writer(self.0))
    }
}

/// The read half: `recvmsg` with `MSG_CMSG_CLOEXEC`.
#[derive(Debug)]
pub struct Reader(Arc<UnixStream>);

/// The write half: `sendmsg`, descriptors as `SCM_RIGHTS`.
#[derive(Debug)]
pub struct Writer(Arc<UnixStream>);

#[async_trait::async_trait]
impl ReadHalf for Reader {
    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let fd = self.0.as_raw_fd();
        self.0
            .async_io(Interest::READABLE, || receive(fd, buf))
            .await
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }
}

#[async_trait::async_trait]
impl WriteHalf for Writer {
    async fn sendmsg(&mut self, buffer: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
        let fd = self.0.as_raw_fd();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        self.0
            .async_io(Interest::WRITABLE, || {
                let rights = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
                sendmsg::<()>(
                    fd,
                    &[IoSlice::new(buffer)],
                    cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await
    }

    async fn close(&mut self) -> io::Result<()> {
        match shutdown(self.0.as_raw_fd(), Shutdown::Both) {
            Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn can_pass_unix_fd(&self) -> bool {
        true
    }
}

/// One `recvmsg` into `buf`; the descriptors that came with it, owned. End of
/// stream is an error, as zbus's own socket reports it.
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel has just installed these descriptors in this
            // process for this call; nothing else knows or owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    if msg.bytes == 0 {
        return Err(io::Error::new(
            io::ErrorKind::BrokenPipe,
            "the bus closed the connection",
        ));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `fd` has `FD_CLOEXEC`.
    fn cloexec(fd: &OwnedFd) -> bool {
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        nix::fcntl::FdFlag::from_bits_truncate(flags).contains(nix::fcntl::FdFlag::FD_CLOEXEC)
    }

    #[tokio::test]
    async fn a_received_descriptor_is_close_on_exec() {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        let (mut reader, _writer) = CloexecSocket::new(ours).split().take();
        // An inheritable descriptor, as a peer may well send one.
        let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("a pipe");
        let sent = nix::fcntl::fcntl(&pipe_r, nix::fcntl::FcntlArg::F_GETFD).expect("F_GETFD");
        assert_eq!(
            sent & libc::FD_CLOEXEC,
            0,
            "the test sends an inheritable fd"
        );
        let raw = [pipe_r.as_raw_fd()];
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[IoSlice::new(b"x")],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("send a descriptor");
        let mut buf = [0u8; 4];
        let (n, fds) = reader.recvmsg(&mut buf).await.expect("receive");
        assert_eq!((n, &buf[..1]), (1, &b"x"[..]));
        assert_eq!(fds.len(), 1);
        assert!(cloexec(&fds[0]), "received without FD_CLOEXEC");
    }

    #[tokio::test]
    async fn a_closed_peer_is_an_error_not_an_empty_read() {
        let (ours, theirs) = UnixStream::pair().expect("a socket pair");
        let (mut reader, _writer) = CloexecSocket::new(ours).split().take();
        drop(theirs);
        let mut buf = [0u8; 4];
        let err = reader.recvmsg(&mut buf).await.expect_err("end of stream");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
