use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A throw-away certificate authority: signs the apiserver's serving certificate and, for
/// tests, the serving certificate of an in-process webhook (whose `caBundle` is [`Ca::pem`]).
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// A PEM certificate and its PKCS#8 key.
#[derive(Clone)]
pub struct ServingCert {
    /// Certificate, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Result<Self, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate()?;
        let pem = params.self_signed(&key)?.pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate, PEM: what goes into a kubeconfig or a webhook's `caBundle`.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A serving certificate for the given DNS names and IP addresses (as strings).
    pub fn issue_serving(&self, sans: &[&str]) -> Result<ServingCert, rcgen::Error> {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            sans.first().map_or("localhost", String::as_str),
        );
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServingCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A fresh ECDSA P-256 key for service-account tokens: (private PKCS#8 PEM, public PEM). The
/// apiserver reads verification keys only from `PUBLIC KEY` blocks, hence both.
pub(crate) fn signing_key_pem() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
