//! Key material of the control plane besides its CA (which is Portico's own
//! [`portico_webhook::DevCa`]: the same throw-away CA the webhook makes out of cluster).

use rcgen::KeyPair;

/// A fresh ECDSA P-256 key for service-account tokens: (private PKCS#8 PEM, public PEM). The
/// apiserver reads verification keys only from `PUBLIC KEY` blocks, hence both.
pub(crate) fn signing_key_pem() -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
