//! The proxy's upstream half: one HTTP/1.1 connection to the UI's private
//! loopback port per request (what nginx does by default), the request and the
//! answer streamed frame by frame (nothing is buffered, so SSE and 20 MB answers
//! flow as they come), hop-by-hop headers dropped, and websocket upgrades
//! relayed as bytes once both sides have switched protocols.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A request body on its way to the UI: the client's as it streams, read
/// whole (a journaled submission, [`super::keep`]), or none (a request
/// without a body, which may be sent again).
pub type UpBody = Either<Incoming, Either<http_body_util::Full<Bytes>, Empty<Bytes>>>;

/// What the front door answers with: the UI's body or one of its own.
pub type DownBody = http_body_util::combinators::UnsyncBoxBody<Bytes, hyper::Error>;

/// Opens a connection to the UI on `port` (loopback) and returns its sender; the
/// connection is driven by its own task (upgrades allowed) until it ends.
pub async fn connect(port: u16) -> std::io::Result<SendRequest<UpBody>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers and those the `Connection` header names;
/// `upgrade` keeps `Connection: upgrade` and `Upgrade` (a websocket handshake).
/// `Transfer-Encoding` goes too: hyper frames the body again on each side.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(&name);
        }
    }
    for name in HOP_BY_HOP {
        if upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a request asks to switch protocols (a websocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Relays the bytes of a switched connection both ways until either side ends
/// or `stop` turns true (a stop or a self-upgrade: the client reconnects).
pub async fn relay(
    client: hyper::upgrade::OnUpgrade,
    ui: hyper::upgrade::OnUpgrade,
    mut stop: watch::Receiver<bool>,
) {
    let (Ok(client), Ok(ui)) = tokio::join!(client, ui) else {
        return;
    };
    let mut client = TokioIo::new(client);
    let mut ui = TokioIo::new(ui);
    let stopped = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut ui) => {}
        () = stopped => {}
    }
}

/// A response body that holds `guard` until it has been sent whole (or dropped):
/// the request counts as in flight until then.
pub struct Tracked<B, G> {
    inner: B,
    guard: Option<G>,
}

impl<B, G> Tracked<B, G> {
    /// Wraps `inner`.
    pub fn new(inner: B, guard: Option<G>) -> Self {
        Tracked { inner, guard }
    }
}

impl<B: Body<Data = Bytes, Error = hyper::Error> + Unpin, G: Unpin> Body for Tracked<B, G> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The UI's answer read whole (at most `limit` bytes), for the door to look
/// into before passing it on with [`pass_whole`]; `None` when the UI broke
/// off or sent more.
pub async fn read_whole(
    response: hyper::Response<Incoming>,
    limit: usize,
) -> Option<(hyper::http::response::Parts, Bytes)> {
    let (parts, body) = response.into_parts();
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .ok()?;
    Some((parts, collected.to_bytes()))
}

/// An answer read by [`read_whole`], passed back as it came (its length is
/// the body's now).
pub fn pass_whole(
    mut parts: hyper::http::response::Parts,
    bytes: Bytes,
) -> hyper::Response<DownBody> {
    strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    hyper::Response::from_parts(parts, body)
}

/// One of the front door's own answers as a [`DownBody`] response.
pub fn own(r: super::page::Own) -> hyper::Response<DownBody> {
    r.map(|b| b.map_err(|never| match never {}).boxed_unsync())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_upgrades_keep_theirs() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
        h.insert(header::COOKIE, HeaderValue::from_static("a=b"));
        let mut plain = h.clone();
        strip_hop_by_hop(&mut plain, false);
        assert!(plain.get("x-private").is_none());
        assert!(plain.get(header::CONNECTION).is_none());
        assert!(plain.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(plain[header::CONTENT_LENGTH], "3");
        assert_eq!(plain[header::COOKIE], "a=b");

        let mut ws = HeaderMap::new();
        ws.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        ws.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws[header::UPGRADE], "websocket");
        assert_eq!(ws[header::CONNECTION], "upgrade");
        assert!(!wants_upgrade(&plain));
    }
}
