//! The HTTPS server: an axum router served by hyper over rustls, HTTP/1.1 with keep-alive.
//!
//! Routes: `POST /validate`, `POST /mutate` (the apiserver's `?timeout=` query is read for the
//! handler budget and otherwise ignored), `GET /healthz` (the process answers), `GET /readyz`
//! (serving certificate loaded, not shutting down, handlers ready), `GET /metrics` (the whole
//! registry, Prometheus text format). Review bodies may be up to [`WebhookConfig::max_body_bytes`]
//! (8 MiB by default: an UPDATE review carries two objects of up to 3 MiB each); larger ones get
//! 413, which the apiserver counts as a failed call.
//!
//! Client authentication ([`WebhookConfig::client_ca_file`], [`WebhookConfig::client_token_file`])
//! follows its files like the serving certificate: both are re-read every
//! [`WebhookConfig::reload_interval`], a changed usable file applies to the next handshake (CA) or
//! request (token), and a changed unusable one is logged and counted while the previous one stays.
//!
//! Shutdown: when the shutdown future completes, `/readyz` turns 503, the listener closes,
//! connections finish their in-flight request and close, and after
//! [`WebhookConfig::drain_timeout`] whatever is left is dropped.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::{Encoder, Registry};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::admission::{Endpoint, Handlers, budget_from_query};
use crate::error::Error;
use crate::metrics::{Metrics, ReloadedFile};
use crate::tls::{CertStore, ClientCa};

/// Where and how the webhook serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// Address to listen on (`0.0.0.0:8443` in a pod, `127.0.0.1:0` in tests).
    pub listen: SocketAddr,
    /// Serving certificate chain, PEM (e.g. the `tls.crt` of a mounted Secret).
    pub cert_file: PathBuf,
    /// Its private key, PEM (`tls.key`).
    pub key_file: PathBuf,
    /// How often the two files are checked for a new certificate, and the client CA and token
    /// files for new content. Default 5 s.
    pub reload_interval: Duration,
    /// Largest accepted request body. Default 8 MiB.
    pub max_body_bytes: usize,
    /// Upper bound of a handler's time budget (the apiserver's `?timeout=` lowers it). Default 25 s.
    pub max_handler_time: Duration,
    /// Time allowed for a TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// How long a connection may take to send the headers of its next request, idle time
    /// included. Longer than the apiserver's idle-connection timeout (90 s), so that the client
    /// closes idle connections first and never reuses one the server is closing. Default 120 s.
    pub keep_alive_timeout: Duration,
    /// How long shutdown waits for open connections to finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Reviews judged at once; more wait (within their time budget) for a slot, then get 503.
    /// Bounds memory: at most this many bodies are read and parsed at a time. Default 64.
    pub max_concurrent_reviews: usize,
    /// Open connections; a connection beyond is closed at once. Default 1024.
    pub max_connections: usize,
    /// Time allowed to receive a request body once its headers are in (a body trickled slowly
    /// would otherwise hold its connection and review slot). Default 10 s; 408 after.
    pub body_read_timeout: Duration,
    /// Who may call: with a CA (PEM file), a TLS client certificate it signed is required (the
    /// apiserver presents one through its admission configuration's kubeconfig). Re-read like
    /// the serving certificate: new handshakes verify against the CA set current then.
    pub client_ca_file: Option<PathBuf>,
    /// With a token (file holding it), reviews need `Authorization: Bearer <token>` (the
    /// apiserver sends one the same way); 401 otherwise. Probes and metrics stay open. Re-read
    /// like the serving certificate: a changed non-empty token replaces the previous one at once.
    pub client_token_file: Option<PathBuf>,
}

impl WebhookConfig {
    /// A configuration with the defaults above.
    pub fn new(listen: SocketAddr, cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Self {
        WebhookConfig {
            listen,
            cert_file: cert_file.into(),
            key_file: key_file.into(),
            reload_interval: Duration::from_secs(5),
            max_body_bytes: 8 << 20,
            max_handler_time: Duration::from_secs(25),
            handshake_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(120),
            drain_timeout: Duration::from_secs(10),
            max_concurrent_reviews: 64,
            max_connections: 1024,
            body_read_timeout: Duration::from_secs(10),
            client_ca_file: None,
            client_token_file: None,
        }
    }
}

/// What a review must get through before it is judged: a slot, its body in time, the token.
#[derive(Clone)]
struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    max_body_bytes: usize,
    body_read_timeout: Duration,
    token: Option<Arc<ClientToken>>,
}

impl Gate {
    fn open(max_body_bytes: usize) -> Self {
        Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(64)),
            max_body_bytes,
            body_read_timeout: Duration::from_secs(10),
            token: None,
        }
    }

    fn of(config: &WebhookConfig, metrics: &Metrics) -> Result<Self, Error> {
        let token = match &config.client_token_file {
            Some(path) => Some(Arc::new(ClientToken::load(path, metrics.clone())?)),
            None => None,
        };
        Ok(Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(config.max_concurrent_reviews.max(1))),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            token,
        })
    }

    /// Whether `headers` carry the token (compared in constant time), when one is required.
    fn authorized(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(token) = &self.token else { return true };
        let Some(got) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return false;
        };
        token.matches(got)
    }
}

/// The bearer token reviews must carry, followed by path like the serving certificate: a changed
/// non-empty token replaces the previous one at once (which then stops working); an empty or
/// unreadable file is logged and counted (`client_token` failure) and the previous token stays.
struct ClientToken {
    file: PathBuf,
    current: RwLock<Arc<[u8]>>,
    /// Hash of the content (or read error) last looked at, to notice the next change.
    seen: Mutex<u64>,
    metrics: Metrics,
}

impl ClientToken {
    /// Reads the token; fails if the file is unreadable or empty.
    fn load(file: &Path, metrics: Metrics) -> Result<Self, Error> {
        let (hash, raw) = crate::tls::read_followed(file);
        let token = Self::parse(file, &raw?)?;
        Ok(ClientToken {
            file: file.to_owned(),
            current: RwLock::new(token),
            seen: Mutex::new(hash),
            metrics,
        })
    }

    fn parse(file: &Path, raw: &[u8]) -> Result<Arc<[u8]>, Error> {
        let token = raw.trim_ascii();
        if token.is_empty() {
            return Err(Error::Config(format!(
                "the client token file {} is empty",
                file.display()
            )));
        }
        Ok(Arc::from(token))
    }

    /// Re-reads the file and switches to its token if its content changed and it is not empty.
    /// `Ok(true)`: switched; `Ok(false)`: unchanged; `Err`: changed but unusable (the previous
    /// token stays; the same content is not retried).
    fn reload(&self) -> Result<bool, Error> {
        let (hash, raw) = crate::tls::read_followed(&self.file);
        if !crate::tls::changed(&self.seen, hash) {
            return Ok(false);
        }
        let outcome = raw.and_then(|raw| Self::parse(&self.file, &raw));
        self.metrics
            .file_reload(ReloadedFile::ClientToken, outcome.is_ok());
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = outcome?;
        Ok(true)
    }

    fn reload_logged(&self) {
        crate::tls::log_reload("client token", &self.file, self.reload());
    }

    /// Whether `got` is the current token, compared in constant time.
    fn matches(&self, got: &[u8]) -> bool {
        let want = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        got.len() == want.len() && got.iter().zip(want.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

#[derive(Clone)]
struct AppState {
    handlers: Handlers,
    metrics: Metrics,
    registry: Registry,
    ready: Arc<AtomicBool>,
    max_handler_time: Duration,
    gate: Gate,
}

/// The router of the webhook, without TLS: for tests (`tower::ServiceExt::oneshot`) and for
/// callers that serve it themselves. Registers the webhook's metrics in `registry`; reports ready.
pub fn app(handlers: Handlers, registry: &Registry, max_body_bytes: usize) -> Result<Router, Error> {
    let metrics = Metrics::register(registry)?;
    Ok(router(AppState {
        handlers,
        metrics,
        registry: registry.clone(),
        ready: Arc::new(AtomicBool::new(true)),
        max_handler_time: Duration::from_secs(25),
        gate: Gate::open(max_body_bytes),
    })
    .layer(DefaultBodyLimit::max(max_body_bytes)))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(state)
}

async fn validate(
    State(st): State<AppState>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    review(st, Endpoint::Validate, uri, headers, body).await
}

async fn mutate(
    State(st): State<AppState>,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    review(st, Endpoint::Mutate, uri, headers, body).await
}

fn refuse(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

async fn review(
    st: AppState,
    endpoint: Endpoint,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Response {
    if !st.gate.authorized(&headers) {
        return refuse(StatusCode::UNAUTHORIZED, "a client token is required".into());
    }
    let budget = budget_from_query(uri.query(), st.max_handler_time);
    // One deadline for the whole review: time spent waiting for a slot or the body is taken
    // from the handler's budget, so nothing is allocated after the apiserver gave up.
    let deadline = tokio::time::Instant::now() + budget;
    // A slot first: at most that many bodies are in memory at once.
    let _slot = match tokio::time::timeout(budget, st.gate.slots.clone().acquire_owned()).await {
        Ok(Ok(slot)) => slot,
        _ => {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("too many reviews in flight: none finished within {budget:?}"),
            );
        }
    };
    let limited = http_body_util::Limited::new(body, st.gate.max_body_bytes);
    let read_until = deadline.min(tokio::time::Instant::now() + st.gate.body_read_timeout);
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0)
        .min(st.gate.max_body_bytes);
    let body = match tokio::time::timeout_at(read_until, read_body(limited, announced)).await {
        Ok(Ok(body)) => body,
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the review is larger than {} bytes", st.gate.max_body_bytes),
            );
        }
        Ok(Err(e)) => return refuse(StatusCode::BAD_REQUEST, format!("cannot read the review: {e}")),
        Err(_) => {
            return refuse(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the review's body did not arrive within {:?}",
                    st.gate.body_read_timeout
                ),
            );
        }
    };
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no time left of the review's {budget:?} to judge it"),
        );
    }
    let answer = st.handlers.answer(endpoint, &body, left, Some(&st.metrics)).await;
    let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, answer.content_type)], answer.body).into_response()
}

/// Reads a whole body into one buffer of `capacity` bytes (the announced length, already
/// capped at the body limit): each frame is copied as it comes and dropped, so that hyper
/// reuses its read buffer, and an 8 MB review costs one 8 MB buffer rather than 8 MB of frames
/// and then a copy of them all. The buffer is taken when the first bytes arrive, so a client
/// that announces a length and sends nothing holds no memory.
async fn read_body(
    mut body: http_body_util::Limited<Body>,
    capacity: usize,
) -> Result<Vec<u8>, axum::BoxError> {
    let mut out = Vec::new();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Ok(data) = frame?.into_data() {
            if data.is_empty() {
                continue;
            }
            if out.capacity() == 0 {
                out.reserve(capacity.max(data.len()));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(st): State<AppState>) -> (StatusCode, &'static str) {
    if !st.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n")
    } else if !st.handlers.ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: handlers are starting\n",
        )
    } else {
        (StatusCode::OK, "ok\n")
    }
}

async fn metrics(State(st): State<AppState>) -> Response {
    let encoder = prometheus::TextEncoder::new();
    let mut out = Vec::new();
    match encoder.encode(&st.registry.gather(), &mut out) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_owned())], out).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn not_found(uri: Uri) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {}; try /validate, /mutate, /healthz, /readyz or /metrics\n",
            uri.path()
        ),
    )
}

/// A bound, not yet running, webhook server.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: WebhookConfig,
    certs: Arc<CertStore>,
    client_ca: Option<Arc<ClientCa>>,
    token: Option<Arc<ClientToken>>,
    acceptor: TlsAcceptor,
    router: Router,
    ready: Arc<AtomicBool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Loads the serving certificate (and the client CA and token, when configured), registers
    /// the metrics in `registry` and binds the listener. Fails on unusable certificate, CA or
    /// token files, a metrics registry that already has them, or an address that cannot be bound.
    pub async fn bind(config: WebhookConfig, handlers: Handlers, registry: &Registry) -> Result<Self, Error> {
        let metrics = Metrics::register(registry)?;
        let certs = CertStore::load(&config.cert_file, &config.key_file)?.with_metrics(metrics.clone());
        let ready = Arc::new(AtomicBool::new(false));
        let gate = Gate::of(&config, &metrics)?;
        let token = gate.token.clone();
        let router = router(AppState {
            handlers,
            metrics,
            registry: registry.clone(),
            ready: ready.clone(),
            max_handler_time: config.max_handler_time,
            gate,
        })
        .layer(DefaultBodyLimit::max(config.max_body_bytes));
        Self::bind_with(config, router, certs, token, ready).await
    }

    /// Serves another router with the same TLS, certificate reloading, timeouts and drain
    /// (e.g. `/metrics` over HTTPS with the webhook's certificate). Registers no metrics.
    pub async fn bind_router(mut config: WebhookConfig, router: Router) -> Result<Self, Error> {
        // Probes and scrapers present no client certificate.
        config.client_ca_file = None;
        let certs = CertStore::load(&config.cert_file, &config.key_file)?;
        let router = router.layer(DefaultBodyLimit::max(config.max_body_bytes));
        Self::bind_with(config, router, certs, None, Arc::new(AtomicBool::new(false))).await
    }

    async fn bind_with(
        config: WebhookConfig,
        router: Router,
        certs: Arc<CertStore>,
        token: Option<Arc<ClientToken>>,
        ready: Arc<AtomicBool>,
    ) -> Result<Self, Error> {
        let client_ca = match &config.client_ca_file {
            Some(file) => Some(certs.client_ca(file)?),
            None => None,
        };
        let acceptor = TlsAcceptor::from(certs.server_config(client_ca.clone())?);
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(Error::Serve)?;
        Ok(Server {
            listener,
            local_addr,
            config,
            certs,
            client_ca,
            token,
            acceptor,
            router,
            ready,
        })
    }

    /// The address actually bound (the port chosen for `:0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The serving certificate store (for [`CertStore::reload`] on demand).
    pub fn cert_store(&self) -> Arc<CertStore> {
        self.certs.clone()
    }

    /// Serves until `shutdown` completes, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), Error> {
        let Server {
            listener,
            local_addr,
            config,
            certs,
            client_ca,
            token,
            acceptor,
            router,
            ready,
        } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // One task follows the serving certificate, the client CA and the token.
        let mut reloader = tokio::spawn(crate::tls::every(
            config.reload_interval,
            {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
            },
            move || {
                certs.reload_logged();
                if let Some(ca) = &client_ca {
                    ca.reload_logged();
                }
                if let Some(token) = &token {
                    token.reload_logged();
                }
            },
        ));
        let service = TowerToHyperService::new(router);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.keep_alive_timeout)
            .keep_alive(true);
        let graceful = GracefulShutdown::new();
        let mut connections = JoinSet::new();
        let open = Arc::new(tokio::sync::Semaphore::new(config.max_connections.max(1)));
        let mut shutdown = std::pin::pin!(shutdown);
        ready.store(true, Ordering::Relaxed);
        tracing::info!(addr = %local_addr, "webhook serving");

        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                tracing::debug!(%peer, max = config.max_connections, "too many open connections; closing");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let watcher = graceful.watcher();
            let acceptor = acceptor.clone();
            let service = service.clone();
            let http = http.clone();
            let mut stop = stop_rx.clone();
            let handshake_timeout = config.handshake_timeout;
            connections.spawn(async move {
                let _permit = permit;
                let tls = tokio::select! {
                    r = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)) => r,
                    _ = stop.wait_for(|stop| *stop) => return,
                };
                let tls = match tls {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = http.serve_connection(TokioIo::new(tls), service);
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }

        ready.store(false, Ordering::Relaxed);
        drop(listener);
        let _ = stop_tx.send(true);
        tracing::info!(
            open = connections.len(),
            "webhook shutting down; draining connections"
        );
        let drained = tokio::time::timeout(config.drain_timeout, async {
            graceful.shutdown().await;
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                left = connections.len(),
                "drain timed out; dropping the remaining connections"
            );
            connections.abort_all();
        }
        if tokio::time::timeout(Duration::from_secs(1), &mut reloader)
            .await
            .is_err()
        {
            reloader.abort();
        }
        tracing::info!("webhook stopped");
        Ok(())
    }
}

/// Binds and runs a webhook server until `shutdown` completes (see [`Server`]).
pub async fn serve(
    config: WebhookConfig,
    handlers: Handlers,
    registry: &Registry,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    Server::bind(config, handlers, registry)
        .await?
        .run(shutdown)
        .await
}
