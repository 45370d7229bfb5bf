//! Observability endpoints: `/metrics` (the process's one registry), `/healthz` (liveness: fails
//! while a loop is stuck) and `/readyz` (caches synced and webhook serving; drops at shutdown).
//! Plain HTTP, or HTTPS with the webhook's serving certificate (`--metrics-secure`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;

/// Readiness as the probes see it.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Turns not-ready as soon as `shutdown` is cancelled, so the endpoints drop the pod while
    /// it drains (the server itself keeps answering until everything has stopped).
    pub fn drop_on(&self, shutdown: CancellationToken) {
        let ready = self.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            ready.set(false);
        });
    }
}

/// A liveness check: what is stuck, one line each (empty: alive).
pub type Check = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Liveness as the probes see it: the checks of whatever runs in the process.
#[derive(Clone, Default)]
pub struct Liveness(Arc<Mutex<Vec<Check>>>);

impl Liveness {
    pub fn add(&self, check: Check) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(check);
    }

    fn stuck(&self) -> Vec<String> {
        let checks = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        checks.iter().flat_map(|c| c()).collect()
    }
}

#[derive(Clone)]
struct AppState {
    registry: prometheus::Registry,
    ready: Readiness,
    live: Liveness,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&s.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    if s.ready.get() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    let stuck = s.live.stuck();
    if stuck.is_empty() {
        (StatusCode::OK, "ok".to_owned())
    } else {
        for line in &stuck {
            tracing::error!("liveness: {line}");
        }
        (StatusCode::INTERNAL_SERVER_ERROR, stuck.join("\n") + "\n")
    }
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

/// Where the endpoints listen, and over what.
pub struct Listen {
    pub addr: SocketAddr,
    /// HTTPS with this certificate and key (PEM files, reloaded when they change).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Binds and serves until `shutdown`; returns the bound address and the server task.
pub async fn serve(
    listen: Listen,
    registry: prometheus::Registry,
    ready: Readiness,
    live: Liveness,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let app = router(AppState {
        registry,
        ready,
        live,
    });
    let addr = listen.addr;
    if let Some((cert, key)) = listen.tls {
        let config = portico_webhook::WebhookConfig::new(addr, cert, key);
        let server = portico_webhook::Server::bind_router(config, app)
            .await
            .map_err(|e| anyhow::anyhow!("--metrics-bind-address {addr} (HTTPS): {e}"))?;
        let bound = server.local_addr();
        let task = tokio::spawn(async move { Ok(server.run(shutdown.cancelled_owned()).await?) });
        return Ok((bound, task));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-bind-address {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await?;
        Ok(())
    });
    Ok((bound, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let code = out[9..12].parse().unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (code, body)
    }

    /// `--metrics-secure`: the same endpoints over TLS with the webhook's certificate, and no
    /// plain HTTP.
    #[tokio::test]
    async fn metrics_over_https_with_the_webhook_certificate() {
        use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let certs = portico_webhook::write_dev_certs(dir.path(), &["127.0.0.1"]).unwrap();
        let registry = prometheus::Registry::new();
        let counter = prometheus::IntCounter::new("portico_test_total", "a test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc();
        let stop = CancellationToken::new();
        let listen = Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: Some((certs.cert_file.clone(), certs.key_file.clone())),
        };
        let ready = Readiness::default();
        ready.set(true);
        let (addr, task) = serve(listen, registry, ready, Liveness::default(), stop.clone())
            .await
            .unwrap();

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(certs.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(portico_webhook::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        for (path, want) in [
            ("/metrics", "portico_test_total 1"),
            ("/readyz", "ok"),
            ("/healthz", "ok"),
        ] {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("127.0.0.1").unwrap();
            let mut s = tls
                .connect(name, tcp)
                .await
                .expect("TLS handshake with the webhook CA");
            let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            let out = String::from_utf8_lossy(&out);
            assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
            assert!(out.contains(want), "{path}: {out}");
        }
        // Plain HTTP gets no answer.
        let (code, _) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out).await;
            (String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"), ())
        })
        .await
        .unwrap();
        assert!(!code, "plain HTTP must not be served");
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn healthz_fails_while_a_check_reports_and_readyz_drops_at_shutdown() {
        let (ready, live) = (Readiness::default(), Liveness::default());
        let (shutdown, stop_server) = (CancellationToken::new(), CancellationToken::new());
        let listen = Listen {
            addr: "127.0.0.1:0".parse().unwrap(),
            tls: None,
        };
        let (addr, task) = serve(
            listen,
            prometheus::Registry::new(),
            ready.clone(),
            live.clone(),
            stop_server.clone(),
        )
        .await
        .unwrap();
        ready.set(true);
        ready.drop_on(shutdown.clone());
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert_eq!(get(addr, "/readyz").await.0, 200);

        let wedged = Arc::new(AtomicBool::new(false));
        let w = wedged.clone();
        live.add(Arc::new(move || {
            if w.load(Ordering::Relaxed) {
                vec!["the watch dispatcher has not run for 61s".into()]
            } else {
                Vec::new()
            }
        }));
        assert_eq!(get(addr, "/healthz").await.0, 200);
        wedged.store(true, Ordering::Relaxed);
        let (code, body) = get(addr, "/healthz").await;
        assert_eq!(
            (code, body.as_str()),
            (500, "the watch dispatcher has not run for 61s\n")
        );
        wedged.store(false, Ordering::Relaxed);
        assert_eq!(get(addr, "/healthz").await.0, 200);

        // SIGTERM: not ready at once, while the server still answers (the drain).
        shutdown.cancel();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert_eq!(get(addr, "/readyz").await.0, 503);
        assert_eq!(get(addr, "/healthz").await.0, 200);
        stop_server.cancel();
        task.await.unwrap().unwrap();
    }
}
