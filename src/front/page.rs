//! What the front door answers itself: the browser's "restarting" page, the
//! JSON the page polls, and the API client's 503, 502, 401 and 429.
//!
//! The page is plain HTML with a little script: it shows the status line and the
//! expected time, polls [`STATUS_PATH`] every second and reloads itself once the
//! UI is ready (a `<noscript>` refresh does the same without script).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

use super::gate::Gate;

/// The front door's own route: `{"ready": bool, "status": "..."}`. Under
/// `/.well-known/`, which no UI serves.
pub const STATUS_PATH: &str = "/.well-known/sd-webui-supervisor/front";

/// Seconds a client is told to wait (`Retry-After`) when no start time is known.
const RETRY_SECONDS: u64 = 5;

/// A response the front door makes itself.
pub type Own = Response<Full<Bytes>>;

fn respond(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Own {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        content_type.parse().expect("static header value"),
    );
    h.insert(
        CACHE_CONTROL,
        "no-store".parse().expect("static header value"),
    );
    r
}

fn retry_after(r: &mut Own, seconds: u64) {
    if let Ok(v) = seconds.max(1).to_string().parse() {
        r.headers_mut().insert(RETRY_AFTER, v);
    }
}

/// JSON string escaping for the page's and the API's bodies.
fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// HTML escaping for the status line on the page.
fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Seconds to suggest waiting for a closed gate.
fn seconds(gate: &Gate) -> u64 {
    match gate {
        Gate::Closed {
            expected: Some(d), ..
        } => d.as_secs().max(1),
        _ => RETRY_SECONDS,
    }
}

/// The status line of a gate that is not open.
fn status_of(gate: &Gate) -> &str {
    match gate {
        Gate::Open => "ready",
        Gate::Closed { status, .. } | Gate::Failed { status } => status,
    }
}

/// `GET` [`STATUS_PATH`].
pub fn status_json(gate: &Gate) -> Own {
    let ready = matches!(gate, Gate::Open);
    let body = format!(
        "{{\"ready\":{ready},\"failed\":{},\"status\":{}}}",
        matches!(gate, Gate::Failed { .. }),
        json_str(status_of(gate))
    );
    respond(StatusCode::OK, "application/json", body)
}

/// The browser's page while the UI is not ready (503, so nothing caches it).
pub fn restarting(gate: &Gate) -> Own {
    let (title, expect) = match gate {
        Gate::Failed { .. } => (
            "The UI has stopped",
            "It will not start again by itself; see <code>systemctl status</code> or <code>sd-webui-supervisor status</code>.".to_string(),
        ),
        Gate::Closed {
            expected: Some(d), ..
        } => (
            "The UI is restarting",
            format!("The last start took {} s. This page reloads itself when the UI is back.", d.as_secs().max(1)),
        ),
        _ => (
            "The UI is restarting",
            "This page reloads itself when the UI is back.".to_string(),
        ),
    };
    let body = format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<noscript><meta http-equiv="refresh" content="5"></noscript>
<style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:4em auto;padding:0 1em;color:#222;background:#fafafa}}
code,#status{{font-family:ui-monospace,monospace}}#status{{background:#eee;padding:.6em;border-radius:4px;display:block}}</style>
</head><body><h1 id="title">{title}</h1>
<p><span id="status">{status}</span></p>
<p>{expect}</p>
<script>
(function(){{
  var url = {path};
  function poll(){{
    fetch(url, {{cache: "no-store", credentials: "same-origin"}}).then(function(r){{ return r.json(); }}).then(function(s){{
      if (s.ready) {{ location.reload(); return; }}
      document.getElementById("status").textContent = s.status;
      setTimeout(poll, 1000);
    }}).catch(function(){{ setTimeout(poll, 1000); }});
  }}
  setTimeout(poll, 1000);
}})();
</script></body></html>
"#,
        status = html(status_of(gate)),
        path = json_str(STATUS_PATH),
    );
    let mut r = respond(
        StatusCode::SERVICE_UNAVAILABLE,
        "text/html; charset=utf-8",
        body,
    );
    retry_after(&mut r, seconds(gate));
    r
}

/// An API request the front door could not pass on: 503 with `Retry-After` and
/// a JSON body saying why.
pub fn unavailable(gate: &Gate, why: &str) -> Own {
    let body = format!(
        "{{\"error\":{},\"status\":{}}}",
        json_str(why),
        json_str(status_of(gate))
    );
    let mut r = respond(StatusCode::SERVICE_UNAVAILABLE, "application/json", body);
    retry_after(&mut r, seconds(gate));
    r
}

/// A client's body that broke off while the door read it whole (a journaled
/// ComfyUI submission): 400, and nothing reached the UI.
pub fn body_broken() -> Own {
    respond(
        StatusCode::BAD_REQUEST,
        "application/json",
        r#"{"error":"the request body broke off before it was read whole; nothing was sent to the UI"}"#,
    )
}

/// The UI closed the connection before it answered (it crashed or was stopped):
/// 502 with a JSON body. A request with a body is never sent twice.
pub fn ui_gone() -> Own {
    respond(
        StatusCode::BAD_GATEWAY,
        "application/json",
        r#"{"error":"the UI closed the connection before answering (it crashed or was stopped); the request was not repeated"}"#,
    )
}

/// No or wrong credentials.
pub fn unauthorized() -> Own {
    let mut r = respond(
        StatusCode::UNAUTHORIZED,
        "application/json",
        r#"{"error":"authentication required"}"#,
    );
    r.headers_mut().insert(
        WWW_AUTHENTICATE,
        r#"Basic realm="sd-webui-supervisor", charset="UTF-8""#
            .parse()
            .expect("static header value"),
    );
    r
}

/// Too many failed attempts from this address.
pub fn rate_limited(seconds: u64) -> Own {
    let mut r = respond(
        StatusCode::TOO_MANY_REQUESTS,
        "application/json",
        r#"{"error":"too many failed authentication attempts; try again later"}"#,
    );
    retry_after(&mut r, seconds);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_page_escapes_the_status_and_suggests_the_last_start_time() {
        let gate = Gate::Closed {
            status: "starting <b>&</b>".into(),
            expected: Some(Duration::from_millis(17_400)),
        };
        let r = restarting(&gate);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[RETRY_AFTER], "17");
        let body = format!("{:?}", r.body());
        assert!(body.contains("starting &lt;b&gt;&amp;&lt;/b&gt;"), "{body}");
        assert!(body.contains("took 17 s"), "{body}");
        let j = unavailable(&gate, "held too long");
        assert_eq!(j.headers()[RETRY_AFTER], "17");
        assert_eq!(status_json(&Gate::Open).status(), StatusCode::OK);
    }
}
