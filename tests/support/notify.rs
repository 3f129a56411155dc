//! A fake `$NOTIFY_SOCKET`: a unix datagram socket that keeps every datagram the
//! daemon sends with its arrival time.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::wait::wait_for_with;

/// One datagram the daemon sent.
#[derive(Debug, Clone)]
pub struct Notification {
    /// The payload, as sent.
    pub text: String,
    /// Wall clock at arrival (comparable with the record's `t`).
    pub at: SystemTime,
    /// Monotonic arrival time.
    pub instant: Instant,
}

impl Notification {
    /// The payload's `KEY=VALUE` lines (the trailing newline sd-notify adds dropped).
    pub fn lines(&self) -> Vec<&str> {
        self.text.lines().collect()
    }

    /// The value of `key` if this datagram is exactly one `key=value` line.
    pub fn single(&self, key: &str) -> Option<&str> {
        match self.lines().as_slice() {
            [line] => line.strip_prefix(key)?.strip_prefix('='),
            _ => None,
        }
    }

    /// `STATUS=` text, when this datagram is a status update.
    pub fn status(&self) -> Option<&str> {
        self.single("STATUS")
    }

    /// Whether this datagram is exactly `READY=1`.
    pub fn is_ready(&self) -> bool {
        self.single("READY") == Some("1")
    }
}

/// A unix datagram socket standing in for systemd's notify socket.
pub struct NotifySocket {
    path: PathBuf,
    messages: Arc<Mutex<Vec<Notification>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl NotifySocket {
    /// Binds `<dir>/notify.sock` and starts collecting datagrams.
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind the fake NOTIFY_SOCKET");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set a read timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(Ordering::Relaxed) {
                match sock.recv(&mut buf) {
                    Ok(n) => m.lock().unwrap().push(Notification {
                        text: String::from_utf8_lossy(&buf[..n]).into_owned(),
                        at: SystemTime::now(),
                        instant: Instant::now(),
                    }),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => panic!("recv on the fake NOTIFY_SOCKET: {e}"),
                }
            }
        });
        NotifySocket {
            path,
            messages,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket's path (the daemon's `NOTIFY_SOCKET`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every datagram so far, in arrival order.
    pub fn all(&self) -> Vec<Notification> {
        self.messages.lock().unwrap().clone()
    }

    /// Every datagram's text so far.
    pub fn messages(&self) -> Vec<String> {
        self.all().into_iter().map(|n| n.text).collect()
    }

    /// Every `STATUS=` text so far, in order.
    pub fn statuses(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|n| {
                n.lines()
                    .into_iter()
                    .filter_map(|l| l.strip_prefix("STATUS="))
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The last `STATUS=` text ("" before the first).
    pub fn status(&self) -> String {
        self.statuses().pop().unwrap_or_default()
    }

    /// How many datagrams carried `READY=1`.
    pub fn ready_count(&self) -> usize {
        self.all()
            .iter()
            .filter(|n| n.lines().contains(&"READY=1"))
            .count()
    }

    /// Waits for the first datagram at index ≥ `from` matching `pred`; returns its
    /// index and the datagram.
    pub fn wait_from(
        &self,
        from: usize,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notification) -> bool,
    ) -> (usize, Notification) {
        let seen = || {
            let texts: Vec<String> = self.all().iter().map(|n| n.text.clone()).collect();
            format!("{what}; datagrams so far: {texts:?}")
        };
        wait_for_with(seen, timeout, || {
            self.all()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, n)| pred(n))
        })
    }

    /// Waits for the first datagram matching `pred`.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Notification) -> bool,
    ) -> Notification {
        self.wait_from(0, what, timeout, pred).1
    }

    /// Waits for a `STATUS=` line starting with `prefix`; returns the full line.
    pub fn wait_status(&self, prefix: &str, timeout: Duration) -> String {
        self.wait_status_from(0, prefix, timeout).1
    }

    /// Like [`NotifySocket::wait_status`], from datagram index `from` on.
    pub fn wait_status_from(
        &self,
        from: usize,
        prefix: &str,
        timeout: Duration,
    ) -> (usize, String) {
        let what = format!("STATUS={prefix}…");
        let (i, n) = self.wait_from(from, &what, timeout, |n| {
            n.status().is_some_and(|s| s.starts_with(prefix))
        });
        (i, n.status().unwrap_or_default().to_string())
    }

    /// Number of datagrams so far.
    pub fn len(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
