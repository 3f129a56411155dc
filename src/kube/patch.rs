//! The helper program's side of a deletion-cost patch: `sd-webui-supervisor-fetch
//! kube-patch` reads one [`PatchJob`] on stdin, sends the `PATCH` with a TLS
//! client that trusts only the cluster's CA (no redirects, no proxy), and writes
//! one [`PatchAnswer`] on stdout. It runs in the helper so that the TLS stack is
//! loaded only while a patch is made ([`super::api`] says why).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};

use super::api::ANNOTATION;

/// The helper's first argument for a patch (a download job has none).
pub const KUBE_PATCH_ARG: &str = "kube-patch";
/// How long the request may take; the supervisor waits a little longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest token file read: real ones are about a kilobyte.
const MAX_TOKEN: u64 = 64 * 1024;
/// How much of the API server's error message a failure keeps.
const MAX_MESSAGE: usize = 300;

/// One patch: where, with which credentials (files, never their contents), what.
#[derive(Debug, Serialize, Deserialize)]
pub struct PatchJob {
    /// The Pod's URL on the API server.
    pub url: String,
    /// The service account's token file, read by the helper.
    pub token_file: PathBuf,
    /// The cluster's CA (`None`: a plain `http://` test server).
    pub ca_file: Option<PathBuf>,
    /// The cost to set.
    pub cost: i32,
}

/// The helper's answer: `error` says in words why the patch failed, with the
/// URL and the API server's message, never the token.
#[derive(Debug, Serialize, Deserialize)]
pub struct PatchAnswer {
    /// `None`: the API server accepted the patch.
    pub error: Option<String>,
}

/// Runs `kube-patch`; the exit code is 0 whenever an answer was written.
pub fn main() -> ExitCode {
    let mut text = String::new();
    let job = std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str::<PatchJob>(&text).map_err(|e| e.to_string()));
    let error = match job {
        Err(e) => Some(format!("unreadable patch job: {e}")),
        Ok(job) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(patch(&job)).err(),
            Err(e) => Some(format!("cannot start: {e}")),
        },
    };
    if let Ok(line) = serde_json::to_string(&PatchAnswer { error }) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}

/// Sends the merge patch; `Err` in words.
async fn patch(job: &PatchJob) -> Result<(), String> {
    let token = read_token(job)?;
    let mut client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(REQUEST_TIMEOUT / 2)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy();
    if let Some(ca) = &job.ca_file {
        let pem = std::fs::read(ca)
            .map_err(|e| format!("cannot read the cluster's CA {}: {e}", ca.display()))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| format!("{}: not a PEM certificate: {e}", ca.display()))?;
        // Only the cluster's CA vouches for the API server.
        client = client
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert);
    }
    let client = client
        .build()
        .map_err(|e| format!("cannot set up the HTTPS client: {e}"))?;
    let mut bearer = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the service account token is not a valid header".to_string())?;
    bearer.set_sensitive(true);
    let body = serde_json::json!({
        "metadata": {"annotations": {ANNOTATION: job.cost.to_string()}}
    });
    let answer = client
        .patch(&job.url)
        .header(AUTHORIZATION, bearer)
        .header(CONTENT_TYPE, "application/merge-patch+json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| format!("PATCH {}: {}", job.url, e.without_url()))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(());
    }
    // The API server says why in a Status object's `message`
    // ("pods \"x\" is forbidden: …"): the first words of it.
    let text = answer.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    let mut message: String = message
        .replace(&token, "<token>")
        .chars()
        .take(MAX_MESSAGE)
        .collect();
    if !message.is_empty() {
        message.insert_str(0, ": ");
    }
    Err(format!("PATCH {}: {status}{message}", job.url))
}

/// The token as its file holds it now (projected tokens rotate).
fn read_token(job: &PatchJob) -> Result<String, String> {
    let cannot = |why: String| {
        format!(
            "cannot read the service account token {}: {why}",
            job.token_file.display()
        )
    };
    let mut text = String::new();
    std::fs::File::open(&job.token_file)
        .and_then(|f| f.take(MAX_TOKEN).read_to_string(&mut text))
        .map_err(|e| cannot(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(cannot("it is empty".into()));
    }
    Ok(token.to_string())
}
