//! Review dispatch: a body in, an answer out, whatever the body holds.
//!
//! [`Handlers`] holds what judges reviews: the [`Validator`] behind `/validate`, and an optional
//! [`Mutate`] implementation behind `/mutate` (clusterIP/nodePort allocation plugs in there; without
//! one, `/mutate` admits everything unchanged). [`Handlers::answer`] is the whole request path
//! short of HTTP: decode, judge, encode, count, log. It never panics on input and always returns
//! either HTTP 200 with an AdmissionReview echoing the request's uid, or HTTP 400 with a plain-text
//! reason for a body that is not an AdmissionReview at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tracing::Instrument;

use crate::metrics::{Metrics, Observation};
use crate::review::{self, AdmissionRequest, Decoded, Verdict};
use crate::status;
use crate::validate::Validator;

/// The mutating side of the webhook (Service clusterIP/nodePort allocation).
///
/// Implementations must not change any state for a review with `dry_run` set, must answer the
/// same thing for a dry run as for the real request, and should honour the time budget: the
/// future is dropped when it runs out, and the review is then refused with a 500.
pub trait Mutate: Send + Sync {
    /// Judges one review; an admission may carry a JSON Patch ([`Verdict::with_patch`]).
    fn mutate<'a>(&'a self, request: &'a AdmissionRequest) -> BoxFuture<'a, Verdict>;

    /// Whether the mutator can answer yet (e.g. its allocation state is loaded); reported by
    /// `/readyz`. Must be cheap.
    fn ready(&self) -> bool {
        true
    }
}

/// Which endpoint a review came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate`: never returns a patch.
    Validate,
    /// `/mutate`.
    Mutate,
}

impl Endpoint {
    /// `validate` / `mutate`: the path without its slash, and the metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
        }
    }
}

/// The handlers behind the webhook's endpoints.
#[derive(Clone, Default)]
pub struct Handlers {
    validator: Validator,
    mutator: Option<Arc<dyn Mutate>>,
}

impl std::fmt::Debug for Handlers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("validator", &self.validator)
            .field("mutator", &self.mutator.is_some())
            .finish()
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// 200, or 400 for a body that is not an AdmissionReview.
    pub http_status: u16,
    /// `application/json` or `text/plain; charset=utf-8`.
    pub content_type: &'static str,
    /// The AdmissionReview, or the reason.
    pub body: Vec<u8>,
}

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

impl Handlers {
    /// Handlers with this validator and no mutator.
    pub fn new(validator: Validator) -> Self {
        Handlers {
            validator,
            mutator: None,
        }
    }

    /// The same handlers with a mutator behind `/mutate`.
    pub fn with_mutator(mut self, mutator: Arc<dyn Mutate>) -> Self {
        self.mutator = Some(mutator);
        self
    }

    /// The validator behind `/validate`.
    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    /// Whether every handler can answer (the mutator's [`Mutate::ready`]).
    pub fn ready(&self) -> bool {
        self.mutator.as_ref().is_none_or(|m| m.ready())
    }

    /// Judges one decoded review.
    pub async fn judge(
        &self,
        endpoint: Endpoint,
        request: &AdmissionRequest<'_>,
        budget: Duration,
    ) -> Verdict {
        match (endpoint, &self.mutator) {
            (Endpoint::Validate, _) => self.validator.validate(request),
            (Endpoint::Mutate, None) => Verdict::allow(),
            (Endpoint::Mutate, Some(m)) => match tokio::time::timeout(budget, m.mutate(request)).await {
                Ok(verdict) => verdict,
                Err(_) => Verdict::deny(status::internal(format!(
                    "the portico webhook did not decide within {budget:?}"
                ))),
            },
        }
    }

    /// Answers one request body received on `endpoint`; `budget` bounds an asynchronous handler
    /// (see [`budget_from_query`]). Counts the review in `metrics` when given.
    pub async fn answer(
        &self,
        endpoint: Endpoint,
        body: &[u8],
        budget: Duration,
        metrics: Option<&Metrics>,
    ) -> Answer {
        let start = Instant::now();
        let _in_flight = metrics.map(Metrics::in_flight);
        let decoded = match review::decode(body) {
            Ok(d) => d,
            Err(rejection) => {
                tracing::debug!(webhook = endpoint.name(), %rejection, "refused a body that is not an AdmissionReview");
                if let Some(m) = metrics {
                    let o = Observation {
                        webhook: endpoint.name(),
                        operation: "unknown",
                        kind: "unknown",
                        result: "malformed",
                        dry_run: false,
                    };
                    m.observe(o, start.elapsed(), 0);
                }
                return Answer {
                    http_status: 400,
                    content_type: TEXT,
                    body: format!("{rejection}\n").into_bytes(),
                };
            }
        };
        let (uid, verdict, operation, kind, dry_run) = match decoded {
            Decoded::Unreadable { uid, message } => {
                tracing::info!(webhook = endpoint.name(), %uid, %message, "refused an unreadable review");
                let verdict = Verdict::deny(status::bad_request(message));
                (uid, verdict, "unknown", String::from("unknown"), false)
            }
            Decoded::Request(req) => {
                let span = tracing::info_span!(
                    "admission",
                    webhook = endpoint.name(),
                    uid = %req.uid,
                    kind = %req.kind.kind,
                    operation = req.operation_name(),
                    namespace = req.namespace.as_deref().unwrap_or_default(),
                    name = %req.name,
                    dry_run = req.dry_run,
                );
                let verdict = self.judge(endpoint, &req, budget).instrument(span.clone()).await;
                span.in_scope(|| log_verdict(&verdict, start.elapsed()));
                let AdmissionRequest {
                    uid,
                    kind,
                    operation,
                    dry_run,
                    ..
                } = *req;
                (
                    uid,
                    verdict,
                    review::operation_name(&operation),
                    kind.kind,
                    dry_run,
                )
            }
        };
        let body = review::encode(&uid, &verdict, endpoint == Endpoint::Mutate);
        if let Some(m) = metrics {
            let o = Observation {
                webhook: endpoint.name(),
                operation,
                kind: &kind,
                result: verdict.result(),
                dry_run,
            };
            m.observe(o, start.elapsed(), verdict.warnings.len());
        }
        Answer {
            http_status: 200,
            content_type: JSON,
            body,
        }
    }
}

fn log_verdict(verdict: &Verdict, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    match (&verdict.status, verdict.allowed) {
        (Some(s), false) => {
            tracing::info!(result = verdict.result(), code = s.code, message = %s.message, elapsed_us = micros, "refused");
        }
        _ => tracing::debug!(
            result = verdict.result(),
            warnings = verdict.warnings.len(),
            elapsed_us = micros,
            "answered"
        ),
    }
}

/// The longest a handler may take: 90% of the apiserver's `?timeout=<n>s` (it gives up at `n`
/// seconds), at most `max`; `max` when the query has no usable timeout.
pub fn budget_from_query(query: Option<&str>, max: Duration) -> Duration {
    let Some(query) = query else { return max };
    let parsed = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("timeout="))
        .find_map(parse_go_seconds);
    match parsed {
        Some(t) => (t.mul_f64(0.9)).min(max),
        None => max,
    }
}

/// `10s`, `2.5s`, `500ms` (the apiserver sends whole seconds).
fn parse_go_seconds(s: &str) -> Option<Duration> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else {
        return None;
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v > 0.0 && v < 3600.0).then(|| Duration::from_secs_f64(v * scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_follows_the_apiserver_timeout() {
        let max = Duration::from_secs(30);
        assert_eq!(budget_from_query(None, max), max);
        assert_eq!(
            budget_from_query(Some("timeout=10s"), max),
            Duration::from_secs(9)
        );
        assert_eq!(
            budget_from_query(Some("a=b&timeout=500ms"), max),
            Duration::from_millis(450)
        );
        assert_eq!(budget_from_query(Some("timeout=100s"), max), max);
        assert_eq!(budget_from_query(Some("timeout=-1s"), max), max);
        assert_eq!(budget_from_query(Some("timeout=NaNs"), max), max);
        assert_eq!(budget_from_query(Some("timeout=abc"), max), max);
    }
}
