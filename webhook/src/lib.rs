//! Admission webhook: port validation and clusterIP/nodePort allocation.
//!
//! This crate holds the pure rules; the HTTP/AdmissionReview server is built on top of
//! [`validation`] and never needs to re-implement a message.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod validation;
