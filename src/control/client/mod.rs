//! The CLI's side of the control API: [`Client`] talks HTTP/1.1 to the daemon over
//! its unix socket; [`run`] carries out `status`, `reload`, `restart` and
//! `wait-idle` with it and prints for people.
//!
//! The daemon is found through `--socket PATH`, else `--config FILE`'s
//! `control.socket`, else [`DEFAULT_SOCKET`] (docs/design.md#commands). Exit codes are
//! documented in `docs/control-api.md`: 0 success, 1 failed (rejected reload,
//! unexpected answer, bad config file), 4 no daemon answered, 5 timed out.

mod commands;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

pub use commands::{ClientAction, run};

use super::wire::{self, ErrorBody, GenerateReply, GenerateRequest, RestartReply, RestartRequest};
use crate::config::{Config, DEFAULT_SOCKET};
use crate::supervisor::protocol::{QueueList, QueueOp, ReloadOutcome, RestartWhen, Snapshot};

/// Exit code: the operation failed (rejected reload, unexpected answer, bad config).
pub const EXIT_FAILED: u8 = 1;
/// Exit code: no daemon answered on the socket.
pub const EXIT_NO_DAEMON: u8 = 4;
/// Exit code: `wait-idle` ran out of time.
pub const EXIT_TIMEOUT: u8 = 5;

/// How long a quick request (status, restart) may take before the daemon counts as
/// not answering.
const QUICK: Duration = Duration::from_secs(30);
/// How long a reload may take (it applies settings to the UI before answering).
const RELOAD: Duration = Duration::from_secs(300);
/// Extra time given to `wait-idle` beyond its own timeout, for the answer to arrive.
const WAIT_SLACK: Duration = Duration::from_secs(30);

/// Where to find the daemon; flattened into every client subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Target {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Take the control socket from this config file's `control.socket`.
    #[arg(long, value_name = "FILE", conflicts_with = "socket")]
    pub config: Option<PathBuf>,
}

impl Target {
    /// The socket to use: `--socket`, else `--config`'s `control.socket`, else the default.
    pub fn socket_path(&self) -> Result<PathBuf, ClientError> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        match &self.config {
            Some(file) => Config::load(file)
                .map(|c| c.control.socket)
                .map_err(|e| ClientError::Config(e.to_string())),
            None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        }
    }
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answered on the socket (missing, refused, or silent).
    #[error(
        "no supervisor answered on {} ({reason}); the service may not be running: see `systemctl status sd-webui-forge`",
        socket.display()
    )]
    NoDaemon {
        /// The socket tried.
        socket: PathBuf,
        /// What happened.
        reason: String,
    },
    /// The `--config` file could not be used to find the socket.
    #[error("{0}")]
    Config(String),
    /// The daemon answered something this client does not understand.
    #[error("the supervisor on {} answered {status}: {message}", socket.display())]
    Unexpected {
        /// The socket.
        socket: PathBuf,
        /// The HTTP status.
        status: StatusCode,
        /// The error message or body.
        message: String,
    },
}

impl ClientError {
    /// The exit code this error ends the CLI with.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NoDaemon { .. } => EXIT_NO_DAEMON,
            ClientError::Config(_) | ClientError::Unexpected { .. } => EXIT_FAILED,
        }
    }
}

/// What `wait-idle` found.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitIdle {
    /// The UI is idle; the snapshot that showed it.
    Idle(Box<Snapshot>),
    /// The timeout passed first; the daemon's message.
    TimedOut(String),
}

/// A connection-less client: every call opens the socket anew.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET /v1/status` as raw JSON text (what `status --json` prints).
    pub async fn status_json(&self) -> Result<serde_json::Value, ClientError> {
        let (status, body) = self.call(Method::GET, wire::STATUS, None, QUICK).await?;
        self.expect_ok(status, &body)?;
        self.decode(status, &body)
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<Snapshot, ClientError> {
        let (status, body) = self.call(Method::GET, wire::STATUS, None, QUICK).await?;
        self.expect_ok(status, &body)?;
        self.decode(status, &body)
    }

    /// `POST /v1/reload`; a rejected reload is an `Ok` outcome with `result = "rejected"`.
    pub async fn reload(&self) -> Result<ReloadOutcome, ClientError> {
        let (status, body) = self.call(Method::POST, wire::RELOAD, None, RELOAD).await?;
        if status != StatusCode::UNPROCESSABLE_ENTITY {
            self.expect_ok(status, &body)?;
        }
        self.decode(status, &body)
    }

    /// `POST /v1/restart`; returns the daemon's status line.
    pub async fn restart(&self, when: RestartWhen) -> Result<String, ClientError> {
        let body = serde_json::to_vec(&RestartRequest { when }).unwrap_or_default();
        let (status, body) = self
            .call(Method::POST, wire::RESTART, Some(body), QUICK)
            .await?;
        self.expect_ok(status, &body)?;
        self.decode::<RestartReply>(status, &body)
            .map(|r| r.status_line)
    }

    /// `POST /v1/retry-downloads`; returns how many failed downloads restarted.
    pub async fn retry_downloads(&self) -> Result<usize, ClientError> {
        let (status, body) = self
            .call(Method::POST, wire::RETRY_DOWNLOADS, None, QUICK)
            .await?;
        self.expect_ok(status, &body)?;
        self.decode::<wire::RetryReply>(status, &body)
            .map(|r| r.retried)
    }

    /// `GET /v1/wait-idle`, without limit when `timeout` is `None`.
    pub async fn wait_idle(&self, timeout: Option<Duration>) -> Result<WaitIdle, ClientError> {
        self.wait(Method::GET, wire::WAIT_IDLE, timeout).await
    }

    /// `POST /v1/drain`: draining from now on; waits like [`Client::wait_idle`].
    pub async fn drain(&self, timeout: Option<Duration>) -> Result<WaitIdle, ClientError> {
        self.wait(Method::POST, wire::DRAIN, timeout).await
    }

    /// A request that answers with a snapshot once the daemon is idle, or 504.
    async fn wait(
        &self,
        method: Method,
        route: &str,
        timeout: Option<Duration>,
    ) -> Result<WaitIdle, ClientError> {
        let (path, limit) = match timeout {
            Some(t) => (
                format!("{route}?timeout={}ms", t.as_millis()),
                t.saturating_add(WAIT_SLACK),
            ),
            None => (route.to_owned(), Duration::MAX),
        };
        let (status, body) = self.call(method, &path, None, limit).await?;
        if status == StatusCode::GATEWAY_TIMEOUT {
            let message = self.decode::<ErrorBody>(status, &body)?.error;
            return Ok(WaitIdle::TimedOut(message));
        }
        self.expect_ok(status, &body)?;
        self.decode(status, &body)
            .map(|s| WaitIdle::Idle(Box::new(s)))
    }

    /// `POST /v1/generate`: waits until the images are rendered; the inner error
    /// is the daemon's account of a failed render or an unknown name.
    pub async fn generate(
        &self,
        names: &[String],
        force: bool,
    ) -> Result<Result<Vec<PathBuf>, String>, ClientError> {
        let request = GenerateRequest {
            names: names.to_vec(),
            force,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let (status, body) = self
            .call(Method::POST, wire::GENERATE, Some(body), Duration::MAX)
            .await?;
        if (status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::BAD_REQUEST)
            && let Ok(e) = serde_json::from_slice::<ErrorBody>(&body)
        {
            return Ok(Err(e.error));
        }
        self.expect_ok(status, &body)?;
        self.decode::<GenerateReply>(status, &body)
            .map(|r| Ok(r.paths))
    }

    /// A `queue` command: `GET /v1/queue` for a listing, else the POST of
    /// `op`; the journal afterwards.
    pub async fn queue(&self, op: &QueueOp) -> Result<QueueList, ClientError> {
        let (method, route, body) = match op {
            QueueOp::List => (Method::GET, wire::QUEUE, None),
            QueueOp::Pause => (Method::POST, wire::QUEUE_PAUSE, None),
            QueueOp::Resume => (Method::POST, wire::QUEUE_RESUME, None),
            QueueOp::Release { prompt_id } => {
                let request = wire::ReleaseRequest {
                    prompt_id: prompt_id.clone(),
                };
                let body = serde_json::to_vec(&request).unwrap_or_default();
                (Method::POST, wire::QUEUE_RELEASE, Some(body))
            }
        };
        let (status, body) = self.call(method, route, body, QUICK).await?;
        self.expect_ok(status, &body)?;
        self.decode(status, &body)
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let (status, body) = self.call(Method::GET, wire::METRICS, None, QUICK).await?;
        self.expect_ok(status, &body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    /// One request on a fresh connection; a connection failure or silence past
    /// `limit` means no daemon answered.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let no_daemon = |reason: String| ClientError::NoDaemon {
            socket: self.socket.clone(),
            reason,
        };
        let exchange = async {
            let stream = UnixStream::connect(&self.socket).await?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, "localhost")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(std::io::Error::other)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(std::io::Error::other)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            Ok::<_, std::io::Error>((status, bytes))
        };
        match tokio::time::timeout(limit, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(no_daemon(e.to_string())),
            Err(_) => Err(no_daemon(format!(
                "no answer within {}",
                humantime::format_duration(limit)
            ))),
        }
    }

    fn expect_ok(&self, status: StatusCode, body: &[u8]) -> Result<(), ClientError> {
        if status.is_success() {
            return Ok(());
        }
        let message = serde_json::from_slice::<ErrorBody>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
        Err(self.unexpected(status, message))
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, ClientError> {
        serde_json::from_slice(body)
            .map_err(|e| self.unexpected(status, format!("unreadable answer: {e}")))
    }

    fn unexpected(&self, status: StatusCode, message: String) -> ClientError {
        ClientError::Unexpected {
            socket: self.socket.clone(),
            status,
            message,
        }
    }
}
