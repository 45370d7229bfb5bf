//! A self-managed CA and serving certificate, for running the webhook out of cluster
//! (`portico run --webhook-url https://127.0.0.1:PORT`, `portico dev`, tests).
//!
//! In a cluster the certificate comes from a Secret (cert-manager or the chart) and is only read
//! by [`crate::tls`]. Out of cluster nobody provides one, so Portico makes a throw-away CA, signs a
//! serving certificate for the loopback address with it, writes both as files the server loads
//! like any others, and registers the CA as the configuration's `caBundle`.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::error::Error;

/// A certificate authority for serving certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCa").finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new self-signed CA (ECDSA P-256) called `common_name`.
    pub fn new(common_name: &str) -> Result<Self, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(DevCa {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate, PEM: the `caBundle` of the webhook configuration.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A serving certificate for `sans` (DNS names or IP addresses), as (certificate PEM, PKCS#8
    /// key PEM). The first SAN is also the common name (which clients ignore).
    pub fn issue_serving(&self, sans: &[&str]) -> Result<(String, String), Error> {
        let names: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().copied().unwrap_or("portico-webhook"),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate for `common_name` (e.g. the apiserver's identity towards webhooks),
    /// as (certificate PEM, PKCS#8 key PEM).
    pub fn issue_client(&self, common_name: &str) -> Result<(String, String), Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Files written by [`write_dev_certs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The CA certificate, PEM (also in `ca_file`): the `caBundle` to register.
    pub ca_pem: String,
    /// `<dir>/ca.crt`.
    pub ca_file: PathBuf,
    /// `<dir>/tls.crt`: the serving certificate.
    pub cert_file: PathBuf,
    /// `<dir>/tls.key`: its key (mode 0600).
    pub key_file: PathBuf,
}

/// Makes a new CA and a serving certificate for `sans` (e.g. `["127.0.0.1", "localhost"]`) and
/// writes `ca.crt`, `tls.crt` and `tls.key` into `dir` (created if needed; existing files are
/// replaced atomically, so a running server reloads them).
pub fn write_dev_certs(dir: &Path, sans: &[&str]) -> Result<DevCerts, Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::File {
        action: "cannot create",
        path: dir.to_owned(),
        source,
    })?;
    let ca = DevCa::new("portico-webhook-ca")?;
    let (cert_pem, key_pem) = ca.issue_serving(sans)?;
    let certs = DevCerts {
        ca_pem: ca.pem().to_owned(),
        ca_file: dir.join("ca.crt"),
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
    };
    write_atomic(&certs.ca_file, ca.pem().as_bytes(), 0o644)?;
    write_atomic(&certs.key_file, key_pem.as_bytes(), 0o600)?;
    write_atomic(&certs.cert_file, cert_pem.as_bytes(), 0o644)?;
    Ok(certs)
}

/// Writes `path` through a temporary file in the same directory and a rename.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;

    let err = |action, source| Error::File {
        action,
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(|e| err("cannot write", e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| err("cannot write", e))?;
    std::fs::rename(&tmp, path).map_err(|e| err("cannot write", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::CertStore;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn dev_certs_load_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let certs = write_dev_certs(dir.path(), &["127.0.0.1", "localhost"]).unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&certs.key_file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let store = CertStore::load(&certs.cert_file, &certs.key_file).unwrap();
        let first = store.current_chain();
        assert!(!store.reload().unwrap(), "unchanged files are not reloaded");

        // A mismatched pair (new key, old certificate: a torn update) is refused, the old one kept.
        let ca = DevCa::new("other").unwrap();
        let (cert2, key2) = ca.issue_serving(&["127.0.0.1"]).unwrap();
        write_atomic(&certs.key_file, key2.as_bytes(), 0o600).unwrap();
        let err = store.reload().unwrap_err().to_string();
        assert!(err.contains("certificate and key"), "{err}");
        assert_eq!(store.current_chain(), first);
        // Completing the update switches.
        write_atomic(&certs.cert_file, cert2.as_bytes(), 0o644).unwrap();
        assert!(store.reload().unwrap());
        assert_ne!(store.current_chain(), first);

        // Garbage is refused, and does not replace the pair.
        write_atomic(&certs.cert_file, b"not pem", 0o644).unwrap();
        assert!(store.reload().is_err());
        assert_ne!(store.current_chain(), first);
    }

    #[test]
    fn the_served_certificate_s_expiry_is_exported() {
        let gauge = |registry: &prometheus::Registry| -> i64 {
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("portico_webhook_certificate_expiration_timestamp_seconds "))
                .unwrap_or_else(|| panic!("{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let not_after = |pem: &str| {
            let der = CertificateDer::pem_slice_iter(pem.as_bytes())
                .next()
                .unwrap()
                .unwrap();
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
            cert.validity().not_after.timestamp()
        };
        let dir = tempfile::tempdir().unwrap();
        let certs = write_dev_certs(dir.path(), &["127.0.0.1"]).unwrap();
        let registry = prometheus::Registry::new();
        let metrics = crate::metrics::Metrics::register(&registry).unwrap();
        let store = CertStore::load(&certs.cert_file, &certs.key_file)
            .unwrap()
            .with_metrics(metrics);
        let served = std::fs::read_to_string(&certs.cert_file).unwrap();
        assert_eq!(gauge(&registry), not_after(&served));
        assert!(gauge(&registry) > 1_700_000_000, "a real time");

        // A rotation moves the gauge to the new certificate's expiry; a refused one does not.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 2, 3);
        let (cert2, key2) = (params.self_signed(&key).unwrap().pem(), key.serialize_pem());
        write_atomic(&certs.cert_file, cert2.as_bytes(), 0o644).unwrap();
        assert!(store.reload().is_err(), "the old key does not fit");
        assert_eq!(gauge(&registry), not_after(&served));
        write_atomic(&certs.key_file, key2.as_bytes(), 0o600).unwrap();
        assert!(store.reload().unwrap());
        assert_eq!(gauge(&registry), 1_927_843_200, "2031-02-03T00:00:00Z");
    }

    #[test]
    fn missing_or_bad_files_fail_to_load() {
        let dir = tempfile::tempdir().unwrap();
        let err = CertStore::load(dir.path().join("no.crt"), dir.path().join("no.key")).unwrap_err();
        assert!(err.to_string().starts_with("cannot read"), "{err}");
        std::fs::write(dir.path().join("a.crt"), "x").unwrap();
        std::fs::write(dir.path().join("a.key"), "y").unwrap();
        let err = CertStore::load(dir.path().join("a.crt"), dir.path().join("a.key")).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE block"), "{err}");
    }
}
