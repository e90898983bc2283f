//! How corral's clients (agent, CLI, benchmark) trust the server: by a pinned CA, never by the
//! system's trust store.
//!
//! The registration command carries `--ca-checksum sha256:HEX`, the SHA-256 of the DER encoding
//! of the server's CA certificate. [`PinnedCaVerifier`] accepts a server only if one certificate
//! in the chain it presents hashes to that value and the leaf verifies against that CA alone
//! (signature, validity, host name). Anything else fails with an error that names both the
//! pinned checksum and what the server presented.
//!
//! [`files`] writes the secrets every corral process keeps on disk (keys, credentials): mode
//! 0600, atomically.
//!
//! Architecture invariant: nothing in corral builds a rustls client config other than through
//! [`client_config`], so no code path can fall back to the web PKI.

pub mod files;

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "invalid CA checksum {0:?}: expected \"sha256:\" followed by 64 hex digits (see CORRAL_CA_CHECKSUM in the server's admin.env)"
    )]
    BadChecksum(String),
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The crypto provider every corral process uses (ring; aws-lc-rs is never built).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide default provider. Safe to call more than once.
pub fn install_default_provider() {
    // An Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A SHA-256 digest of a CA certificate, as pinned by agents and the CLI.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CaChecksum([u8; 32]);

impl CaChecksum {
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        CaChecksum(out)
    }

    /// Parses `sha256:HEX` (the `sha256:` prefix may be omitted; hex is case-insensitive).
    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let t = text.trim();
        let hex = t.strip_prefix("sha256:").unwrap_or(t);
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(TlsError::BadChecksum(text.to_owned()));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| TlsError::BadChecksum(text.to_owned()))?;
        }
        Ok(CaChecksum(out))
    }
}

impl std::fmt::Display for CaChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for CaChecksum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The server's chain does not contain the pinned CA.
#[derive(Debug)]
pub struct PinMismatch {
    pub pinned: CaChecksum,
    pub presented: Vec<CaChecksum>,
}

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server's certificate chain does not contain the pinned CA {}; it presented ",
            self.pinned
        )?;
        for (i, c) in self.presented.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str(
            ". Check --ca-checksum / CORRAL_CA_CHECKSUM against the server's admin.env, or you are not talking to your corral server",
        )
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies the server against one pinned CA and nothing else.
pub struct PinnedCaVerifier {
    pin: CaChecksum,
    provider: Arc<CryptoProvider>,
    /// The web-PKI verifier rooted at the pinned CA, built on first use.
    rooted: Mutex<Option<Arc<WebPkiServerVerifier>>>,
}

impl std::fmt::Debug for PinnedCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedCaVerifier")
            .field("pin", &self.pin)
            .finish()
    }
}

impl PinnedCaVerifier {
    pub fn new(pin: CaChecksum) -> Self {
        PinnedCaVerifier {
            pin,
            provider: provider(),
            rooted: Mutex::new(None),
        }
    }

    fn rooted_at(
        &self,
        ca: &CertificateDer<'_>,
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let mut cached = self
            .rooted
            .lock()
            .map_err(|_| rustls::Error::General("verifier lock poisoned".into()))?;
        if let Some(v) = cached.as_ref() {
            return Ok(v.clone());
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA is unusable: {e}")))?;
        *cached = Some(v.clone());
        Ok(v)
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca) = intermediates
            .iter()
            .find(|c| CaChecksum::of_der(c.as_ref()) == self.pin)
        else {
            let presented = std::iter::once(end_entity)
                .chain(intermediates)
                .map(|c| CaChecksum::of_der(c.as_ref()))
                .collect();
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch {
                    pinned: self.pin,
                    presented,
                })),
            )));
        };
        let rest: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != ca.as_ref())
            .cloned()
            .collect();
        self.rooted_at(ca)?
            .verify_server_cert(end_entity, &rest, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config that trusts only the CA pinned by `pin`, offering HTTP/1.1 via ALPN.
pub fn client_config(pin: CaChecksum) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier::new(pin)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_parse_and_display() {
        let c = CaChecksum::of_der(b"hello");
        let text = c.to_string();
        assert!(text.starts_with("sha256:2cf24dba"));
        assert_eq!(CaChecksum::parse(&text).unwrap(), c);
        assert_eq!(CaChecksum::parse(&text[7..]).unwrap(), c);
        assert_eq!(CaChecksum::parse(&text.to_uppercase()[7..]).unwrap(), c);
        for bad in [
            "",
            "sha256:",
            "sha256:zz",
            "md5:abcd",
            &text[..70],
            "sha256:é",
        ] {
            assert!(CaChecksum::parse(bad).is_err(), "{bad}");
        }
    }

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::Issuer<'static, rcgen::KeyPair>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        (cert, rcgen::Issuer::new(p, key))
    }

    fn leaf(issuer: &rcgen::Issuer<'static, rcgen::KeyPair>) -> rcgen::Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.signed_by(&key, issuer).unwrap()
    }

    #[test]
    fn accepts_pinned_ca_and_names_mismatch() {
        let (ca_cert, issuer) = ca("good");
        let (other_ca, other_issuer) = ca("evil");
        let good_leaf = leaf(&issuer);
        let name = ServerName::try_from("localhost").unwrap();
        let v = PinnedCaVerifier::new(CaChecksum::of_der(ca_cert.der()));
        v.verify_server_cert(
            good_leaf.der(),
            &[ca_cert.der().clone()],
            &name,
            &[],
            UnixTime::now(),
        )
        .unwrap();

        // Another CA's chain is refused, naming both checksums.
        let evil_leaf = leaf(&other_issuer);
        let err = v
            .verify_server_cert(
                evil_leaf.der(),
                &[other_ca.der().clone()],
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&CaChecksum::of_der(ca_cert.der()).to_string()),
            "{err}"
        );
        assert!(
            err.contains(&CaChecksum::of_der(other_ca.der()).to_string()),
            "{err}"
        );

        // The pinned CA presented next to a leaf it did not sign is refused too.
        let err = v
            .verify_server_cert(
                evil_leaf.der(),
                &[ca_cert.der().clone()],
                &name,
                &[],
                UnixTime::now(),
            )
            .unwrap_err();
        assert!(matches!(err, rustls::Error::InvalidCertificate(_)), "{err}");

        // Wrong host name.
        let other = ServerName::try_from("example.org").unwrap();
        assert!(
            v.verify_server_cert(
                good_leaf.der(),
                &[ca_cert.der().clone()],
                &other,
                &[],
                UnixTime::now()
            )
            .is_err()
        );
    }
}
