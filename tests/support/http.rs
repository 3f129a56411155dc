//! A tiny HTTP/1.1 client for talking to the stand-in UI the way a user's client
//! would (jobs, options), with a timeout on every step.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// A minimal HTTP/1.1 request (`Connection: close`); returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    http_on(s, port, method, path, body, timeout)
}

/// Like [`http`], on a connection already made (to tell "nothing listens" from
/// "the request failed").
pub fn http_on(
    mut s: TcpStream,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..text_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    Ok((status, raw[text_end + 4..].to_vec()))
}

/// `GET` a JSON document.
pub fn get_json(port: u16, path: &str) -> Value {
    let (status, body) =
        http(port, "GET", path, None, Duration::from_secs(10)).expect("GET from the stand-in");
    assert_eq!(status, 200, "GET {path}");
    serde_json::from_slice(&body).expect("a JSON answer")
}

/// Starts a Forge/A1111 `txt2img` of `seconds` in a thread (the request blocks until
/// the job is done); the thread returns the HTTP status or the I/O error.
pub fn txt2img(port: u16, seconds: f64) -> JoinHandle<Result<u16, String>> {
    std::thread::spawn(move || {
        let body = serde_json::json!({"prompt": "x", "stand_in_seconds": seconds});
        http(
            port,
            "POST",
            "/sdapi/v1/txt2img",
            Some(&body),
            Duration::from_secs(120),
        )
        .map(|(status, _)| status)
        .map_err(|e| e.to_string())
    })
}

/// Queues a ComfyUI prompt of `seconds`; returns its prompt id.
pub fn comfy_prompt(port: u16, seconds: f64) -> String {
    let body = serde_json::json!({
        "prompt": {"1": {"class_type": "SaveImage", "inputs": {}}},
        "client_id": "t",
        "stand_in_seconds": seconds,
    });
    let (status, answer) = http(
        port,
        "POST",
        "/prompt",
        Some(&body),
        Duration::from_secs(10),
    )
    .expect("POST /prompt");
    assert_eq!(status, 200, "POST /prompt");
    let v: Value = serde_json::from_slice(&answer).expect("a JSON answer");
    v["prompt_id"].as_str().expect("a prompt_id").to_string()
}

/// One answer of [`request`].
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The header lines, lowercased names (`name: value`).
    pub headers: Vec<(String, String)>,
    /// The body as sent (chunked bodies decoded).
    pub body: Vec<u8>,
}

impl Answer {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP/1.1 request with extra header lines (`Connection: close`), the way a
/// browser or an API client with credentials would send it.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_answer(&raw)
}

/// Splits a whole HTTP/1.1 answer into status, headers and (de-chunked) body.
pub fn parse_answer(raw: &[u8]) -> std::io::Result<Answer> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header in the answer"))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(want) = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        && body.len() < want
    {
        // The server (or a proxy) closed before the whole body: a cut answer,
        // not a short one.
        return Err(std::io::Error::other(format!(
            "answer {status} cut off: {} of {want} body bytes",
            body.len()
        )));
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("bad chunked body");
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&b[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(b.get(..size).ok_or_else(bad)?);
        b = b.get(size + 2..).ok_or_else(bad)?;
    }
}

/// Reads one HTTP answer head from a raw stream (the websocket handshakes), at
/// most 16 KiB.
pub fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if s.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// One websocket frame from the server (unmasked, as servers send them):
/// (opcode, payload).
pub fn ws_frame(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let mut len = u64::from(h[1] & 0x7f);
    if len == 126 {
        let mut l = [0u8; 2];
        s.read_exact(&mut l)?;
        len = u64::from(u16::from_be_bytes(l));
    } else if len == 127 {
        let mut l = [0u8; 8];
        s.read_exact(&mut l)?;
        len = u64::from_be_bytes(l);
    }
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}
