//! Plain HTTP/1.1 to the UI on `127.0.0.1`: one request per connection, no TLS,
//! no proxy, no pool, no redirects.
//!
//! The supervisor asks the UI something every `poll_interval` for as long as it
//! runs, so this path is what an idle supervisor keeps in memory. A general client
//! (reqwest with rustls, kept for the downloads) builds a TLS configuration and a
//! root store when it is created and walks its pool, redirect and TLS layers on
//! every request; talking to loopback needs none of that. A fresh connection per
//! request also means a UI that restarted is never asked on a dead pooled socket.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::ui::api::ApiAuth;

/// How long connecting may take: the UI is on this machine, so a slow connect
/// means it is not listening yet or is stuck.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The largest answer read by default: probes, options and Forge's
/// `/openapi.json` (~1 MB) fit many times over, and a UI that streams without end
/// cannot fill the supervisor's memory. Renders raise it ([`Loopback::max_answer`]).
pub const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Why a request to the UI got no answer.
#[derive(Debug, thiserror::Error)]
pub enum LoopbackError {
    /// Nothing accepted the connection in time (UI not listening, or stuck).
    #[error("cannot connect to 127.0.0.1:{port}: {reason}")]
    Connect {
        /// The UI's port.
        port: u16,
        /// The socket error, or the timeout.
        reason: String,
    },
    /// The connection broke or the answer was not HTTP.
    #[error("connection to the UI failed: {0}")]
    Http(String),
    /// The answer's body was larger than the client reads.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// No complete answer within the request's limit.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
}

/// The UI's answer: status code and whole body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status code.
    pub status: u16,
    /// The body, at most the client's `max_answer` bytes.
    pub body: Bytes,
}

impl Answer {
    /// 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A client for the UI on `127.0.0.1:port`, with its API credentials.
#[derive(Debug, Clone)]
pub struct Loopback {
    port: u16,
    auth: Option<ApiAuth>,
    max_answer: usize,
}

impl Loopback {
    /// A client for the UI on `127.0.0.1:port`; `auth` is sent on `/sdapi/*`.
    pub fn new(port: u16, auth: Option<ApiAuth>) -> Loopback {
        Loopback {
            port,
            auth,
            max_answer: MAX_ANSWER,
        }
    }

    /// Reads answers up to `bytes` (renders: base64 PNGs in JSON).
    pub fn max_answer(mut self, bytes: usize) -> Loopback {
        self.max_answer = bytes;
        self
    }

    /// `GET path` (path and query, already encoded).
    pub async fn get(&self, path: &str, limit: Duration) -> Result<Answer, LoopbackError> {
        self.request(Method::GET, path, None, limit).await
    }

    /// `POST path` with an optional JSON body.
    pub async fn post(
        &self,
        path: &str,
        json: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Answer, LoopbackError> {
        self.request(Method::POST, path, json, limit).await
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Answer, LoopbackError> {
        let request = self.build(method, path, json)?;
        tokio::time::timeout(limit, self.exchange(request))
            .await
            .unwrap_or(Err(LoopbackError::Timeout(limit)))
    }

    fn build(
        &self,
        method: Method,
        path: &str,
        json: Option<Vec<u8>>,
    ) -> Result<Request<Full<Bytes>>, LoopbackError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, format!("127.0.0.1:{}", self.port));
        if let (Some(auth), true) = (&self.auth, path.starts_with("/sdapi/")) {
            let pair = format!("{}:{}", auth.user, auth.password);
            let token = base64::engine::general_purpose::STANDARD.encode(pair);
            let mut value = HeaderValue::try_from(format!("Basic {token}"))
                .map_err(|_| LoopbackError::Http("credentials are not a valid header".into()))?;
            value.set_sensitive(true);
            builder = builder.header(AUTHORIZATION, value);
        }
        if json.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        builder
            .body(Full::new(Bytes::from(json.unwrap_or_default())))
            .map_err(|e| LoopbackError::Http(format!("{path}: {e}")))
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Answer, LoopbackError> {
        let connect_failed = |reason: String| LoopbackError::Connect {
            port: self.port,
            reason,
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect(("127.0.0.1", self.port)),
        )
        .await
        .map_err(|_| {
            connect_failed(format!(
                "no answer within {}",
                humantime::format_duration(CONNECT_TIMEOUT)
            ))
        })?
        .map_err(|e| connect_failed(e.to_string()))?;
        let http = |e: hyper::Error| LoopbackError::Http(e.to_string());
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let answer = async move {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status().as_u16();
            let limit = self.max_answer;
            let body = Limited::new(response.into_body(), limit)
                .collect()
                .await
                .map_err(
                    |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                        Some(_) => LoopbackError::TooLarge(limit),
                        None => LoopbackError::Http(format!("reading the answer: {e}")),
                    },
                )?
                .to_bytes();
            Ok(Answer { status, body })
        };
        // The connection is driven here, not in a spawned task: nothing outlives
        // the request. It may end before the answer is read out (the UI closed
        // after writing it); the answer future then still finishes from what was
        // buffered, or fails.
        let mut conn = std::pin::pin!(conn);
        let mut answer = std::pin::pin!(answer);
        let mut conn_open = true;
        loop {
            tokio::select! {
                done = &mut answer => return done,
                _ = &mut conn, if conn_open => conn_open = false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-shot server on loopback that answers every connection with `answer`
    /// (or says nothing when `None`); returns its port and the requests it read.
    async fn server(
        answer: Option<Vec<u8>>,
    ) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                match &answer {
                    Some(a) => {
                        let _ = stream.write_all(a).await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn reads_the_answer_and_sends_credentials_only_to_sdapi() {
        let body = br#"{"ok":true}"#;
        let mut answer =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        answer.extend_from_slice(body);
        let (port, mut seen) = server(Some(answer)).await;
        let auth = ApiAuth::parse("sup:pw").unwrap();
        let client = Loopback::new(port, Some(auth));
        let got = client
            .get("/sdapi/v1/progress", Duration::from_secs(5))
            .await
            .unwrap();
        assert!(got.is_success());
        assert_eq!(&got.body[..], body);
        let request = seen.recv().await.unwrap();
        assert!(
            request.starts_with("GET /sdapi/v1/progress HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains("authorization: Basic c3VwOnB3\r\n"),
            "{request}"
        );
        client
            .get("/internal/ping", Duration::from_secs(5))
            .await
            .unwrap();
        let request = seen.recv().await.unwrap();
        assert!(
            !request.to_ascii_lowercase().contains("authorization"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn an_endless_answer_stops_at_the_limit() {
        let mut answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".to_vec();
        answer.extend(std::iter::repeat_n(b'x', 100_000));
        let (port, _seen) = server(Some(answer)).await;
        let client = Loopback::new(port, None).max_answer(10_000);
        let err = client
            .get("/queue", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, LoopbackError::TooLarge(10_000)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_ui_times_out_and_a_closed_port_is_a_connect_error() {
        let (port, _seen) = server(None).await;
        let client = Loopback::new(port, None);
        let err = client
            .get("/queue", Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, LoopbackError::Timeout(_)), "{err}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = Loopback::new(port, None)
            .get("/queue", Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, LoopbackError::Connect { .. }), "{err}");
    }
}
