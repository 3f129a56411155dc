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
