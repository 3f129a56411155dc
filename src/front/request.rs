//! One request through the front door: authenticate, then pass it to the UI if
//! the gate is open, else hold it (API), show the restarting page (browser) or
//! close the websocket with 1012 (Service Restart), which ComfyUI's and
//! Gradio's frontends answer by reconnecting.
//!
//! A request whose connection to the UI fails before anything was sent, or a
//! request without a body whose connection fails before the answer's head, is
//! sent again once the UI answers (within the hold); a request with a body is
//! never sent twice (502 instead).

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use super::auth::{Credentials, Limiter, WINDOW};
use super::forward::{self, DownBody, Tracked};
use super::gate::{self, Gate, HoldEnd};
use super::keep;
use super::page;
use super::route;
use super::stats::{Rejected, Stats};
use crate::supervisor::protocol::Snapshot;

/// Pause before trying a UI again whose port did not answer although the core
/// last saw it ready (it just crashed, or is being stopped).
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Most times one request without a body is sent to the UI.
const MAX_SENDS: u32 = 3;

/// What every request of one front door shares.
pub struct Shared {
    /// The UI's private loopback port.
    pub ui_port: u16,
    /// With `[instances]`: each one's name and private port (then `ui_port`
    /// is unused); empty: one UI.
    pub instances: Vec<(String, u16)>,
    /// Where requests went, for routing among the instances.
    pub table: Mutex<route::Table>,
    /// `front.hold_timeout`.
    pub hold_timeout: Duration,
    /// `front.max_held`.
    pub max_held: usize,
    /// `front.auth_file`'s credentials.
    pub auth: Option<Credentials>,
    /// Failed attempts per address.
    pub limiter: Mutex<Limiter>,
    /// The core's snapshots (the gate).
    pub snapshots: watch::Receiver<Snapshot>,
    /// The counters.
    pub stats: Arc<Stats>,
    /// Requests in flight (proxied or held): a self-upgrade waits for zero.
    pub busy: watch::Sender<usize>,
    /// Per UI (instance): requests sent to it whose answers are not out yet:
    /// a planned stop of the UI waits for zero ([`super::Answers`]).
    pub sending: Vec<watch::Sender<usize>>,
    /// Turns true on a stop or a handoff: relayed websockets end.
    pub stop: watch::Receiver<bool>,
    /// The queue journal's tap (ComfyUI): submissions are journaled.
    pub keep: Option<keep::Tap>,
}

/// Counts one request in flight while it lives.
pub struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: &Arc<Shared>) -> InFlight {
        shared.busy.send_modify(|n| *n = n.saturating_add(1));
        shared.stats.set_in_flight(*shared.busy.borrow());
        InFlight(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.busy.send_modify(|n| *n = n.saturating_sub(1));
        self.0.stats.set_in_flight(*self.0.busy.borrow());
    }
}

/// Counts one request on its way to a UI, from just before the gate is read
/// until its answer is out (or it is held after all). It counts at every UI
/// until the request's UI is chosen ([`Sending::only`]), so a stop that
/// closed one UI's gate and then sees none sending to it misses nothing.
pub struct Sending {
    shared: Arc<Shared>,
    /// The UIs it counts at: all, then the chosen one.
    at: std::ops::Range<usize>,
}

impl Sending {
    fn new(shared: &Arc<Shared>) -> Sending {
        for s in &shared.sending {
            s.send_modify(|n| *n = n.saturating_add(1));
        }
        Sending {
            shared: shared.clone(),
            at: 0..shared.sending.len(),
        }
    }

    /// Counts at UI `i` only.
    fn only(mut self, i: usize) -> Sending {
        for (k, s) in self.shared.sending.iter().enumerate() {
            if k != i && self.at.contains(&k) {
                s.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
        self.at = if i < self.shared.sending.len() {
            i..i.saturating_add(1)
        } else {
            0..0
        };
        self
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        for k in self.at.clone() {
            if let Some(s) = self.shared.sending.get(k) {
                s.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
    }
}

/// Where one request goes: the UI's index and port, and the instance its
/// answer's session cookie names (when it must be set); or the gate that
/// holds it.
fn choose(
    shared: &Shared,
    snap: &Snapshot,
    class: &route::Class,
    session: Option<&str>,
    submission: bool,
    skip: &[usize],
) -> Result<(usize, u16, Option<String>), Gate> {
    if shared.instances.is_empty() {
        return match Gate::for_request(snap, submission) {
            Gate::Open => Ok((0, shared.ui_port, None)),
            gate => Err(gate),
        };
    }
    let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
    table.update(route::seats(snap, skip));
    let pick = table.pick(class, session);
    let Some((pick, (name, port))) =
        pick.and_then(|p| Some((p, shared.instances.get(p.index)?.clone())))
    else {
        return Err(route::none_open(snap));
    };
    if *class == route::Class::Work {
        table.sent(pick.index);
    }
    let cookie = (pick.set_cookie && *class == route::Class::Session).then_some(name);
    Ok((pick.index, port, cookie))
}

/// Whether a browser asks for a page (it gets the restarting page, not a hold).
fn is_browser_page(req: &Request<Incoming>) -> bool {
    req.method() == Method::GET
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

/// Gradio's session heartbeat (`/heartbeat/<session>`) is an event stream that
/// lasts as long as a browser tab: it does not keep a self-upgrade waiting.
fn is_session_stream(path: &str) -> bool {
    path.split('/').any(|seg| seg == "heartbeat")
}

/// Serves one request; never fails (every error is an answer).
pub async fn handle(
    shared: Arc<Shared>,
    peer: IpAddr,
    mut req: Request<Incoming>,
) -> Result<Response<DownBody>, Infallible> {
    let stats = shared.stats.clone();
    if let Some(creds) = &shared.auth {
        let now = std::time::Instant::now();
        let mut limiter = shared.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.blocked(peer, now) {
            stats.rejected(Rejected::RateLimited);
            return Ok(forward::own(page::rate_limited(WINDOW.as_secs())));
        }
        let offered = req.headers().get(header::AUTHORIZATION);
        let ok = offered.is_some_and(|h| creds.accepts(h.as_bytes()));
        if !ok {
            // Only a wrong credential is a guess; a browser's first request
            // carries none.
            if offered.is_some() {
                limiter.failed(peer, now);
            }
            stats.rejected(Rejected::Unauthorized);
            return Ok(forward::own(page::unauthorized()));
        }
        // The front door's secret is not the UI's business.
        req.headers_mut().remove(header::AUTHORIZATION);
    }
    if req.uri().path() == page::STATUS_PATH {
        let gate = Gate::of(&shared.snapshots.borrow());
        return Ok(forward::own(page::status_json(&gate)));
    }
    let flight = InFlight::new(&shared);
    let started = Instant::now();
    let deadline = started + shared.hold_timeout;
    let upgrade = forward::wants_upgrade(req.headers());
    let browser = !upgrade && is_browser_page(&req);
    let on_client = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path().to_string();
    forward::strip_hop_by_hop(&mut parts.headers, upgrade);
    append_forwarded_for(&mut parts.headers, peer);
    // A request without a body can be sent again; one with a body only until
    // its body was handed to a connection.
    let mut body = (!body.is_end_stream()).then_some(body);
    let replayable = body.is_none();
    // A ComfyUI submission: read whole, journaled once the UI accepts it, and
    // held while the queue is paused or the journal is being replayed.
    let submission = shared
        .keep
        .as_ref()
        .filter(|_| crate::journal::comfy::is_submission(parts.method.as_str(), &path));
    let mut kept_body = None;
    if let Some(b) = body.take_if(|_| {
        submission.is_some() && keep::wants(parts.method.as_str(), &path, &parts.headers)
    }) {
        match keep::read_body(b).await {
            Some(bytes) => kept_body = Some(bytes),
            None => {
                stats.rejected(Rejected::UiGone);
                return Ok(forward::own(page::body_broken()));
            }
        }
    }
    let mut snapshots = shared.snapshots.clone();
    let mut held = None;
    let mut sends = 0u32;
    let class = route::classify(&parts.method, &path);
    let session = parts
        .headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| route::session_of(Some(c)))
        .map(str::to_owned);
    let follows_file = !shared.instances.is_empty() && route::follows_file(&parts.method, &path);
    let mut skip = Vec::new();
    let (response, sending, target, cookie) = loop {
        // Counted before the gate is read: a stop that closed the gate and
        // then sees no request sending cannot miss one that saw it open.
        let sending = Sending::new(&shared);
        let chosen = choose(
            &shared,
            &snapshots.borrow_and_update(),
            &class,
            session.as_deref(),
            submission.is_some(),
            &skip,
        );
        let (target, port, cookie) = match chosen {
            Ok(to) => to,
            Err(gate) => {
                drop(sending);
                if upgrade {
                    stats.rejected(Rejected::WebsocketClosed);
                    return Ok(close_websocket(&parts, on_client));
                }
                if browser {
                    stats.rejected(Rejected::RestartingPage);
                    return Ok(forward::own(page::restarting(&gate)));
                }
                if let Gate::Failed { .. } = gate {
                    stats.rejected(Rejected::UiFailed);
                    return Ok(forward::own(page::unavailable(&gate, "the UI has failed")));
                }
                if held.is_none() {
                    if usize::try_from(stats.held_now()).unwrap_or(usize::MAX) >= shared.max_held {
                        stats.rejected(Rejected::HoldFull);
                        return Ok(forward::own(page::unavailable(
                            &gate,
                            "too many requests are waiting for the UI (front.max_held)",
                        )));
                    }
                    held = Some(stats.hold());
                }
                match gate::wait_open(&mut snapshots, deadline, submission.is_some()).await {
                    // Read the gate again, counted as sending.
                    Ok(()) => continue,
                    Err(end) => {
                        let gate = Gate::of(&snapshots.borrow());
                        let (why, msg) = match end {
                            HoldEnd::TimedOut => (
                                Rejected::HoldTimeout,
                                "the UI did not become ready within front.hold_timeout",
                            ),
                            HoldEnd::Failed(_) => (Rejected::UiFailed, "the UI has failed"),
                            HoldEnd::Stopped => {
                                (Rejected::HoldTimeout, "the supervisor is stopping")
                            }
                        };
                        stats.rejected(why);
                        return Ok(forward::own(page::unavailable(&gate, msg)));
                    }
                }
            }
        };
        let sending = sending.only(target);
        let mut sender = match forward::connect(port).await {
            Ok(s) => s,
            Err(_) => {
                // The UI is not listening although it was last seen ready: it
                // crashed or is stopping; the core will say so shortly.
                if Instant::now() >= deadline {
                    stats.rejected(Rejected::HoldTimeout);
                    let gate = Gate::of(&snapshots.borrow());
                    return Ok(forward::own(page::unavailable(
                        &gate,
                        "the UI did not answer within front.hold_timeout",
                    )));
                }
                if held.is_none() {
                    held = Some(stats.hold());
                }
                drop(sending);
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
        };
        let up_body = match (&kept_body, body.take()) {
            (Some(b), _) => Either::Right(Either::Left(http_body_util::Full::new(b.clone()))),
            (None, Some(b)) => Either::Left(b),
            (None, None) => Either::Right(Either::Right(Empty::<Bytes>::new())),
        };
        let mut up = Request::new(up_body);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = parts.uri.clone();
        *up.version_mut() = hyper::Version::HTTP_11;
        *up.headers_mut() = parts.headers.clone();
        sends += 1;
        match sender.send_request(up).await {
            // A file another instance made: ask the next one.
            Ok(r)
                if follows_file
                    && r.status() == StatusCode::NOT_FOUND
                    && route::another_serves(&snapshots.borrow(), target, &skip) =>
            {
                skip.push(target);
                drop(sending);
                sends = 0;
            }
            Ok(r) => break (r, sending, target, cookie),
            Err(_) if replayable && sends < MAX_SENDS && Instant::now() < deadline => {
                if held.is_none() {
                    held = Some(stats.hold());
                }
                drop(sending);
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                stats.rejected(Rejected::UiGone);
                return Ok(forward::own(page::ui_gone()));
            }
        }
    };
    drop(held);
    let mut response = response;
    stats.proxied(response.status().as_u16(), started.elapsed());
    if !shared.instances.is_empty() {
        stats.routed(target);
    }
    if let Some(v) = cookie.and_then(|name| HeaderValue::from_str(&route::set_cookie(&name)).ok()) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    if class == route::Class::Work
        && !shared.instances.is_empty()
        && crate::journal::comfy::is_submission(parts.method.as_str(), &path)
        && response.status().is_success()
    {
        let answer = remember_prompt(&shared, target, response).await;
        drop((flight, sending));
        return Ok(answer);
    }
    if let (Some(tap), Some(sent)) = (submission, &kept_body) {
        let answer = keep::answer(tap, sent, response).await;
        drop((flight, sending));
        return Ok(answer);
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(on_client) = on_client {
            let on_ui = hyper::upgrade::on(&mut response);
            let (stats, stop) = (stats.clone(), shared.stop.clone());
            stats.websocket_opened();
            tokio::spawn(async move {
                forward::relay(on_client, on_ui, stop).await;
                stats.websocket_closed();
            });
        }
        drop((flight, sending));
        let (mut rparts, _) = response.into_parts();
        forward::strip_hop_by_hop(&mut rparts.headers, true);
        let empty = Empty::<Bytes>::new().map_err(|never| match never {});
        return Ok(Response::from_parts(rparts, empty.boxed_unsync()));
    }
    let (mut rparts, rbody) = response.into_parts();
    forward::strip_hop_by_hop(&mut rparts.headers, false);
    let event_stream = rparts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let guard = (!(event_stream && is_session_stream(&path))).then_some((flight, sending));
    Ok(Response::from_parts(
        rparts,
        Tracked::new(rbody, guard).boxed_unsync(),
    ))
}

/// ComfyUI's answer to a `/prompt` sent to instance `target`: read whole
/// (it is tiny) for its `prompt_id`, so the prompt's `/history/<id>` goes to
/// the same instance, and passed back as it came.
async fn remember_prompt(
    shared: &Shared,
    target: usize,
    response: Response<Incoming>,
) -> Response<DownBody> {
    let Some((parts, bytes)) = forward::read_whole(response, MAX_PROMPT_ANSWER).await else {
        return forward::own(page::ui_gone());
    };
    if let Some(id) = route::prompt_id(&bytes) {
        let mut table = shared.table.lock().unwrap_or_else(|p| p.into_inner());
        table.took_prompt(id, target);
    }
    forward::pass_whole(parts, bytes)
}

/// Largest answer to a `/prompt` read for its id (`{"prompt_id": …}`).
const MAX_PROMPT_ANSWER: usize = 1024 * 1024;

/// Adds the client's address to `X-Forwarded-For`, as every reverse proxy does
/// (the UIs' servers trust it from loopback).
fn append_forwarded_for(headers: &mut hyper::HeaderMap, peer: IpAddr) {
    let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {peer}"),
        None => peer.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// Completes the websocket handshake and closes at once with 1012 (Service
/// Restart): the frontends reconnect, and reach the UI once it is back.
fn close_websocket(
    parts: &hyper::http::request::Parts,
    on_client: Option<hyper::upgrade::OnUpgrade>,
) -> Response<DownBody> {
    let key = parts.headers.get(header::SEC_WEBSOCKET_KEY);
    let (Some(key), Some(on_client)) = (key, on_client) else {
        let gate = Gate::Closed {
            status: "the UI is restarting".into(),
            expected: None,
        };
        return forward::own(page::unavailable(&gate, "the UI is restarting"));
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        if let Ok(upgraded) = on_client.await {
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            let frame = CloseFrame {
                code: CloseCode::Restart,
                reason: "the UI is restarting".into(),
            };
            let _ = ws.close(Some(frame)).await;
        }
    });
    let mut r = Response::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
