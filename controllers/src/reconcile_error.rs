//! Errors of the pure reconcile functions.

use std::fmt;

/// Why a reconcile could not produce a plan, or why a produced plan is incomplete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The Service has no `metadata.name`; nothing can be named or labelled after it.
    #[error("service has no metadata.name")]
    MissingServiceName,
    /// The Service has no `metadata.namespace`.
    #[error("service {name} has no metadata.namespace")]
    MissingServiceNamespace {
        /// The Service name.
        name: String,
    },
    /// The Service has no `metadata.uid`, so slices cannot be owner-referenced to it.
    #[error("service {namespace}/{name} has no metadata.uid")]
    MissingServiceUid {
        /// The Service namespace.
        namespace: String,
        /// The Service name.
        name: String,
    },
    /// The controller configuration is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Some pods were left out because their Node is not (yet) in the cache. The plan that
    /// carried this is still correct for the other pods and should be applied; the Service
    /// must then be retried with backoff (upstream does the same since v1.25).
    #[error("{}", display_skipped(.0))]
    PodsSkipped(Vec<SkippedPod>),
}

/// A pod left out of the desired state because its Node was not found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedPod {
    /// `namespace/name` of the Service.
    pub service: String,
    /// Pod name.
    pub pod: String,
    /// The `spec.nodeName` that could not be found (may be empty).
    pub node: String,
}

impl fmt::Display for SkippedPod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "skipping Pod {} for Service {}: Node {} Not Found",
            self.pod, self.service, self.node
        )
    }
}

/// As upstream's aggregated error reads (it is the text of the Warning Event): one error
/// alone, several bracketed and comma-separated, a repeated message once.
fn display_skipped(skipped: &[SkippedPod]) -> String {
    let mut seen = std::collections::HashSet::new();
    let messages: Vec<String> = skipped
        .iter()
        .map(ToString::to_string)
        .filter(|m| seen.insert(m.clone()))
        .collect();
    match messages.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}
