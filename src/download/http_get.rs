//! Sending a download request: the token goes to the URL's own origin only, so
//! redirects are followed here rather than by reqwest (whose policy would keep
//! a custom token header on a redirect to a signed CDN URL).

use std::path::Path;

use reqwest::header::{HeaderName, HeaderValue, LOCATION, RANGE};
use reqwest::{Client, Response};
use url::Url;

use super::{Failure, redact};
use crate::config::download::Download;

/// Redirects followed before giving up (as curl and browsers, roughly).
const MAX_REDIRECTS: usize = 10;

/// The client all downloads share: rustls, no automatic redirects, no overall
/// timeout (a 20 GB file takes as long as it takes) but bounded connecting and
/// idle reads, so a dead server is noticed.
pub fn client() -> Result<Client, Failure> {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(30))
        .read_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("sd-webui-supervisor/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Failure::Network(chain(&e.without_url())))
}

/// Reads the token file (whitespace trimmed) into a header value marked
/// sensitive, so reqwest's own debug output hides it.
async fn token(download: &Download) -> Result<Option<(HeaderName, HeaderValue)>, Failure> {
    let Some(path) = &download.token_file else {
        return Ok(None);
    };
    let fail = |reason: String| Failure::TokenFile {
        path: path.display().to_string(),
        reason,
    };
    let text = read_token(path).await.map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("empty".into()));
    }
    let name = HeaderName::from_bytes(download.token_header.as_bytes())
        .map_err(|_| fail("bad header name".into()))?;
    let value = if name == reqwest::header::AUTHORIZATION {
        HeaderValue::from_str(&format!("Bearer {token}"))
    } else {
        HeaderValue::from_str(token)
    };
    let mut value =
        value.map_err(|_| fail("contains characters not allowed in a header".into()))?;
    value.set_sensitive(true);
    Ok(Some((name, value)))
}

async fn read_token(path: &Path) -> std::io::Result<String> {
    tokio::fs::read_to_string(path).await
}

/// GETs the download from byte `from` on, following redirects; the token is
/// attached only while the request goes to the declared URL's scheme, host and
/// port. Returns the final response and its URL (for messages).
pub async fn get(
    client: &Client,
    download: &Download,
    from: u64,
) -> Result<(Response, Url), Failure> {
    let origin = Url::parse(&download.url).map_err(|e| Failure::Redirect(e.to_string()))?;
    let token = token(download).await?;
    let mut url = origin.clone();
    for _ in 0..=MAX_REDIRECTS {
        let mut req = client.get(url.clone());
        if from > 0 {
            req = req.header(RANGE, format!("bytes={from}-"));
        }
        if let Some((name, value)) = &token
            && url.origin() == origin.origin()
        {
            req = req.header(name.clone(), value.clone());
        }
        let resp = req.send().await.map_err(|e| {
            Failure::Network(format!("{}: {}", redact(&url), chain(&e.without_url())))
        })?;
        if !resp.status().is_redirection() {
            return Ok((resp, url));
        }
        let next = resp
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .and_then(|l| url.join(l).ok())
            .ok_or_else(|| {
                Failure::Redirect(format!("no usable Location from {}", redact(&url)))
            })?;
        if !matches!(next.scheme(), "http" | "https") {
            return Err(Failure::Redirect(format!("to scheme {:?}", next.scheme())));
        }
        url = next;
    }
    Err(Failure::Redirect(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

/// An error and its sources on one line (reqwest's own message is terse).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}
