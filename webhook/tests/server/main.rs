//! The webhook's request path, end to end short of the apiserver: AdmissionReview fixtures through
//! the axum router (no TLS), hostile bodies through the decoder (proptest), and the real HTTPS
//! server (certificate, client CA and token reload, shutdown).

mod fixtures;
mod limits;
mod props;
mod router;
mod tls;
mod volume;
