//! The serving certificate: PEM files turned into a rustls configuration, reloaded when they
//! change on disk.
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
//! Only the ring provider is used (the one kube uses), passed explicitly, so no process-wide
//! default provider has to be installed.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::Error;
use crate::metrics::Metrics;

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
        let hash = hash_pair(&cert, &key);
        {
            let mut seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *seen == hash {
                return Ok(false);
            }
            *seen = hash;
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

    /// Polls the files every `interval` and reloads on change, until `stop` completes.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let store = self.clone();
            let outcome = tokio::task::spawn_blocking(move || store.reload()).await;
            match outcome {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.cert_file.display(), "serving certificate reloaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the previous one")
                }
                Err(e) => tracing::warn!(error = %e, "serving certificate reload task failed"),
            }
        }
    }

    /// A rustls server configuration that asks this store for the certificate on every handshake.
    /// ALPN offers `http/1.1` only (the apiserver's webhook client speaks nothing else). With
    /// `client_ca` (PEM file), clients must present a certificate that CA signed.
    pub fn server_config(self: &Arc<Self>, client_ca: Option<&Path>) -> Result<Arc<ServerConfig>, Error> {
        let tls_error = |reason: String| Error::Tls {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reason,
        };
        let builder = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.to_string()))?;
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                use rustls_pki_types::pem::PemObject;
                let pem = std::fs::read(path).map_err(|source| Error::File {
                    action: "cannot read",
                    path: path.to_owned(),
                    source,
                })?;
                let mut roots = rustls::RootCertStore::empty();
                for der in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                    let der = der.map_err(|e| tls_error(format!("client CA {}: {e}", path.display())))?;
                    roots
                        .add(der)
                        .map_err(|e| tls_error(format!("client CA {}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(tls_error(format!(
                        "client CA {}: no certificate in it",
                        path.display()
                    )));
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    self.provider.clone(),
                )
                .build()
                .map_err(|e| tls_error(format!("client CA {}: {e}", path.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
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
