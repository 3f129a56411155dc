//! A small HTTP/1.1 file server for the download tests, on a loopback address
//! of the test's choosing: Range requests, an optional token check, a redirect
//! to another server, a connection dropped halfway, and a slow mode. It records
//! every request's headers and counts the body bytes it sends.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request target (path and query).
    pub path: String,
    /// Header names lower-cased, with values.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first byte asked for with `Range: bytes=N-`.
    pub fn range_start(&self) -> Option<u64> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .trim_end_matches('-')
            .parse()
            .ok()
    }
}

/// How the server behaves; shared and changeable while it runs.
#[derive(Debug, Default)]
pub struct Behaviour {
    /// `(header, value)` every `/file` request must carry, else 401.
    pub require: Mutex<Option<(String, String)>>,
    /// `/redirect` answers 302 to this URL.
    pub redirect_to: Mutex<Option<String>>,
    /// Close the connection after this many body bytes, once.
    pub drop_after: Mutex<Option<u64>>,
    /// Sleep this long after each 64 KiB written.
    pub slow: Mutex<Option<Duration>>,
    /// Ignore `Range` and always send the whole file with 200.
    pub no_ranges: AtomicBool,
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it serves at `/file`.
    pub body: Arc<Vec<u8>>,
    /// Every request so far.
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Body bytes written so far.
    pub sent: Arc<AtomicU64>,
    /// Its behaviour, changeable.
    pub behaviour: Arc<Behaviour>,
}

const PIECE: usize = 64 * 1024;

impl Server {
    /// Starts serving `body` at `ip` (e.g. "127.0.0.1", "127.0.0.2") on a free port.
    pub fn start(ip: &str, body: Vec<u8>) -> Server {
        let listener = TcpListener::bind((ip, 0)).expect("bind test server");
        let server = Server {
            addr: listener.local_addr().unwrap(),
            body: Arc::new(body),
            requests: Arc::default(),
            sent: Arc::default(),
            behaviour: Arc::default(),
        };
        let (body, requests, sent, behaviour) = (
            server.body.clone(),
            server.requests.clone(),
            server.sent.clone(),
            server.behaviour.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (body, requests, sent, behaviour) = (
                    body.clone(),
                    requests.clone(),
                    sent.clone(),
                    behaviour.clone(),
                );
                std::thread::spawn(move || {
                    let _ = serve(stream, &body, &requests, &sent, &behaviour);
                });
            }
        });
        server
    }

    /// `http://ip:port/path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Requests so far.
    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(
    stream: TcpStream,
    body: &[u8],
    requests: &Mutex<Vec<Request>>,
    sent: &AtomicU64,
    behaviour: &Behaviour,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((n, v)) = h.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let req = Request { path, headers };
        requests.lock().unwrap().push(req.clone());
        if req.path.starts_with("/redirect") {
            let to = behaviour
                .redirect_to
                .lock()
                .unwrap()
                .clone()
                .unwrap_or_default();
            write!(
                out,
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        }
        if !req.path.starts_with("/file") {
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let required = behaviour.require.lock().unwrap().clone();
        if let Some((name, value)) = required
            && req.header(&name.to_ascii_lowercase()) != Some(value.as_str())
        {
            write!(
                out,
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        }
        let total = body.len() as u64;
        let start = match req.range_start() {
            Some(s) if !behaviour.no_ranges.load(Ordering::SeqCst) => s,
            _ => 0,
        };
        if start >= total && start > 0 {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{total}\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        }
        if start > 0 {
            write!(
                out,
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {start}-{}/{total}\r\nContent-Length: {}\r\n\r\n",
                total - 1,
                total - start
            )?;
        } else {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n")?;
        }
        let drop_after = behaviour.drop_after.lock().unwrap().take();
        let mut written = 0u64;
        for piece in body[start as usize..].chunks(PIECE) {
            let piece = match drop_after {
                Some(limit) if written + piece.len() as u64 >= limit => {
                    let n = (limit - written) as usize;
                    out.write_all(&piece[..n])?;
                    sent.fetch_add(n as u64, Ordering::SeqCst);
                    out.flush()?;
                    // Hang up halfway.
                    return out.shutdown(std::net::Shutdown::Both);
                }
                _ => piece,
            };
            out.write_all(piece)?;
            written += piece.len() as u64;
            sent.fetch_add(piece.len() as u64, Ordering::SeqCst);
            let slow = *behaviour.slow.lock().unwrap();
            if let Some(pause) = slow {
                std::thread::sleep(pause);
            }
        }
        out.flush()?;
    }
}
