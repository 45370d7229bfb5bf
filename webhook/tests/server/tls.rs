//! The real HTTPS server: certificate reload through a Secret-volume style symlink swap, HTTP/1.1
//! only, keep-alive, readiness and graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use portico_webhook::validation::Options;
use portico_webhook::{DevCa, Handlers, Server, Validator, WebhookConfig};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::fixtures::{pod, review};

/// Writes `cert`/`key` the way the kubelet publishes a Secret (`tls.crt`/`tls.key` through
/// `..data`), so that swapping `..data` atomically replaces both.
fn publish(dir: &Path, generation: &str, cert: &str, key: &str) {
    crate::volume::publish(dir, generation, &[("tls.crt", cert), ("tls.key", key)]);
}

fn connector(cas: &[&str]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
            .unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(portico_webhook::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(tls: &TlsConnector, addr: std::net::SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tls.connect(name, tcp).await.expect("TLS handshake")
}

fn served_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

pub(crate) type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

pub(crate) async fn http(stream: TlsStream<TcpStream>) -> Sender {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

pub(crate) async fn request(sender: &mut Sender, method: &str, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    sender.ready().await.unwrap();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

#[tokio::test]
async fn serves_reviews_over_tls_and_reloads_a_swapped_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (ca1, ca2) = (DevCa::new("ca-1").unwrap(), DevCa::new("ca-2").unwrap());
    let (cert1, key1) = ca1.issue_serving(&["127.0.0.1"]).unwrap();
    publish(dir.path(), "..2026_01_01", &cert1, &key1);

    let mut config = WebhookConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    config.reload_interval = Duration::from_millis(100);
    let registry = prometheus::Registry::new();
    let server = Server::bind(
        config,
        Handlers::new(Validator::new(Options::default())),
        &registry,
    )
    .await
    .unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stop_rx.await;
    }));

    let tls = connector(&[ca1.pem(), ca2.pem()]);
    let first = connect(&tls, addr).await;
    assert_eq!(
        first.get_ref().1.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "HTTP/1.1 only"
    );
    assert_eq!(
        served_cert(&first),
        CertificateDer::from_pem_slice(cert1.as_bytes()).unwrap()
    );
    let mut kept = http(first).await;
    let bad = pod("web-0", &[("http", 8080)], json!("metrics"));
    let body = serde_json::to_vec(&review("t1", "", "Pod", "CREATE", bad, Value::Null)).unwrap();
    let (status, out) = request(&mut kept, "POST", "/validate?timeout=10s", body.clone()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["response"]["uid"], "t1");
    assert_eq!(v["response"]["status"]["code"], 422);
    assert_eq!(request(&mut kept, "GET", "/readyz", vec![]).await.0, 200);

    // Rotate: a new key and certificate from another CA, published by swapping `..data`.
    let (cert2, key2) = ca2.issue_serving(&["127.0.0.1"]).unwrap();
    let want = CertificateDer::from_pem_slice(cert2.as_bytes()).unwrap();
    publish(dir.path(), "..2026_01_02", &cert2, &key2);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = connect(&tls, addr).await;
        if served_cert(&s) == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A connection that only trusts the new CA works; the established one carries on.
    let mut fresh = http(connect(&connector(&[ca2.pem()]), addr).await).await;
    assert_eq!(
        request(&mut fresh, "POST", "/validate", body.clone()).await.0,
        200
    );
    assert_eq!(request(&mut kept, "POST", "/validate", body).await.0, 200);
    let (_, metrics) = request(&mut fresh, "GET", "/metrics", vec![]).await;
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics
            .contains(r#"portico_webhook_tls_reloads_total{file="serving_certificate",result="success"} 1"#),
        "{metrics}"
    );

    // A broken update (garbage key) is refused; the good pair keeps serving.
    publish(dir.path(), "..2026_01_03", &cert2, "garbage");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(served_cert(&connect(&tls, addr).await), want);

    // Shutdown: the server stops accepting and returns promptly, idle keep-alives included.
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("shutdown within 5s")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}

#[tokio::test]
async fn bind_fails_clearly_on_bad_material() {
    let dir = tempfile::tempdir().unwrap();
    let config = WebhookConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    let err = Server::bind(config, Handlers::default(), &prometheus::Registry::new())
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("cannot read "), "{err}");
}
