//! The crate's error type: everything that can go wrong *around* admission (binding, TLS material,
//! metrics registration, talking to the apiserver). Nothing a request carries is an [`Error`]: a
//! bad request is answered, never propagated.

use std::path::PathBuf;

/// What can fail while setting the webhook up or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    File {
        /// `cannot read` / `cannot write` / ...
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The serving certificate or key is unusable.
    #[error("invalid TLS material ({cert} / {key}): {reason}")]
    Tls {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// What is wrong with them.
        reason: String,
    },
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The metrics could not be registered (e.g. registered twice in one registry).
    #[error("cannot register the webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// A request to the Kubernetes API failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A configuration value is out of range.
    #[error("invalid webhook configuration: {0}")]
    Config(String),
    /// The server's accept loop failed.
    #[error("webhook server: {0}")]
    Serve(#[source] std::io::Error),
}
