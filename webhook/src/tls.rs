//! The serving certificate and the client CA: PEM files turned into a rustls configuration,
//! reloaded when they change on disk.
//!
//! Kubernetes updates a mounted Secret by writing a new `..<timestamp>` directory and swapping the
//! `..data` symlink, so watching the files themselves (inotify) goes stale after the first swap.
//! [`CertStore::watch`] instead re-reads both files by path every few seconds (following
//! symlinks) and reloads when their content changed. A pair that does not parse or does not match
//! (a read that raced with an update, or a bad rotation) is logged and counted, and the last good
//! pair keeps serving; the next change is tried again. Each TLS handshake asks the store for the
//! current pair, so a reload applies to every new connection without a restart, and established
//! keep-alive connections carry on with the pair they started with.
//!
//! The CA client certificates are verified against ([`ClientCa`]) is followed the same way: a
//! changed file that parses to at least one certificate replaces the CA set for new handshakes,
//! anything else is logged and counted and the previous CA set stays. The server's bearer token
//! file is followed alike (`server.rs`), in the same reload task.
//!
//! Only the ring provider is used (the one kube uses), passed explicitly, so no process-wide
//! default provider has to be installed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::error::Error;
use crate::metrics::{Metrics, ReloadedFile};

/// The current certificate and key, reloadable.
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// Hash of the file contents last looked at (loaded or not), to notice the next change.
    seen: Mutex<u64>,
    metrics: Option<Metrics>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// The crypto provider of the webhook's TLS: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl CertStore {
    /// Loads the certificate chain (PEM, leaf first) and private key (PEM: PKCS#8, PKCS#1 or SEC1).
    /// Fails if either is unreadable, unparsable or the key does not belong to the certificate.
    pub fn load(cert_file: impl Into<PathBuf>, key_file: impl Into<PathBuf>) -> Result<Arc<Self>, Error> {
        let (cert_file, key_file) = (cert_file.into(), key_file.into());
        let provider = provider();
        let (cert, key) = read_pair(&cert_file, &key_file)?;
        let certified = parse_pair(&cert, &key, &provider).map_err(|reason| Error::Tls {
            cert: cert_file.clone(),
            key: key_file.clone(),
            reason,
        })?;
        Ok(Arc::new(CertStore {
            cert_file,
            key_file,
            provider,
            current: RwLock::new(Arc::new(certified)),
            seen: Mutex::new(hash_pair(&cert, &key)),
            metrics: None,
        }))
    }

    /// The same store, counting reloads in `metrics`. Call before sharing the store.
    pub fn with_metrics(self: Arc<Self>, metrics: Metrics) -> Arc<Self> {
        match Arc::try_unwrap(self) {
            Ok(mut store) => {
                if let Some(t) = leaf_not_after(&store.current_chain()) {
                    metrics.serving_cert_expiry(t);
                }
                store.metrics = Some(metrics);
                Arc::new(store)
            }
            Err(shared) => shared,
        }
    }

    /// The certificate chain currently served, DER, leaf first.
    pub fn current_chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .cert
            .clone()
    }

    /// Re-reads the files and switches to them if their content changed and they are a valid
    /// pair. `Ok(true)`: switched; `Ok(false)`: unchanged; `Err`: changed but unusable (the
    /// previous pair keeps serving; the same content is not retried, the next change is).
    pub fn reload(&self) -> Result<bool, Error> {
        let (cert, key) = read_pair(&self.cert_file, &self.key_file)?;
        if !changed(&self.seen, hash_pair(&cert, &key)) {
            return Ok(false);
        }
        let outcome = parse_pair(&cert, &key, &self.provider);
        if let Some(m) = &self.metrics {
            m.tls_reload(outcome.is_ok());
            if let Some(t) = outcome.as_ref().ok().and_then(|c| leaf_not_after(&c.cert)) {
                m.serving_cert_expiry(t);
            }
        }
        let certified = outcome.map_err(|reason| Error::Tls {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reason,
        })?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(certified);
        Ok(true)
    }

    /// Reloads (see [`CertStore::reload`]) and logs the outcome.
    pub(crate) fn reload_logged(&self) {
        log_reload("serving certificate", &self.cert_file, self.reload());
    }

    /// Polls the files every `interval` and reloads on change, until `stop` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        every(interval, stop, move || self.reload_logged()).await;
    }

    /// Loads the CA (PEM file, one certificate or more) that client certificates are verified
    /// against, for [`CertStore::server_config`]; its reloads are counted in this store's
    /// metrics. Fails if the file is unreadable or holds no usable certificate.
    pub fn client_ca(&self, file: impl Into<PathBuf>) -> Result<Arc<ClientCa>, Error> {
        let file = file.into();
        let (hash, pem) = read_followed(&file);
        let verifier = client_verifier(&pem?, &self.provider).map_err(|reason| Error::Tls {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reason: format!("client CA {}: {reason}", file.display()),
        })?;
        let hints = Interned::default();
        let current = Delegate {
            hints: intern_hints(&hints, verifier.root_hint_subjects()),
            verifier,
        };
        Ok(Arc::new(ClientCa {
            file,
            provider: self.provider.clone(),
            current: RwLock::new(current),
            hints,
            seen: Mutex::new(hash),
            metrics: self.metrics.clone(),
        }))
    }

    /// A rustls server configuration that asks this store for the certificate on every handshake.
    /// ALPN offers `http/1.1` only (the apiserver's webhook client speaks nothing else). With
    /// `client_ca` (see [`CertStore::client_ca`]), clients must present a certificate it
    /// verifies: the one current at the handshake, as the CA's file is reloaded.
    pub fn server_config(
        self: &Arc<Self>,
        client_ca: Option<Arc<ClientCa>>,
    ) -> Result<Arc<ServerConfig>, Error> {
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls {
                cert: self.cert_file.clone(),
                key: self.key_file.clone(),
                reason: e.to_string(),
            })?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => builder.with_client_cert_verifier(ca),
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// The CA client certificates must chain to, followed by path like the serving certificate.
///
/// A [`ClientCertVerifier`] that delegates every call to the verifier built from the file's
/// current content, so that one [`ServerConfig`] follows rotations: each handshake is verified
/// against the CA set current when it runs, and established connections are not re-verified. A
/// changed file that does not parse to at least one certificate is refused (logged, counted as a
/// `client_ca` failure) and the previous verifier stays.
pub struct ClientCa {
    file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Delegate>,
    /// The root hint subjects of every verifier used so far (deduplicated): rustls borrows them
    /// from `&self`, which a swapped-out delegate cannot lend.
    hints: Interned<Vec<DistinguishedName>>,
    /// Hash of the content (or read error) last looked at, to notice the next change.
    seen: Mutex<u64>,
    metrics: Option<Metrics>,
}

#[derive(Clone)]
struct Delegate {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Index of `verifier`'s root hint subjects in [`ClientCa::hints`].
    hints: usize,
}

impl std::fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCa")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl ClientCa {
    /// The CA file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Re-reads the file and switches to it if its content changed and it holds at least one
    /// usable certificate. `Ok(true)`: switched; `Ok(false)`: unchanged; `Err`: changed but
    /// unusable or unreadable (the previous CA set stays; the same content is not retried).
    pub fn reload(&self) -> Result<bool, Error> {
        let (hash, pem) = read_followed(&self.file);
        if !changed(&self.seen, hash) {
            return Ok(false);
        }
        let outcome = pem.and_then(|pem| {
            client_verifier(&pem, &self.provider)
                .map_err(|reason| Error::Config(format!("client CA {}: {reason}", self.file.display())))
        });
        if let Some(m) = &self.metrics {
            m.file_reload(ReloadedFile::ClientCa, outcome.is_ok());
        }
        let verifier = outcome?;
        let hints = intern_hints(&self.hints, verifier.root_hint_subjects());
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Delegate { verifier, hints };
        Ok(true)
    }

    /// Reloads (see [`ClientCa::reload`]) and logs the outcome.
    pub(crate) fn reload_logged(&self) {
        log_reload("client CA", &self.file, self.reload());
    }

    fn current(&self) -> Delegate {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl ClientCertVerifier for ClientCa {
    fn offer_client_auth(&self) -> bool {
        self.current().verifier.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current().verifier.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.hints.get(self.current().hints).map_or(&[], Vec::as_slice)
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current().verifier.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.current().verifier.requires_raw_public_keys()
    }
}

/// A verifier of client certificates chaining to the CA certificates in `pem`, or why not.
fn client_verifier(
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(der.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in it".into());
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| e.to_string())
}

/// Interns root hint subjects (`DistinguishedName` has no `PartialEq`).
fn intern_hints(hints: &Interned<Vec<DistinguishedName>>, subjects: &[DistinguishedName]) -> usize {
    hints.intern(subjects.to_vec(), |a, b| {
        a.len() == b.len() && a.iter().zip(b).all(|(a, b)| a.as_ref() == b.as_ref())
    })
}

/// An append-only list of distinct values that lives as long as its owner: a borrow of an entry
/// can be handed out for `&self` even after the owner moved on to another entry.
struct Interned<T> {
    first: OnceLock<Box<Link<T>>>,
}

struct Link<T> {
    value: T,
    next: OnceLock<Box<Link<T>>>,
}

impl<T> Default for Interned<T> {
    fn default() -> Self {
        Interned {
            first: OnceLock::new(),
        }
    }
}

impl<T> Interned<T> {
    fn get(&self, index: usize) -> Option<&T> {
        std::iter::successors(self.first.get(), |link| link.next.get())
            .nth(index)
            .map(|link| &link.value)
    }

    /// The index of `value`, appended unless a `same` value is in the list already.
    fn intern(&self, mut value: T, same: impl Fn(&T, &T) -> bool) -> usize {
        let (mut slot, mut index) = (&self.first, 0);
        loop {
            if let Some(link) = slot.get() {
                if same(&link.value, &value) {
                    return index;
                }
                (slot, index) = (&link.next, index + 1);
                continue;
            }
            match slot.set(Box::new(Link {
                value,
                next: OnceLock::new(),
            })) {
                Ok(()) => return index,
                // Appended concurrently: look at what was.
                Err(lost) => value = lost.value,
            }
        }
    }
}

/// Reads a followed file: the hash of what was read (the content, or the kind of read error, so
/// that a file turning unreadable counts as one change) and the content.
pub(crate) fn read_followed(path: &Path) -> (u64, Result<Vec<u8>, Error>) {
    let read = std::fs::read(path);
    let mut h = DefaultHasher::new();
    match &read {
        Ok(content) => (0u8, content).hash(&mut h),
        Err(e) => (1u8, e.kind()).hash(&mut h),
    }
    let read = read.map_err(|source| Error::File {
        action: "cannot read",
        path: path.to_owned(),
        source,
    });
    (h.finish(), read)
}

/// Records `hash` as what was last looked at; `false` if it already was.
pub(crate) fn changed(seen: &Mutex<u64>, hash: u64) -> bool {
    let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::replace(&mut *seen, hash) != hash
}

/// Logs the outcome of reloading `what` from `file`.
pub(crate) fn log_reload(what: &str, file: &Path, outcome: Result<bool, Error>) {
    match outcome {
        Ok(true) => tracing::info!(file = %file.display(), "{what} reloaded"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "{what} not reloaded; keeping the previous one")
        }
    }
}

/// Runs `step` (on the blocking pool: it reads files) every `interval`, until `stop` completes.
pub(crate) async fn every(
    interval: Duration,
    stop: impl std::future::Future<Output = ()>,
    step: impl Fn() + Send + Sync + 'static,
) {
    let step = Arc::new(step);
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        let step = step.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || step()).await {
            tracing::warn!(error = %e, "file reload task failed");
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

fn read_pair(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::File {
            action: "cannot read",
            path: path.to_owned(),
            source,
        })
    };
    Ok((read(cert)?, read(key)?))
}

fn hash_pair(cert: &[u8], key: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    cert.hash(&mut h);
    key.hash(&mut h);
    h.finish()
}

/// The leaf's notAfter in Unix seconds, for the expiry gauge (an alert's input: the serving
/// certificate is rotated by cert-manager or the bootstrap, and either can stall).
fn leaf_not_after(chain: &[CertificateDer<'_>]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

fn parse_pair(cert: &[u8], key: &[u8], provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate file: {e}"))?;
    if chain.is_empty() {
        return Err("certificate file: no CERTIFICATE block".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("key file: {e}"))?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| format!("certificate and key: {e}"))
}

#[cfg(test)]
mod tests {
    use prometheus::Encoder;

    use super::*;
    use crate::ca::{DevCa, write_dev_certs};

    fn leaf(ca: &DevCa) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(ca.issue_client("kube-apiserver").unwrap().0.as_bytes()).unwrap()
    }

    fn hints_of(pem: &str) -> Vec<Vec<u8>> {
        let verifier = client_verifier(pem.as_bytes(), &provider()).unwrap();
        verifier
            .root_hint_subjects()
            .iter()
            .map(|d| d.as_ref().to_vec())
            .collect()
    }

    fn hints(ca: &ClientCa) -> Vec<Vec<u8>> {
        ca.root_hint_subjects()
            .iter()
            .map(|d| d.as_ref().to_vec())
            .collect()
    }

    #[test]
    fn a_client_ca_follows_its_file_and_keeps_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let serving = write_dev_certs(dir.path(), &["127.0.0.1"]).unwrap();
        let registry = prometheus::Registry::new();
        let store = CertStore::load(&serving.cert_file, &serving.key_file)
            .unwrap()
            .with_metrics(Metrics::register(&registry).unwrap());
        let (one, two) = (DevCa::new("clients-1").unwrap(), DevCa::new("clients-2").unwrap());
        let file = dir.path().join("client-ca.crt");
        std::fs::write(&file, one.pem()).unwrap();
        let ca = store.client_ca(&file).unwrap();
        let accepts = |issuer: &DevCa| ca.verify_client_cert(&leaf(issuer), &[], UnixTime::now()).is_ok();
        assert!(accepts(&one) && !accepts(&two));
        assert_eq!(hints(&ca), hints_of(one.pem()));
        assert!(!ca.reload().unwrap(), "unchanged");

        std::fs::write(&file, two.pem()).unwrap();
        assert!(ca.reload().unwrap());
        assert!(accepts(&two) && !accepts(&one));
        assert_eq!(hints(&ca), hints_of(two.pem()), "the hints follow");

        std::fs::write(&file, "garbage").unwrap();
        let err = ca.reload().unwrap_err();
        assert!(err.to_string().contains("no certificate in it"), "{err}");
        assert!(!ca.reload().unwrap(), "the same content is not retried");
        assert!(accepts(&two) && !accepts(&one));
        assert_eq!(hints(&ca), hints_of(two.pem()));

        std::fs::write(&file, one.pem()).unwrap();
        assert!(ca.reload().unwrap());
        assert!(accepts(&one) && !accepts(&two));
        assert_eq!(hints(&ca), hints_of(one.pem()));
        assert!(ca.hints.get(2).is_none(), "hints seen before are reused");

        std::fs::remove_file(&file).unwrap();
        assert!(ca.reload().unwrap_err().to_string().starts_with("cannot read "));
        assert!(!ca.reload().unwrap(), "still unreadable: counted once");
        assert!(accepts(&one));

        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        for (result, n) in [("success", 2), ("failure", 2)] {
            let want =
                format!(r#"portico_webhook_tls_reloads_total{{file="client_ca",result="{result}"}} {n}"#);
            assert!(text.contains(&want), "{want} in {text}");
        }
    }

    #[test]
    fn a_client_ca_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let serving = write_dev_certs(dir.path(), &["127.0.0.1"]).unwrap();
        let store = CertStore::load(&serving.cert_file, &serving.key_file).unwrap();
        let file = dir.path().join("client-ca.crt");
        let err = store.client_ca(&file).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        std::fs::write(&file, "").unwrap();
        let err = store.client_ca(&file).unwrap_err();
        assert!(err.to_string().ends_with("no certificate in it"), "{err}");
    }
}
