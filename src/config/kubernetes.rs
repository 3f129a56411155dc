//! `[kubernetes]`: what the supervisor tells the Kubernetes API about its own
//! Pod when it runs in a cluster. Kept apart from the other sections so its keys
//! have one home: the raw form, its checks and the typed form.
//!
//! - `pod_deletion_cost`: keep the Pod's `controller.kubernetes.io/pod-deletion-cost`
//!   annotation at the number of jobs running and waiting ([`crate::kube`]), so a
//!   scale-in (KEDA or an HPA lowering the replicas) removes idle pods first. Off
//!   by default: it needs a service account allowed to patch its Pod. Set up once,
//!   when the daemon starts (a reload that changes it takes effect at the next
//!   start, like `[control]`): the Pod, its token and the API server are what the
//!   daemon found when it started.
//!
//! A key added here goes into [`RawKubernetes`] (and its `KEYS`),
//! [`KubernetesConfig`], [`validate`] and the diff's `kubernetes` function, which
//! does not compile until the new field is classified.

use serde::{Deserialize, Serialize};

/// `[kubernetes]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    pub pod_deletion_cost: Option<bool>,
}

impl RawKubernetes {
    /// The section's keys, for the unknown-key check.
    pub const KEYS: &'static [&'static str] = &["pod_deletion_cost"];
}

/// `[kubernetes]`, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KubernetesConfig {
    /// Keep the Pod's `controller.kubernetes.io/pod-deletion-cost` at the
    /// queue's length, so a scale-in removes idle pods before busy ones.
    pub pod_deletion_cost: bool,
}

/// Checks `[kubernetes]`: its one key is a bool, which serde already checked.
pub(super) fn validate(raw: RawKubernetes) -> KubernetesConfig {
    KubernetesConfig {
        pod_deletion_cost: raw.pod_deletion_cost.unwrap_or(false),
    }
}
