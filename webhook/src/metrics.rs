//! Prometheus metrics of the webhook, registered in the caller's registry (one per process).
//!
//! | name | type | labels |
//! |---|---|---|
//! | `portico_webhook_requests_total` | counter | `webhook`, `operation`, `kind`, `result`, `dry_run` |
//! | `portico_webhook_request_duration_seconds` | histogram | `webhook`, `operation`, `kind`, `result` |
//! | `portico_webhook_requests_in_flight` | gauge | |
//! | `portico_webhook_warnings_total` | counter | `webhook`, `kind` |
//! | `portico_webhook_tls_reloads_total` | counter | `file`, `result` (`success`, `failure`) |
//!
//! `webhook` is the endpoint (`validate`, `mutate`); `result` is `allowed`, `denied`, `error` (a
//! review answered with 400/5xx) or `malformed` (a body that is not an AdmissionReview, HTTP 400).
//! `kind` and `operation` are clamped to the values Portico knows (anything else is `other`, a body
//! without them `unknown`), so a hostile client cannot blow up the label cardinality. No label
//! carries an object's name or namespace. Latency buckets start at 100 µs: a validation review is
//! expected to take well under a millisecond, and they end at 10 s, beyond any `timeoutSeconds`.
//! A reload is counted when a followed file's content changed: `success` when it was taken,
//! `failure` when it was unusable and the previous one was kept (the client CA and token also
//! count a file turning unreadable); `file` is `serving_certificate`, `client_ca` or
//! `client_token`.

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::validation::WorkloadKind;

const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// The webhook's metrics (cheap to clone: handles into the registry).
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGauge,
    warnings: IntCounterVec,
    tls_reloads: IntCounterVec,
    /// Without labels, and without a sample until a certificate is loaded: a webhook serving
    /// plain HTTP (tests) exports no expiry rather than a 0 that reads as long expired.
    cert_expiry: IntGaugeVec,
}

/// The labels of one answered review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    /// `validate` or `mutate`.
    pub webhook: &'a str,
    /// `request.operation` (clamped).
    pub operation: &'a str,
    /// `request.kind.kind` (clamped).
    pub kind: &'a str,
    /// `allowed`, `denied`, `error` or `malformed`.
    pub result: &'a str,
    /// `request.dryRun`.
    pub dry_run: bool,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`. Fails if they are already registered
    /// there (one webhook server per registry).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "portico_webhook_requests_total",
                "Admission reviews answered by the webhook.",
            ),
            &["webhook", "operation", "kind", "result", "dry_run"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_webhook_request_duration_seconds",
                "Time from a review's body being received to its answer being ready.",
            )
            .buckets(BUCKETS.to_vec()),
            &["webhook", "operation", "kind", "result"],
        )?;
        let in_flight = IntGauge::new(
            "portico_webhook_requests_in_flight",
            "Admission reviews being processed.",
        )?;
        let warnings = IntCounterVec::new(
            Opts::new(
                "portico_webhook_warnings_total",
                "Warnings returned with admission reviews.",
            ),
            &["webhook", "kind"],
        )?;
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "portico_webhook_tls_reloads_total",
                "Reloads of the serving certificate, client CA and client token after their files \
                 changed, by file and outcome.",
            ),
            &["file", "result"],
        )?;
        let cert_expiry = IntGaugeVec::new(
            Opts::new(
                "portico_webhook_certificate_expiration_timestamp_seconds",
                "Expiry (notAfter, Unix seconds) of the serving certificate being presented.",
            ),
            &[],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(cert_expiry.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(warnings.clone()))?;
        registry.register(Box::new(tls_reloads.clone()))?;
        Ok(Metrics {
            requests,
            duration,
            in_flight,
            warnings,
            tls_reloads,
            cert_expiry,
        })
    }

    /// Records one answered review.
    pub fn observe(&self, o: Observation<'_>, elapsed: Duration, warnings: usize) {
        let (operation, kind) = (clamp_operation(o.operation), clamp_kind(o.kind));
        let dry_run = if o.dry_run { "true" } else { "false" };
        self.requests
            .with_label_values(&[o.webhook, operation, kind, o.result, dry_run])
            .inc();
        self.duration
            .with_label_values(&[o.webhook, operation, kind, o.result])
            .observe(elapsed.as_secs_f64());
        if warnings > 0 {
            self.warnings
                .with_label_values(&[o.webhook, kind])
                .inc_by(warnings as u64);
        }
    }

    /// A guard counting one review in flight until dropped.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records the notAfter of the certificate now being served.
    pub fn serving_cert_expiry(&self, not_after_unix: i64) {
        self.cert_expiry
            .with_label_values::<&str>(&[])
            .set(not_after_unix);
    }

    /// Records a serving certificate reload attempt.
    pub fn tls_reload(&self, ok: bool) {
        self.file_reload(ReloadedFile::ServingCertificate, ok);
    }

    /// Records a reload attempt of `file` after its content changed.
    pub fn file_reload(&self, file: ReloadedFile, ok: bool) {
        self.tls_reloads
            .with_label_values(&[file.label(), if ok { "success" } else { "failure" }])
            .inc();
    }
}

/// A file the webhook follows: the `file` label of `portico_webhook_tls_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadedFile {
    /// The serving certificate and its key (`serving_certificate`).
    ServingCertificate,
    /// The CA client certificates are verified against (`client_ca`).
    ClientCa,
    /// The bearer token reviews must carry (`client_token`).
    ClientToken,
}

impl ReloadedFile {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReloadedFile::ServingCertificate => "serving_certificate",
            ReloadedFile::ClientCa => "client_ca",
            ReloadedFile::ClientToken => "client_token",
        }
    }
}

/// Decrements the in-flight gauge when dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn clamp_operation(op: &str) -> &str {
    match op {
        "CREATE" | "UPDATE" | "DELETE" | "CONNECT" | "unknown" => op,
        _ => "other",
    }
}

fn clamp_kind(kind: &str) -> &str {
    if kind == "Service" || kind == "unknown" || WorkloadKind::from_kind(kind).is_some() {
        kind
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;

    use super::*;

    #[test]
    fn labels_are_clamped_and_everything_is_exported() {
        let registry = Registry::new();
        let m = Metrics::register(&registry).unwrap();
        let o = Observation {
            webhook: "validate",
            operation: "CREATE",
            kind: "Pod",
            result: "denied",
            dry_run: false,
        };
        m.observe(o, Duration::from_micros(300), 0);
        m.observe(
            Observation {
                kind: "Whatever-1234",
                operation: "PATCH",
                ..o
            },
            Duration::from_micros(300),
            2,
        );
        drop(m.in_flight());
        m.tls_reload(true);
        m.file_reload(ReloadedFile::ClientCa, false);
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(
            r#"portico_webhook_requests_total{dry_run="false",kind="Pod",operation="CREATE",result="denied",webhook="validate"} 1"#
        ), "{text}");
        assert!(text.contains(r#"kind="other",operation="other""#), "{text}");
        assert!(text.contains(r#"portico_webhook_warnings_total{kind="other",webhook="validate"} 2"#));
        assert!(
            !text.contains("portico_webhook_certificate_expiration_timestamp_seconds"),
            "no expiry before a certificate is loaded: {text}"
        );
        assert!(text.contains("portico_webhook_request_duration_seconds_bucket"));
        assert!(text.contains("portico_webhook_requests_in_flight 0"));
        assert!(
            text.contains(
                r#"portico_webhook_tls_reloads_total{file="serving_certificate",result="success"} 1"#
            )
        );
        assert!(text.contains(r#"portico_webhook_tls_reloads_total{file="client_ca",result="failure"} 1"#));
        assert!(
            Metrics::register(&registry).is_err(),
            "a second registration is refused"
        );
    }
}
