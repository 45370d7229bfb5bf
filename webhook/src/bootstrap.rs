//! Self-managed webhook certificates: a CA and a serving certificate kept in a Secret, shared by
//! every replica, written out as files for [`crate::tls`], and registered as `caBundle`.
//!
//! Used when Portico manages its own certificates (no cert-manager, no Helm hooks):
//!
//! 1. [`ensure_tls_secret`] reads the Secret (type `kubernetes.io/tls`: `tls.crt`, `tls.key`,
//!    `ca.crt`, plus `ca.key`). If it is absent, a CA and a serving certificate are generated and
//!    the Secret created; when two replicas race, the create that loses (409) re-reads and uses
//!    the winner's. If it is present, the certificates are parsed: a serving certificate that
//!    expires within [`RENEW_BEFORE`], names other SANs than asked for, does not match its key or
//!    was not signed by the current CA is re-issued from the stored CA (so `caBundle` does not
//!    change); a CA that could not outlive a new serving certificate, or a Secret that is
//!    unusable, gets a new CA, and the previous CA stays in `ca.crt` (the bundle) until it
//!    expires, so servers still presenting the old certificate stay trusted while the new one
//!    propagates. Every rewrite is a replace conditional on the `resourceVersion` that was read:
//!    of two replicas rotating at once one wins and the other adopts its result.
//! 2. [`write_tls_files`] writes `tls.crt`, `tls.key` and `ca.crt` into a directory, each
//!    atomically and only when changed, for [`crate::CertStore`] to load and reload.
//! 3. [`patch_ca_bundle`] sets `caBundle` on every webhook of the named
//!    Validating/MutatingWebhookConfiguration (a strategic merge patch keyed by webhook name, so
//!    nothing else in the object is touched), if it differs.
//!
//! [`CertBootstrap`] bundles the three: [`CertBootstrap::sync`] once at start-up, then
//! [`CertBootstrap::run`] re-syncs every minute, so a rotation made by another replica reaches
//! this one's files (and a `caBundle` reset by a re-install is restored).
//!
//! Every replica patches `caBundle` from the Secret it read, so right after a CA rotation a
//! replica that read the Secret just before it may put the previous bundle back; the rotating
//! replica's bundle still contains the old CA, and the next re-sync of the lagging replica
//! (within a minute) restores the new one. CA rotations happen once in about nine years.
//!
//! Validity: the CA for 10 years, serving certificates for one year, renewed 30 days ahead.
//! Keys are ECDSA P-256.
//!
//! RBAC: `secrets` get, create, update in the namespace; `validatingwebhookconfigurations` and
//! `mutatingwebhookconfigurations` get, patch (both may be restricted with `resourceNames`,
//! except `create`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::ca::write_atomic;
use crate::error::Error;

/// Secret key of the serving certificate (PEM).
pub const TLS_CERT: &str = "tls.crt";
/// Secret key of the serving certificate's private key (PKCS#8 PEM).
pub const TLS_KEY: &str = "tls.key";
/// Secret key of the CA bundle (PEM; the current CA first, then previous ones still valid).
pub const CA_CERT: &str = "ca.crt";
/// Secret key of the current CA's private key (PKCS#8 PEM).
pub const CA_KEY: &str = "ca.key";

/// Validity of a new CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Validity of a new serving certificate.
pub const SERVING_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// A serving certificate is renewed when it has less than this left.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How often [`CertBootstrap::run`] re-reads the Secret.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);
/// Certificates start this long before they are made, to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(3600);
/// Attempts of [`ensure_tls_secret`] before a run of write conflicts is returned as an error.
const ATTEMPTS: usize = 5;

/// The certificates the webhook serves with and is trusted by.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsMaterial {
    /// The CA bundle (PEM): `caBundle` of the webhook configurations, `ca.crt`.
    pub ca_pem: String,
    /// The serving certificate (PEM), `tls.crt`.
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM), `tls.key`.
    pub key_pem: String,
}

impl Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem", &self.ca_pem)
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The names a webhook Service is reached by: `<svc>`, `<svc>.<ns>`, `<svc>.<ns>.svc` (what the
/// apiserver checks) and `<svc>.<ns>.svc.cluster.local`.
pub fn service_sans(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Reads, creates or rotates the webhook's TLS Secret `namespace/secret_name` (see the module
/// documentation) and returns the certificates it then holds. `sans` are DNS names or IP
/// addresses; the first is also the certificate's common name.
pub async fn ensure_tls_secret(
    client: &kube::Client,
    namespace: &str,
    secret_name: &str,
    sans: &[String],
) -> Result<TlsMaterial, Error> {
    if sans.is_empty() {
        return Err(Error::Config(
            "the serving certificate needs at least one SAN".into(),
        ));
    }
    let want = normalize_sans(sans.iter().map(String::as_str));
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut last_conflict = None;
    for _ in 0..ATTEMPTS {
        let now = unix_now();
        let Some(mut secret) = api.get_opt(secret_name).await? else {
            let fresh = issue(&Plan::NewCa("the Secret does not exist".into()), None, sans, now)?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(secret_name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/managed-by".to_owned(),
                        "portico".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(fresh.data()),
                ..Secret::default()
            };
            match api.create(&PostParams::default(), &secret).await {
                Ok(_) => {
                    tracing::info!(%namespace, secret = %secret_name, "created the webhook TLS Secret");
                    return Ok(fresh.material());
                }
                // Another replica created it first: use theirs.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    last_conflict = Some(kube::Error::Api(s));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let stored = Stored::from_secret(&secret);
        let inspected = stored.clone().and_then(inspect);
        let plan = plan(&inspected, &want, now);
        let (Ok(stored), Plan::Keep) = (&stored, &plan) else {
            tracing::info!(%namespace, secret = %secret_name, ?plan, "rotating the webhook certificates");
            let fresh = issue(&plan, inspected.ok().as_ref(), sans, now)?;
            let mut data = secret.data.take().unwrap_or_default();
            data.extend(fresh.data());
            secret.data = Some(data);
            match api.replace(secret_name, &PostParams::default(), &secret).await {
                Ok(_) => return Ok(fresh.material()),
                // Rotated (or changed) by someone else since we read it: look again.
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    last_conflict = Some(kube::Error::Api(s));
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        };
        return Ok(stored.material());
    }
    Err(last_conflict.map_or_else(
        || Error::Config("the webhook TLS Secret kept changing".into()),
        Error::Kube,
    ))
}

/// Writes `tls.crt`, `tls.key` (mode 0600) and `ca.crt` into `dir` (created if needed), each
/// atomically and only if its content differs. Returns whether anything was written.
pub fn write_tls_files(dir: &Path, material: &TlsMaterial) -> Result<bool, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::File {
        action: "cannot create",
        path: dir.to_owned(),
        source,
    })?;
    let mut changed = false;
    // The key first: a reader that sees the new key with the old certificate refuses the pair
    // and keeps serving the previous one until the certificate follows.
    for (name, contents, mode) in [
        (TLS_KEY, &material.key_pem, 0o600),
        (TLS_CERT, &material.cert_pem, 0o644),
        (CA_CERT, &material.ca_pem, 0o644),
    ] {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == contents.as_bytes()) {
            continue;
        }
        write_atomic(&path, contents.as_bytes(), mode)?;
        changed = true;
    }
    Ok(changed)
}

/// Sets `caBundle` to `ca_pem` on every webhook of the ValidatingWebhookConfiguration
/// `validating` and the MutatingWebhookConfiguration `mutating` (either may be `None`), where it
/// differs. A configuration that does not exist is skipped with a warning. Returns how many
/// webhook entries were changed.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    validating: Option<&str>,
    mutating: Option<&str>,
    ca_pem: &str,
) -> Result<usize, Error> {
    let mut changed = 0;
    if let Some(name) = validating {
        let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
        changed += patch_one(&api, name, ca_pem, |c| {
            c.webhooks
                .iter()
                .flatten()
                .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                .collect()
        })
        .await?;
    }
    if let Some(name) = mutating {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        changed += patch_one(&api, name, ca_pem, |c| {
            c.webhooks
                .iter()
                .flatten()
                .map(|w| (w.name.clone(), w.client_config.ca_bundle.clone()))
                .collect()
        })
        .await?;
    }
    Ok(changed)
}

async fn patch_one<K>(
    api: &Api<K>,
    name: &str,
    ca_pem: &str,
    webhooks: impl Fn(&K) -> Vec<(String, Option<ByteString>)>,
) -> Result<usize, Error>
where
    K: kube::Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + serde::Serialize,
{
    let kind = K::kind(&());
    let Some(config) = api.get_opt(name).await? else {
        tracing::warn!(%kind, %name, "webhook configuration not found; caBundle not set");
        return Ok(0);
    };
    let stale = stale_webhooks(&webhooks(&config), ca_pem);
    if stale.is_empty() {
        return Ok(0);
    }
    let patch = ca_bundle_patch(&stale, ca_pem);
    api.patch(name, &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    tracing::info!(%kind, %name, webhooks = ?stale, "caBundle updated");
    Ok(stale.len())
}

/// The webhooks whose `caBundle` is not `ca_pem`.
fn stale_webhooks(webhooks: &[(String, Option<ByteString>)], ca_pem: &str) -> Vec<String> {
    webhooks
        .iter()
        .filter(|(_, bundle)| bundle.as_ref().map(|b| b.0.as_slice()) != Some(ca_pem.as_bytes()))
        .map(|(name, _)| name.clone())
        .collect()
}

/// A strategic merge patch setting `clientConfig.caBundle` of the named webhooks (the list
/// merges by `name`, so other entries and fields stay as they are).
fn ca_bundle_patch(names: &[String], ca_pem: &str) -> serde_json::Value {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    serde_json::json!({
        "webhooks": names
            .iter()
            .map(|name| serde_json::json!({"name": name, "clientConfig": {"caBundle": bundle}}))
            .collect::<Vec<_>>(),
    })
}

/// Self-managed certificates for one webhook deployment (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertBootstrap {
    /// Namespace of the Secret (the release namespace).
    pub namespace: String,
    /// Name of the Secret.
    pub secret_name: String,
    /// SANs of the serving certificate ([`service_sans`]).
    pub sans: Vec<String>,
    /// Directory the files are written to (`tls.crt`, `tls.key`, `ca.crt`).
    pub dir: PathBuf,
    /// ValidatingWebhookConfiguration to keep `caBundle` on.
    pub validating_webhook: Option<String>,
    /// MutatingWebhookConfiguration to keep `caBundle` on.
    pub mutating_webhook: Option<String>,
    /// How often [`CertBootstrap::run`] re-syncs. Default [`DEFAULT_RESYNC`].
    pub resync: Duration,
}

impl CertBootstrap {
    /// Certificates in `namespace/secret_name` for `sans`, written to `dir`, with no webhook
    /// configuration to patch yet.
    pub fn new(
        namespace: impl Into<String>,
        secret_name: impl Into<String>,
        sans: Vec<String>,
        dir: impl Into<PathBuf>,
    ) -> Self {
        CertBootstrap {
            namespace: namespace.into(),
            secret_name: secret_name.into(),
            sans,
            dir: dir.into(),
            validating_webhook: None,
            mutating_webhook: None,
            resync: DEFAULT_RESYNC,
        }
    }

    /// `<dir>/tls.crt`, for [`crate::WebhookConfig::cert_file`].
    pub fn cert_file(&self) -> PathBuf {
        self.dir.join(TLS_CERT)
    }

    /// `<dir>/tls.key`, for [`crate::WebhookConfig::key_file`].
    pub fn key_file(&self) -> PathBuf {
        self.dir.join(TLS_KEY)
    }

    /// Ensures the Secret, writes the files and patches `caBundle`; returns the material.
    pub async fn sync(&self, client: &kube::Client) -> Result<TlsMaterial, Error> {
        let material = ensure_tls_secret(client, &self.namespace, &self.secret_name, &self.sans).await?;
        let (dir, m) = (self.dir.clone(), material.clone());
        let written = tokio::task::spawn_blocking(move || write_tls_files(&dir, &m))
            .await
            .map_err(|e| Error::Config(format!("writing the certificate files: {e}")))??;
        if written {
            tracing::info!(dir = %self.dir.display(), "webhook certificate files written");
        }
        patch_ca_bundle(
            client,
            self.validating_webhook.as_deref(),
            self.mutating_webhook.as_deref(),
            &material.ca_pem,
        )
        .await?;
        Ok(material)
    }

    /// Re-syncs every [`CertBootstrap::resync`] until `stop` completes; failures are logged and
    /// retried at the next tick (the files on disk keep serving meanwhile).
    pub async fn run(self, client: kube::Client, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut tick = tokio::time::interval(self.resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.sync(&client).await {
                tracing::warn!(
                    secret = %format!("{}/{}", self.namespace, self.secret_name), error = %e,
                    "cannot re-sync the webhook certificates; keeping the current ones"
                );
            }
        }
    }
}

/// The Secret's PEM strings.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    ca_bundle: String,
    ca_key: Option<String>,
    cert: String,
    key: String,
}

impl Stored {
    fn from_secret(secret: &Secret) -> Result<Self, String> {
        let data = secret.data.as_ref();
        let get = |key: &str| -> Result<Option<String>, String> {
            data.and_then(|d| d.get(key))
                .map(|v| String::from_utf8(v.0.clone()).map_err(|_| format!("{key} is not UTF-8")))
                .transpose()
        };
        let need = |key: &str| get(key)?.ok_or_else(|| format!("{key} is missing"));
        Ok(Stored {
            ca_bundle: need(CA_CERT)?,
            ca_key: get(CA_KEY)?,
            cert: need(TLS_CERT)?,
            key: need(TLS_KEY)?,
        })
    }

    fn material(&self) -> TlsMaterial {
        TlsMaterial {
            ca_pem: self.ca_bundle.clone(),
            cert_pem: self.cert.clone(),
            key_pem: self.key.clone(),
        }
    }

    fn data(&self) -> BTreeMap<String, ByteString> {
        let mut data = BTreeMap::new();
        let mut put = |k: &str, v: &str| data.insert(k.to_owned(), ByteString(v.as_bytes().to_vec()));
        put(CA_CERT, &self.ca_bundle);
        put(TLS_CERT, &self.cert);
        put(TLS_KEY, &self.key);
        if let Some(ca_key) = &self.ca_key {
            put(CA_KEY, ca_key);
        }
        data
    }
}

/// What matters about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Facts {
    pem: String,
    not_after: i64,
    sans: BTreeSet<String>,
}

/// The stored certificates, parsed and checked against each other.
#[derive(Debug, Clone)]
struct Inspected {
    stored: Stored,
    /// The bundle; the first is the current CA.
    cas: Vec<Facts>,
    /// `ca.key` is present and belongs to the current CA.
    ca_key_ok: bool,
    serving: Facts,
    /// `tls.key` belongs to `tls.crt`.
    serving_key_ok: bool,
    /// `tls.crt` is signed by the current CA.
    signed_by_ca: bool,
}

fn inspect(stored: Stored) -> Result<Inspected, String> {
    let ca_ders = pem_certs(&stored.ca_bundle).map_err(|e| format!("{CA_CERT}: {e}"))?;
    let serving_ders = pem_certs(&stored.cert).map_err(|e| format!("{TLS_CERT}: {e}"))?;
    let pem_of = |der: &CertificateDer<'_>| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        )
    };
    let cas = ca_ders
        .iter()
        .map(|der| Ok(facts(&parse(der)?, pem_of(der))))
        .collect::<Result<Vec<_>, String>>()?;
    let ca = parse(&ca_ders[0])?;
    let serving_der = &serving_ders[0];
    let serving = parse(serving_der)?;
    let ca_key_ok = stored.ca_key.as_deref().is_some_and(|pem| {
        KeyPair::from_pem(pem).is_ok_and(|k| k.subject_public_key_info() == ca.public_key().raw)
    });
    let serving_key_ok = PrivateKeyDer::from_pem_slice(stored.key.as_bytes()).is_ok_and(|key| {
        rustls::sign::CertifiedKey::from_der(vec![serving_der.clone()], key, &crate::tls::provider()).is_ok()
    });
    let signed_by_ca = serving.verify_signature(Some(ca.public_key())).is_ok();
    let serving = facts(&serving, stored.cert.clone());
    Ok(Inspected {
        stored,
        cas,
        ca_key_ok,
        serving,
        serving_key_ok,
        signed_by_ca,
    })
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<x509_parser::certificate::X509Certificate<'a>, String> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| format!("unparsable certificate: {e}"))
}

fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(certs)
}

fn facts(cert: &x509_parser::certificate::X509Certificate<'_>, pem: String) -> Facts {
    use x509_parser::extensions::GeneralName;
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    sans.insert(format!("DNS:{}", dns.to_ascii_lowercase()));
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        sans.insert(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    Facts {
        pem,
        not_after: cert.validity().not_after.timestamp(),
        sans,
    }
}

/// SANs as certificates carry them: `IP:<canonical address>` or `DNS:<lower case>`.
fn normalize_sans<'a>(sans: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    sans.into_iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => format!("IP:{ip}"),
            Err(_) => format!("DNS:{}", s.to_ascii_lowercase()),
        })
        .collect()
}

/// What to do with the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Plan {
    /// Use it as it is.
    Keep,
    /// A new serving certificate from the stored CA (why).
    Reissue(String),
    /// A new CA and serving certificate; the old CA stays in the bundle while valid (why).
    NewCa(String),
}

fn plan(inspected: &Result<Inspected, String>, want: &BTreeSet<String>, now: i64) -> Plan {
    let i = match inspected {
        Ok(i) => i,
        Err(e) => return Plan::NewCa(format!("unusable: {e}")),
    };
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let ca_left = i.cas[0].not_after - now;
    // The CA must outlive a serving certificate issued now (plus its renewal window).
    if ca_left < secs(SERVING_VALIDITY) + secs(RENEW_BEFORE) {
        return Plan::NewCa(format!("the CA expires in {} days", ca_left / 86_400));
    }
    let serving_left = i.serving.not_after - now;
    let reason = if serving_left < secs(RENEW_BEFORE) {
        format!(
            "the serving certificate expires in {} days",
            serving_left / 86_400
        )
    } else if i.serving.sans != *want {
        format!("the SANs changed from {:?} to {:?}", i.serving.sans, want)
    } else if !i.serving_key_ok {
        "the serving key does not match the certificate".into()
    } else if !i.signed_by_ca {
        "the serving certificate is not signed by the current CA".into()
    } else {
        return Plan::Keep;
    };
    if i.ca_key_ok {
        Plan::Reissue(reason)
    } else {
        Plan::NewCa(format!("{reason}, and the CA key is missing or does not match"))
    }
}

/// The Secret contents after `plan` (not [`Plan::Keep`]) at `now`.
fn issue(plan: &Plan, current: Option<&Inspected>, sans: &[String], now: i64) -> Result<Stored, Error> {
    match (plan, current) {
        (Plan::Reissue(_), Some(current)) => {
            let ca_key_pem = current.stored.ca_key.clone().unwrap_or_default();
            let ca_key = KeyPair::from_pem(&ca_key_pem)?;
            let issuer = Issuer::from_ca_cert_pem(&current.cas[0].pem, ca_key)?;
            let (cert, key) = serving_cert(&issuer, sans, now)?;
            Ok(Stored {
                ca_bundle: current.stored.ca_bundle.clone(),
                ca_key: Some(ca_key_pem),
                cert,
                key,
            })
        }
        _ => {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params
                .distinguished_name
                .push(DnType::CommonName, format!("portico-webhook-ca-{now}"));
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            set_validity(&mut params, now, CA_VALIDITY);
            let ca_key = KeyPair::generate()?;
            let ca_pem = params.self_signed(&ca_key)?.pem();
            let ca_key_pem = ca_key.serialize_pem();
            let issuer = Issuer::new(params, ca_key);
            let (cert, key) = serving_cert(&issuer, sans, now)?;
            // Previous CAs stay trusted until they expire: replicas may still serve
            // certificates they signed until their next re-sync.
            let mut bundle = ca_pem;
            for old in current.map(|c| c.cas.as_slice()).unwrap_or_default() {
                if old.not_after > now {
                    bundle.push_str(&old.pem);
                }
            }
            Ok(Stored {
                ca_bundle: bundle,
                ca_key: Some(ca_key_pem),
                cert,
                key,
            })
        }
    }
}

fn serving_cert(issuer: &Issuer<'_, KeyPair>, sans: &[String], now: i64) -> Result<(String, String), Error> {
    let mut params = CertificateParams::new(sans.to_vec())?;
    params.distinguished_name.push(
        DnType::CommonName,
        sans.first().map_or("portico-webhook", String::as_str),
    );
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, SERVING_VALIDITY);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams, now: i64, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = Duration::from_secs(u64::try_from(now).unwrap_or(0));
    params.not_before = epoch + now.saturating_sub(BACKDATE);
    params.not_after = epoch + now + validity;
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const DAY: i64 = 86_400;

    fn sans() -> Vec<String> {
        service_sans("portico-webhook", "portico")
    }

    fn want() -> BTreeSet<String> {
        normalize_sans(sans().iter().map(String::as_str))
    }

    fn fresh(now: i64) -> Stored {
        issue(&Plan::NewCa("test".into()), None, &sans(), now).unwrap()
    }

    fn inspected(s: &Stored) -> Result<Inspected, String> {
        inspect(s.clone())
    }

    /// Verifies `cert` for `name` against the roots in `bundle` at `at`, as a TLS client would.
    fn verifies(bundle: &str, cert: &str, name: &str, at: i64) -> Result<(), String> {
        use rustls::client::danger::ServerCertVerifier;
        let mut roots = rustls::RootCertStore::empty();
        for der in pem_certs(bundle).unwrap() {
            roots.add(der).unwrap();
        }
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            crate::tls::provider(),
        )
        .build()
        .unwrap();
        let leaf = pem_certs(cert).unwrap().remove(0);
        let name = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let at = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(at.try_into().unwrap()));
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], at)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sans_compare_as_sets_of_typed_names() {
        assert_eq!(
            normalize_sans(["B.example", "127.0.0.1", "::1"]),
            normalize_sans(["::0001", "b.example", "127.0.0.1"])
        );
        assert!(normalize_sans(["127.0.0.1"]).contains("IP:127.0.0.1"));
        assert!(normalize_sans(["127.0.0.1"]) != normalize_sans(["localhost"]));
    }

    #[test]
    fn fresh_material_is_kept_and_serves_the_service_names() {
        let now = unix_now();
        let s = fresh(now);
        let i = inspected(&s).unwrap();
        assert!(i.ca_key_ok && i.serving_key_ok && i.signed_by_ca);
        assert_eq!(i.cas.len(), 1);
        assert_eq!(i.serving.sans, want());
        assert!(i.serving.not_after - now > 364 * DAY);
        assert!(i.cas[0].not_after - now > 3649 * DAY);
        assert_eq!(plan(&Ok(i), &want(), now), Plan::Keep);
        verifies(&s.ca_bundle, &s.cert, "portico-webhook.portico.svc", now).unwrap();
        let err = verifies(&s.ca_bundle, &s.cert, "other.portico.svc", now).unwrap_err();
        assert!(err.contains("not valid for name"), "{err}");
        // The files load in the server's certificate store.
        let dir = tempfile::tempdir().unwrap();
        assert!(write_tls_files(dir.path(), &s.material()).unwrap());
        assert!(
            !write_tls_files(dir.path(), &s.material()).unwrap(),
            "unchanged: not rewritten"
        );
        crate::tls::CertStore::load(dir.path().join(TLS_CERT), dir.path().join(TLS_KEY)).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(CA_CERT)).unwrap(),
            s.ca_bundle
        );
    }

    #[test]
    fn serving_certificates_are_reissued_from_the_same_ca() {
        let t0 = unix_now();
        let s = fresh(t0);
        // 340 days later the serving certificate has 25 days left.
        let later = t0 + 340 * DAY;
        let p = plan(&inspected(&s), &want(), later);
        assert!(
            matches!(&p, Plan::Reissue(r) if r.contains("expires in 25 days")),
            "{p:?}"
        );
        let r = issue(&p, inspected(&s).ok().as_ref(), &sans(), later).unwrap();
        assert_eq!(r.ca_bundle, s.ca_bundle, "caBundle unchanged");
        assert_eq!(r.ca_key, s.ca_key);
        assert_ne!(r.cert, s.cert);
        assert_ne!(r.key, s.key);
        let i = inspected(&r).unwrap();
        assert!(i.signed_by_ca && i.serving_key_ok);
        assert_eq!(plan(&Ok(i), &want(), later), Plan::Keep);
        verifies(&r.ca_bundle, &r.cert, "portico-webhook.portico.svc", later).unwrap();

        // Other SANs asked for.
        let other = normalize_sans(["portico.example"]);
        let p = plan(&inspected(&s), &other, t0);
        assert!(
            matches!(&p, Plan::Reissue(r) if r.contains("SANs changed")),
            "{p:?}"
        );
        let r = issue(&p, inspected(&s).ok().as_ref(), &["portico.example".into()], t0).unwrap();
        assert_eq!(inspected(&r).unwrap().serving.sans, other);

        // A key that does not match, or a certificate from another CA.
        let mut bad = s.clone();
        bad.key = fresh(t0).key;
        let p = plan(&inspected(&bad), &want(), t0);
        assert!(
            matches!(&p, Plan::Reissue(r) if r.contains("key does not match")),
            "{p:?}"
        );
        let mut foreign = fresh(t0);
        foreign.ca_bundle = s.ca_bundle.clone();
        foreign.ca_key = s.ca_key.clone();
        let p = plan(&inspected(&foreign), &want(), t0);
        assert!(
            matches!(&p, Plan::Reissue(r) if r.contains("not signed")),
            "{p:?}"
        );
    }

    #[test]
    fn a_new_ca_keeps_the_old_one_in_the_bundle_until_it_expires() {
        let t0 = unix_now();
        let s = fresh(t0);
        // A serving certificate re-issued by the first CA some 9 years on...
        let reissued_at = t0 + 3160 * DAY;
        let p = plan(&inspected(&s), &want(), reissued_at);
        assert!(matches!(&p, Plan::Reissue(_)), "{p:?}");
        let s = issue(&p, inspected(&s).ok().as_ref(), &sans(), reissued_at).unwrap();
        // ...and 100 days later, with 13 months left, the CA could not outlive a new one.
        let late = reissued_at + 100 * DAY;
        let p = plan(&inspected(&s), &want(), late);
        assert!(
            matches!(&p, Plan::NewCa(r) if r.contains("CA expires in 390 days")),
            "{p:?}"
        );
        let r = issue(&p, inspected(&s).ok().as_ref(), &sans(), late).unwrap();
        let i = inspected(&r).unwrap();
        assert_eq!(i.cas.len(), 2);
        assert_eq!(
            pem_certs(&i.cas[1].pem),
            pem_certs(&s.ca_bundle),
            "the old CA second"
        );
        assert!(i.signed_by_ca && i.ca_key_ok);
        assert_ne!(r.ca_key, s.ca_key);
        assert_eq!(plan(&Ok(i.clone()), &want(), late), Plan::Keep);
        // Both the old and the new serving certificate are trusted by the new bundle.
        let name = "portico-webhook.portico.svc";
        verifies(&r.ca_bundle, &r.cert, name, late).unwrap();
        verifies(&r.ca_bundle, &s.cert, name, late).unwrap();
        assert!(
            verifies(&s.ca_bundle, &r.cert, name, late).is_err(),
            "the old bundle alone does not"
        );
        // Once the old CA has expired it is dropped at the next new CA.
        let much_later = t0 + 3651 * DAY;
        let again = issue(&Plan::NewCa("test".into()), Some(&i), &sans(), much_later).unwrap();
        let ders = pem_certs(&again.ca_bundle).unwrap();
        assert_eq!(ders.len(), 2, "new + previous; the expired one dropped");
        assert!(!ders.contains(&pem_certs(&s.ca_bundle).unwrap()[0]));
    }

    #[test]
    fn without_a_usable_ca_key_a_new_ca_is_made_only_when_needed() {
        let t0 = unix_now();
        let mut s = fresh(t0);
        s.ca_key = None;
        assert_eq!(
            plan(&inspected(&s), &want(), t0),
            Plan::Keep,
            "a valid pair is kept as it is"
        );
        let p = plan(&inspected(&s), &want(), t0 + 340 * DAY);
        assert!(matches!(&p, Plan::NewCa(r) if r.contains("CA key")), "{p:?}");
        s.ca_key = fresh(t0).ca_key;
        let p = plan(&inspected(&s), &want(), t0 + 340 * DAY);
        assert!(
            matches!(&p, Plan::NewCa(_)),
            "a key of another CA does not count: {p:?}"
        );
    }

    #[test]
    fn unusable_secrets_get_new_material() {
        let secret = |data: &[(&str, &str)]| Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        };
        let err = Stored::from_secret(&Secret::default()).unwrap_err();
        assert!(err.contains("ca.crt is missing"), "{err}");
        let s = fresh(unix_now());
        let garbage = Stored::from_secret(&secret(&[
            (CA_CERT, &s.ca_bundle),
            (TLS_CERT, "not pem"),
            (TLS_KEY, &s.key),
        ]))
        .unwrap();
        let p = plan(&inspect(garbage), &want(), unix_now());
        assert!(matches!(&p, Plan::NewCa(r) if r.contains("tls.crt")), "{p:?}");
        let round_trip = Stored::from_secret(&secret(
            &s.data()
                .iter()
                .map(|(k, v)| (k.as_str(), std::str::from_utf8(&v.0).unwrap()))
                .collect::<Vec<_>>(),
        ))
        .unwrap();
        assert_eq!(round_trip, s);
    }

    #[test]
    fn ca_bundle_patch_touches_only_stale_webhooks_by_name() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let hooks = vec![
            ("a.portico.dev".to_owned(), None),
            (
                "b.portico.dev".to_owned(),
                Some(ByteString(pem.as_bytes().to_vec())),
            ),
            ("c.portico.dev".to_owned(), Some(ByteString(b"old".to_vec()))),
        ];
        let stale = stale_webhooks(&hooks, pem);
        assert_eq!(stale, ["a.portico.dev", "c.portico.dev"]);
        let patch = ca_bundle_patch(&stale, pem);
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(
            patch,
            serde_json::json!({"webhooks": [
                {"name": "a.portico.dev", "clientConfig": {"caBundle": b64}},
                {"name": "c.portico.dev", "clientConfig": {"caBundle": b64}},
            ]})
        );
    }
}
