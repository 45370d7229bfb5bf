//! The controllers' client-side rate limit, as client-go's (`--kube-api-qps`,
//! `--kube-api-burst`: kube-controller-manager's 20 and 30), and its request counter
//! `rest_client_requests_total{code,host,method}` under client-go's name.
//!
//! A token bucket in front of kube's client stack: `poll_ready` waits for a token, so a burst
//! of syncs (an apiserver outage ending, every Service retrying) reaches the apiserver at the
//! configured rate, however many workers ask. Watches take a token when they (re)connect.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use futures::future::BoxFuture;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::time::{Instant, Sleep};

use crate::queue::{Bucket, Tokens};

/// Counts requests by response code (`<error>` when none came back), host and method.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: IntCounterVec,
    host: String,
}

impl RequestMetrics {
    /// Registers `rest_client_requests_total` in `registry`; `host` is the apiserver's.
    pub fn register(registry: &Registry, host: impl Into<String>) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "rest_client_requests_total",
                "Number of HTTP requests to the apiserver, partitioned by status code, method, and host",
            ),
            &["code", "host", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        Ok(RequestMetrics {
            requests,
            host: host.into(),
        })
    }
}

/// The layer: one bucket shared by every clone of the client it is built into.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Bucket,
    tokens: Arc<Mutex<Tokens>>,
    metrics: Option<RequestMetrics>,
}

impl RateLimitLayer {
    /// `qps` requests per second on average, `burst` at once; `qps <= 0` turns the limit off
    /// (the requests are still counted).
    pub fn new(qps: f64, burst: u32, metrics: Option<RequestMetrics>) -> Self {
        let bucket = Bucket {
            qps,
            burst: burst.max(1),
        };
        RateLimitLayer {
            bucket,
            tokens: Arc::new(Mutex::new(Tokens::full(bucket))),
            metrics,
        }
    }
}

impl<S> tower::Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> RateLimited<S> {
        RateLimited {
            inner,
            layer: self.clone(),
            wait: None,
            reserved: false,
        }
    }
}

/// A service that takes a token before each request.
pub struct RateLimited<S> {
    inner: S,
    layer: RateLimitLayer,
    wait: Option<Pin<Box<Sleep>>>,
    /// A token is taken for the next `call`.
    reserved: bool,
}

impl<S, B, RB> tower::Service<http::Request<B>> for RateLimited<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.reserved {
            self.reserved = true;
            if self.layer.bucket.qps > 0.0 {
                let delay = self
                    .layer
                    .tokens
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .reserve(self.layer.bucket, Instant::now());
                if !delay.is_zero() {
                    self.wait = Some(Box::pin(tokio::time::sleep(delay)));
                }
            }
        }
        if let Some(wait) = self.wait.as_mut() {
            ready!(wait.as_mut().poll(cx));
            self.wait = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        self.reserved = false;
        let method = req.method().as_str().to_owned();
        let metrics = self.layer.metrics.clone();
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await;
            if let Some(m) = metrics {
                let code = response
                    .as_ref()
                    .map_or_else(|_| "<error>".to_owned(), |r| r.status().as_u16().to_string());
                m.requests.with_label_values(&[&code, &m.host, &method]).inc();
            }
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::time::Duration;

    use tower::{Layer, Service, ServiceExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_tokens_and_are_counted() {
        let registry = Registry::new();
        let metrics = RequestMetrics::register(&registry, "apiserver:6443").unwrap();
        let layer = RateLimitLayer::new(20.0, 30, Some(metrics));
        let ok = tower::service_fn(|_req: http::Request<()>| async {
            Ok::<_, Infallible>(http::Response::builder().status(201).body(()).unwrap())
        });
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..50 {
            // Every clone shares the bucket, as kube's client clones do.
            let mut svc = layer.layer(ok);
            let req = http::Request::builder().method("POST").body(()).unwrap();
            svc.ready().await.unwrap().call(req).await.unwrap();
            at.push(start.elapsed());
        }
        assert_eq!(at[29], Duration::ZERO, "the burst goes at once");
        // The 20 after it at 20 per second: the 50th a second later.
        assert_eq!(at[49].as_millis(), 1000);
        let families = registry.gather();
        let counted = families[0].get_metric()[0].get_counter().get_value();
        assert_eq!(counted, 50.0);
        let labels: Vec<(&str, &str)> = families[0].get_metric()[0]
            .get_label()
            .iter()
            .map(|l| (l.name(), l.value()))
            .collect();
        assert_eq!(
            labels,
            [("code", "201"), ("host", "apiserver:6443"), ("method", "POST")]
        );
    }
}
