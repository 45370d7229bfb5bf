//! What keeps the real HTTPS server serving under hostile or broken clients: a body-read
//! timeout, a cap on reviews in flight and on open connections, and client authentication (a
//! TLS client certificate or a bearer token, as the apiserver presents to webhooks), whose CA and
//! token files are followed through rotations like the serving certificate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use portico_webhook::validation::Options;
use portico_webhook::{AdmissionRequest, DevCa, Handlers, Mutate, Server, Validator, Verdict, WebhookConfig};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::fixtures::review;
use crate::volume::publish;

/// A mutator that takes its time: holds a review slot.
struct Slow(Duration);

impl Mutate for Slow {
    fn mutate<'a>(&'a self, _request: &'a AdmissionRequest) -> BoxFuture<'a, Verdict> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            Verdict::allow()
        })
    }
}

struct Running {
    addr: std::net::SocketAddr,
    ca: String,
    dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn start(tune: impl FnOnce(&mut WebhookConfig, &std::path::Path)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::new("serving-ca").unwrap();
    let (cert, key) = ca.issue_serving(&["127.0.0.1"]).unwrap();
    std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
    std::fs::write(dir.path().join("tls.key"), key).unwrap();
    let mut config = WebhookConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("tls.crt"),
        dir.path().join("tls.key"),
    );
    tune(&mut config, dir.path());
    let handlers = Handlers::new(Validator::new(Options::default()))
        .with_mutator(Arc::new(Slow(Duration::from_millis(1500))));
    let server = Server::bind(config, handlers, &prometheus::Registry::new())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    Running {
        addr,
        ca: ca.pem().to_owned(),
        dir,
        stop: Some(stop_tx),
    }
}

fn connector(ca: &str, client: Option<(String, String)>) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(portico_webhook::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    TlsConnector::from(Arc::new(config))
}

async fn connect(tls: &TlsConnector, addr: std::net::SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tls.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await
}

/// Sends one request (headers, then `body` unless `trickle`) and returns the status line's code,
/// or `None` when the connection closed without an answer.
async fn send(stream: &mut TlsStream<TcpStream>, path: &str, extra: &str, body: &[u8]) -> Option<u16> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    read_status(stream).await
}

async fn read_status(stream: &mut TlsStream<TcpStream>) -> Option<u16> {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out).await;
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

fn a_review(op: &str) -> Vec<u8> {
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "default"},
                     "spec": {"ports": [{"port": 80}]}});
    serde_json::to_vec(&review("u1", "", "Service", op, svc, serde_json::Value::Null)).unwrap()
}

#[tokio::test]
async fn a_trickled_body_gets_408_at_the_body_read_timeout() {
    let server = start(|c, _| c.body_read_timeout = Duration::from_millis(300)).await;
    let tls = connector(&server.ca, None);
    let mut stream = connect(&tls, server.addr).await.unwrap();
    let body = a_review("CREATE");
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body[..10]).await.unwrap();
    let started = Instant::now();
    assert_eq!(read_status(&mut stream).await, Some(408));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reviews_beyond_the_cap_wait_then_get_503_within_their_budget() {
    let server = start(|c, _| c.max_concurrent_reviews = 1).await;
    let tls = connector(&server.ca, None);
    let mut first = connect(&tls, server.addr).await.unwrap();
    let mut second = connect(&tls, server.addr).await.unwrap();
    let body = a_review("CREATE");
    let slow = tokio::spawn(async move { send(&mut first, "/mutate", "", &body).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let refused = send(&mut second, "/mutate?timeout=300ms", "", &a_review("CREATE")).await;
    assert_eq!(refused, Some(503));
    assert!(
        started.elapsed() < Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        slow.await.unwrap(),
        Some(200),
        "the review holding the slot is answered"
    );
    // The slot is free again.
    let mut third = connect(&tls, server.addr).await.unwrap();
    assert_eq!(
        send(&mut third, "/validate", "", &a_review("CREATE")).await,
        Some(200)
    );
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let server = start(|c, _| c.max_connections = 2).await;
    let tls = connector(&server.ca, None);
    let _a = connect(&tls, server.addr).await.unwrap();
    let _b = connect(&tls, server.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        connect(&tls, server.addr).await.is_err(),
        "a third connection is closed before its handshake"
    );
    drop(_a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = connect(&tls, server.addr)
        .await
        .expect("a slot freed by a closed connection");
    assert_eq!(
        send(&mut c, "/validate", "", &a_review("CREATE")).await,
        Some(200)
    );
}

#[tokio::test]
async fn a_bearer_token_is_required_when_configured() {
    let server = start(|c, dir| {
        std::fs::write(dir.join("token"), "s3cret\n").unwrap();
        c.client_token_file = Some(dir.join("token"));
    })
    .await;
    let tls = connector(&server.ca, None);
    let body = a_review("CREATE");
    for (extra, want) in [
        ("", 401),
        ("Authorization: Bearer wrong\r\n", 401),
        ("Authorization: Bearer s3cret\r\n", 200),
    ] {
        let mut s = connect(&tls, server.addr).await.unwrap();
        assert_eq!(
            send(&mut s, "/validate", extra, &body).await,
            Some(want),
            "{extra:?}"
        );
    }
    // Probes need no token.
    let mut s = connect(&tls, server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_status(&mut s).await, Some(200));
}

#[tokio::test]
async fn a_client_certificate_from_the_client_ca_is_required_when_configured() {
    let client_ca = DevCa::new("apiserver-clients").unwrap();
    let ca_pem = client_ca.pem().to_owned();
    let server = start(move |c, dir| {
        std::fs::write(dir.join("client-ca.crt"), &ca_pem).unwrap();
        c.client_ca_file = Some(dir.join("client-ca.crt"));
    })
    .await;
    let body = a_review("CREATE");
    // No certificate, or one from another CA: no answer.
    for client in [
        None,
        Some(
            DevCa::new("other")
                .unwrap()
                .issue_client("kube-apiserver")
                .unwrap(),
        ),
    ] {
        let tls = connector(&server.ca, client);
        let answered = match connect(&tls, server.addr).await {
            Ok(mut s) => send(&mut s, "/validate", "", &body).await,
            Err(_) => None,
        };
        assert_eq!(answered, None);
    }
    let tls = connector(
        &server.ca,
        Some(client_ca.issue_client("kube-apiserver").unwrap()),
    );
    let mut s = connect(&tls, server.addr).await.unwrap();
    assert_eq!(send(&mut s, "/validate", "", &body).await, Some(200));
}

/// A client certificate (PEM certificate and key).
type ClientCert = (String, String);

/// Polls `check` every 50 ms until it holds; fails after 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The status of one review sent on a new connection with `client` and `extra` headers, or
/// `None` when the handshake or the connection failed.
async fn answer(server: &Running, client: Option<&ClientCert>, extra: &str) -> Option<u16> {
    let tls = connector(&server.ca, client.cloned());
    let mut s = connect(&tls, server.addr).await.ok()?;
    send(&mut s, "/validate", extra, &a_review("CREATE")).await
}

/// `/metrics` of `server`, fetched with `client`.
async fn metrics(server: &Running, client: Option<&ClientCert>) -> String {
    let tls = connector(&server.ca, client.cloned());
    let mut s = connect(&tls, server.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8(out).unwrap()
}

fn reloads(file: &str, result: &str, n: u32) -> String {
    format!(r#"portico_webhook_tls_reloads_total{{file="{file}",result="{result}"}} {n}"#)
}

/// A server requiring client certificates from `ca`, whose file is published in `client-ca/` and
/// checked every 100 ms.
async fn start_with_client_ca(ca: &DevCa) -> Running {
    let pem = ca.pem().to_owned();
    start(move |c, dir| {
        publish(&dir.join("client-ca"), "..1", &[("ca.crt", &pem)]);
        c.client_ca_file = Some(dir.join("client-ca").join("ca.crt"));
        c.reload_interval = Duration::from_millis(100);
    })
    .await
}

#[tokio::test]
async fn a_rotated_client_ca_applies_to_new_handshakes() {
    let (old_ca, new_ca) = (
        DevCa::new("apiserver-clients-1").unwrap(),
        DevCa::new("apiserver-clients-2").unwrap(),
    );
    let old_client = old_ca.issue_client("kube-apiserver").unwrap();
    let new_client = new_ca.issue_client("kube-apiserver").unwrap();
    let server = start_with_client_ca(&old_ca).await;
    assert_eq!(answer(&server, Some(&old_client), "").await, Some(200));
    assert_eq!(answer(&server, Some(&new_client), "").await, None);
    // A keep-alive connection authenticated by the old CA, answered once before the rotation.
    let mut kept = crate::tls::http(
        connect(&connector(&server.ca, Some(old_client.clone())), server.addr)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        crate::tls::request(&mut kept, "POST", "/validate", a_review("CREATE"))
            .await
            .0,
        200
    );

    let dir = server.dir.path().join("client-ca");
    publish(&dir, "..2", &[("ca.crt", new_ca.pem())]);
    eventually("a client certificate from the new CA is accepted", async || {
        answer(&server, Some(&new_client), "").await == Some(200)
    })
    .await;
    assert_eq!(
        answer(&server, Some(&old_client), "").await,
        None,
        "the old CA is no longer trusted for new connections"
    );
    assert_eq!(
        crate::tls::request(&mut kept, "POST", "/validate", a_review("CREATE"))
            .await
            .0,
        200,
        "an established connection carries on"
    );
    assert!(
        metrics(&server, Some(&new_client))
            .await
            .contains(&reloads("client_ca", "success", 1))
    );

    // A bundle of both CAs (an overlap during a rotation) lets both in.
    let both = format!("{}\n{}", old_ca.pem(), new_ca.pem());
    publish(&dir, "..3", &[("ca.crt", &both)]);
    eventually("the bundle's old CA is accepted again", async || {
        answer(&server, Some(&old_client), "").await == Some(200)
    })
    .await;
    assert_eq!(answer(&server, Some(&new_client), "").await, Some(200));
}

#[tokio::test]
async fn an_unusable_client_ca_keeps_the_previous_one() {
    let (old_ca, new_ca) = (
        DevCa::new("apiserver-clients-1").unwrap(),
        DevCa::new("apiserver-clients-2").unwrap(),
    );
    let old_client = old_ca.issue_client("kube-apiserver").unwrap();
    let new_client = new_ca.issue_client("kube-apiserver").unwrap();
    let server = start_with_client_ca(&old_ca).await;
    let dir = server.dir.path().join("client-ca");

    publish(&dir, "..2", &[("ca.crt", "garbage\n")]);
    eventually("the garbage CA file is counted as a failed reload", async || {
        metrics(&server, Some(&old_client))
            .await
            .contains(&reloads("client_ca", "failure", 1))
    })
    .await;
    assert_eq!(
        answer(&server, Some(&old_client), "").await,
        Some(200),
        "the previous CA stays"
    );
    assert_eq!(answer(&server, Some(&new_client), "").await, None);

    // The file is still followed: the next good CA is taken.
    publish(&dir, "..3", &[("ca.crt", new_ca.pem())]);
    eventually("a client certificate from the new CA is accepted", async || {
        answer(&server, Some(&new_client), "").await == Some(200)
    })
    .await;
    assert_eq!(answer(&server, Some(&old_client), "").await, None);
}

/// A server requiring the bearer token `s3cret`, whose file is published in `token/` and checked
/// every 100 ms.
async fn start_with_token() -> Running {
    start(|c, dir| {
        publish(&dir.join("token"), "..1", &[("token", "s3cret\n")]);
        c.client_token_file = Some(dir.join("token").join("token"));
        c.reload_interval = Duration::from_millis(100);
    })
    .await
}

#[tokio::test]
async fn a_rotated_token_replaces_the_previous_one() {
    let server = start_with_token().await;
    let (old, new) = (
        "Authorization: Bearer s3cret\r\n",
        "Authorization: Bearer n3w-s3cret\r\n",
    );
    assert_eq!(answer(&server, None, old).await, Some(200));
    assert_eq!(answer(&server, None, new).await, Some(401));

    publish(
        &server.dir.path().join("token"),
        "..2",
        &[("token", "n3w-s3cret\n")],
    );
    eventually("the new token is accepted", async || {
        answer(&server, None, new).await == Some(200)
    })
    .await;
    assert_eq!(
        answer(&server, None, old).await,
        Some(401),
        "the old token stops working"
    );
    assert!(
        metrics(&server, None)
            .await
            .contains(&reloads("client_token", "success", 1))
    );
}

#[tokio::test]
async fn an_empty_or_unreadable_token_file_keeps_the_previous_token() {
    let server = start_with_token().await;
    let dir = server.dir.path().join("token");
    let old = "Authorization: Bearer s3cret\r\n";

    publish(&dir, "..2", &[("token", "\n")]);
    eventually("the empty token file is counted as a failed reload", async || {
        metrics(&server, None)
            .await
            .contains(&reloads("client_token", "failure", 1))
    })
    .await;
    assert_eq!(
        answer(&server, None, old).await,
        Some(200),
        "the previous token stays"
    );
    assert_eq!(
        answer(&server, None, "Authorization: Bearer \r\n").await,
        Some(401)
    );

    // A generation without the file: `token` dangles.
    publish(&dir, "..3", &[]);
    eventually(
        "the unreadable token file is counted as a failed reload",
        async || {
            metrics(&server, None)
                .await
                .contains(&reloads("client_token", "failure", 2))
        },
    )
    .await;
    assert_eq!(answer(&server, None, old).await, Some(200));

    publish(&dir, "..4", &[("token", "n3w-s3cret")]);
    eventually("the next token is taken", async || {
        answer(&server, None, "Authorization: Bearer n3w-s3cret\r\n").await == Some(200)
    })
    .await;
    assert_eq!(answer(&server, None, old).await, Some(401));
}
