//! Admission webhook: port validation, and the admission side of clusterIP/nodePort allocation.
//!
//! [`validation`] holds the pure rules. Around them:
//! * [`server`]: the HTTPS server (axum + hyper + rustls): `/validate`, `/mutate`, `/healthz`,
//!   `/readyz`, `/metrics`, graceful shutdown;
//! * [`tls`]: the serving certificate and client CA, reloaded when their files change (Secret
//!   symlink swaps too);
//! * [`review`]: the AdmissionReview v1 envelope, decoded leniently, answered with the uid echoed;
//! * [`admission`]: dispatch of a review to the [`Validator`] or a [`Mutate`] implementation;
//! * [`allocation_adapter`]: `/mutate` for Services through `portico-allocation`'s
//!   `ServiceAllocator`;
//! * [`validate`]: the validating policy (which reviews are judged, ratcheting on UPDATE, the
//!   `targetPort` warning);
//! * [`status`]: refusals shaped like the apiserver's own (`422 Invalid` with causes);
//! * [`metrics`]: Prometheus metrics in the caller's registry;
//! * [`register`]: the ValidatingWebhookConfiguration, applied with the CA as `caBundle`;
//! * [`bootstrap`]: self-managed certificates in a Secret shared by the replicas, written out
//!   as files and registered as `caBundle` (in cluster, without cert-manager);
//! * [`ca`]: a throw-away CA and serving certificate for out-of-cluster use;
//! * [`pods`]: a pod reflector for the `targetPort` warning, for callers without one.
//! * [`service_ips`]: a cluster-wide index of Service clusterIPs for the endpoint-address rule.
//!
//! Out of cluster, wiring is: [`write_dev_certs`] → [`Server::bind`] → [`register()`] →
//! [`Server::run`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admission;
pub mod allocation_adapter;
pub mod bootstrap;
pub mod ca;
pub mod error;
pub mod metrics;
pub mod pods;
pub mod register;
pub mod review;
pub mod server;
pub mod service_ips;
pub mod status;
pub mod tls;
pub mod validate;
pub mod validation;

pub use admission::{Answer, Endpoint, Handlers, Mutate};
pub use bootstrap::{CertBootstrap, TlsMaterial, ensure_tls_secret, patch_ca_bundle};
pub use ca::{DevCa, DevCerts, write_dev_certs};
pub use error::Error;
pub use metrics::Metrics;
pub use pods::pod_store;
/// The metrics registry type [`serve`] and [`Server::bind`] take (one per process).
pub use prometheus::Registry;
pub use register::{
    FailurePolicy, Namespaces, Registration, WebhookEndpoint, register, register_mutating, unregister,
    unregister_mutating,
};
pub use review::{AdmissionRequest, Verdict};
pub use server::{Server, WebhookConfig, app, serve};
pub use service_ips::{ClusterIpIndex, service_ip_index};
pub use tls::CertStore;
pub use validate::{PodIndex, Validator};
