//! The in-cluster Kubernetes API, as far as the deletion cost needs it: where the
//! API server is, which Pod this is, and one `PATCH` of its annotation with the
//! service account's token (docs/containers.md#kubernetes).
//!
//! Everything is found the way a Pod is given it: the API server from
//! `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, the token, CA and
//! namespace from the service account's mounted directory, the Pod's name and
//! namespace from `POD_NAME`/`POD_NAMESPACE` (the downward API) or else the
//! hostname (a Pod's hostname is its name) and the mounted namespace. Two
//! overrides, [`API_ENV`] and [`SERVICE_ACCOUNT_ENV`], exist for tests and
//! unusual setups; only [`API_ENV`] can name a plain `http://` server.
//!
//! The token is read again for every patch: projected service account tokens
//! are rotated by the kubelet, and a token read once would expire. It is sent
//! only to the API server (no redirects, no proxy) and never logged.
//!
//! The request itself is made by the helper program `sd-webui-supervisor-fetch
//! kube-patch` ([`super::patch`]), one process per patch, like a download: the
//! TLS stack stays out of the daemon, whose idle memory it would otherwise
//! raise by about 1 MB (5.9 → 7.0 MB measured) for a feature most services
//! never switch on. Patches come at most once a second.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::patch::{PatchAnswer, PatchJob};

/// The annotation the ReplicaSet controller reads to choose which pods a
/// scale-in removes: lowest cost first.
pub const ANNOTATION: &str = "controller.kubernetes.io/pod-deletion-cost";
/// Where the kubelet mounts the service account's token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// Test/advanced override of the API server's base URL (`https://…`, or
/// `http://…` for a test server): replaces `KUBERNETES_SERVICE_HOST`/`_PORT`.
pub const API_ENV: &str = "SD_WEBUI_SUPERVISOR_KUBE_API";
/// Test/advanced override of the service account directory
/// ([`SERVICE_ACCOUNT_DIR`]): `token`, `ca.crt`, `namespace`.
pub const SERVICE_ACCOUNT_ENV: &str = "SD_WEBUI_SUPERVISOR_KUBE_SERVICEACCOUNT";

/// How long one patch may take in all, helper start included.
const PATCH_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest answer read from the helper.
const MAX_ANSWER: u64 = 16 * 1024;

/// Why a patch failed, in words fit for the log and the status: with the URL
/// and the API server's message, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatchError(pub(super) String);

/// The API server and the Pod: everything one patch needs.
#[derive(Debug)]
pub struct Api {
    /// The Pod's URL on the API server.
    url: String,
    token: PathBuf,
    /// The cluster's CA, for an `https://` API server.
    ca: Option<PathBuf>,
    namespace: String,
    name: String,
}

impl Api {
    /// Finds the cluster, the Pod and the credentials through `env` (the
    /// process's environment, or a test's); `Err` says in words why this is not
    /// a Pod that can patch itself.
    pub fn discover(env: impl Fn(&str) -> Option<String>) -> Result<Api, String> {
        let dir = PathBuf::from(env(SERVICE_ACCOUNT_ENV).unwrap_or(SERVICE_ACCOUNT_DIR.into()));
        let base = match env(API_ENV) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => {
                url.trim_end_matches('/').to_string()
            }
            Some(url) => return Err(format!("{API_ENV}={url:?} is not an http(s):// URL")),
            None => {
                let host = env("KUBERNETES_SERVICE_HOST")
                    .ok_or("KUBERNETES_SERVICE_HOST is not set: not running in a Kubernetes Pod")?;
                let port = env("KUBERNETES_SERVICE_PORT").unwrap_or("443".into());
                // An IPv6 service address needs its brackets in a URL.
                if host.contains(':') {
                    format!("https://[{host}]:{port}")
                } else {
                    format!("https://{host}:{port}")
                }
            }
        };
        let token = dir.join("token");
        if !token.is_file() {
            return Err(format!(
                "no service account token at {} (automountServiceAccountToken off?)",
                token.display()
            ));
        }
        let namespace = match env("POD_NAMESPACE") {
            Some(ns) => ns,
            None => read_trimmed(&dir.join("namespace"))
                .map_err(|e| format!("POD_NAMESPACE is not set and {e}"))?,
        };
        let name = match env("POD_NAME") {
            Some(name) => name,
            None => read_trimmed(Path::new("/proc/sys/kernel/hostname"))
                .map_err(|e| format!("POD_NAME is not set and {e}"))?,
        };
        for (what, value) in [("namespace", &namespace), ("Pod name", &name)] {
            if !is_object_name(value) {
                return Err(format!("{what} {value:?} is not a Kubernetes object name"));
            }
        }
        let ca = if base.starts_with("https://") {
            let ca = dir.join("ca.crt");
            let pem = std::fs::read_to_string(&ca)
                .map_err(|e| format!("cannot read the cluster's CA {}: {e}", ca.display()))?;
            if !pem.contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("{}: not a PEM certificate", ca.display()));
            }
            Some(ca)
        } else {
            None
        };
        Ok(Api {
            ca,
            url: format!("{base}/api/v1/namespaces/{namespace}/pods/{name}"),
            token,
            namespace,
            name,
        })
    }

    /// `namespace/name` of the Pod, for the log and the status.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Sets the Pod's [`ANNOTATION`] to `cost` with a JSON merge patch, with
    /// the token as it is in its file now, through the helper program.
    pub async fn patch(&self, cost: i32) -> Result<(), PatchError> {
        let job = PatchJob {
            url: self.url.clone(),
            token_file: self.token.clone(),
            ca_file: self.ca.clone(),
            cost,
        };
        match tokio::time::timeout(PATCH_TIMEOUT, run_helper(&job)).await {
            Ok(Ok(PatchAnswer { error: None })) => Ok(()),
            Ok(Ok(PatchAnswer { error: Some(e) })) => Err(PatchError(e)),
            Ok(Err(e)) => Err(PatchError(format!("PATCH {}: {e}", self.url))),
            Err(_) => Err(PatchError(format!(
                "PATCH {}: no answer within {}s",
                self.url,
                PATCH_TIMEOUT.as_secs()
            ))),
        }
    }
}

/// One `kube-patch` run of the helper: the job on stdin, one JSON answer on
/// stdout. The helper dies with the supervisor and when this future is dropped.
async fn run_helper(job: &PatchJob) -> Result<PatchAnswer, String> {
    let exe = crate::download::worker::helper_path().map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(job).map_err(|e| e.to_string())?;
    let mut child = crate::download::worker::helper_command(&exe)
        .arg(super::patch::KUBE_PATCH_ARG)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&body)
            .await
            .map_err(|e| format!("cannot send the job to {}: {e}", exe.display()))?;
    }
    let mut text = String::new();
    if let Some(stdout) = child.stdout.take() {
        stdout
            .take(MAX_ANSWER)
            .read_to_string(&mut text)
            .await
            .map_err(|e| format!("cannot read {}'s answer: {e}", exe.display()))?;
    }
    let _ = child.wait().await;
    serde_json::from_str(text.trim()).map_err(|e| format!("{} gave no answer ({e})", exe.display()))
}

/// A file's text without the surrounding whitespace; the error names the file.
fn read_trimmed(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_string()),
        Ok(_) => Err(format!("{} is empty", path.display())),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A DNS subdomain name (RFC 1123) as Kubernetes names objects: what may go
/// into the Pod's URL without escaping.
fn is_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn outside_a_cluster_says_why() {
        let why = Api::discover(env(&[])).unwrap_err();
        assert!(why.contains("KUBERNETES_SERVICE_HOST"), "{why}");
        let dir = tempfile::tempdir().unwrap();
        let sa = dir.path().display().to_string();
        let why = Api::discover(env(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1".into()),
            (SERVICE_ACCOUNT_ENV, sa),
        ]))
        .unwrap_err();
        assert!(why.contains("no service account token"), "{why}");
    }

    #[test]
    fn the_pod_url_from_the_downward_api_or_the_mounted_namespace() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "t\n").unwrap();
        std::fs::write(dir.path().join("namespace"), "gpu-pool\n").unwrap();
        let sa = dir.path().display().to_string();
        let api = Api::discover(env(&[
            (API_ENV, "http://127.0.0.1:9/".into()),
            (SERVICE_ACCOUNT_ENV, sa.clone()),
            ("POD_NAME", "sd-webui-7d9f-abcde".into()),
        ]))
        .unwrap();
        assert_eq!(
            api.url,
            "http://127.0.0.1:9/api/v1/namespaces/gpu-pool/pods/sd-webui-7d9f-abcde"
        );
        assert_eq!(api.pod(), "gpu-pool/sd-webui-7d9f-abcde");
        let api = Api::discover(env(&[
            (API_ENV, "http://127.0.0.1:9".into()),
            (SERVICE_ACCOUNT_ENV, sa.clone()),
            ("POD_NAME", "p".into()),
            ("POD_NAMESPACE", "other".into()),
        ]))
        .unwrap();
        assert_eq!(api.pod(), "other/p");
        // In a cluster the API server is HTTPS and its CA is required.
        let why = Api::discover(env(&[
            ("KUBERNETES_SERVICE_HOST", "fd00::1".into()),
            (SERVICE_ACCOUNT_ENV, sa),
            ("POD_NAME", "p".into()),
        ]))
        .unwrap_err();
        assert!(why.contains("ca.crt"), "{why}");
    }

    #[test]
    fn names_that_would_change_the_url_are_refused() {
        for bad in ["", "a/b", "..x", "UPPER", "x?y", "-a", "a-"] {
            assert!(!is_object_name(bad), "{bad:?}");
        }
        for good in ["a", "sd-webui-7d9f-abcde", "kube-system", "a.b-1"] {
            assert!(is_object_name(good), "{good:?}");
        }
    }
}
