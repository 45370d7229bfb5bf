//! The webhook's request path, end to end short of the apiserver: AdmissionReview fixtures through
//! the axum router (no TLS), hostile bodies through the decoder (proptest), and the real HTTPS
//! server (certificate reload, shutdown).

mod fixtures;
mod limits;
mod props;
mod router;
mod tls;
