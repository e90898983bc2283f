//! The server's own PKI: a CA created on first start and a server certificate signed by it.
//!
//! Files under `DATA_DIR/pki/`: `ca.pem`, `ca-key.pem` (0600), `server.pem` (leaf then CA),
//! `server-key.pem` (0600) and `server.json` (the SANs and expiry the leaf was issued for).
//! A restart reuses everything; the leaf alone is re-issued, by the same CA, when the wanted
//! SANs change or it is within 60 days of expiry, so agents' pins stay valid.
//!
//! With `--tls-cert/--tls-key` the operator's chain is used instead, and the pinned CA is the
//! last certificate of that chain.

use std::path::{Path, PathBuf};

use corral_tls::CaChecksum;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use corral_tls::files::{write_private, write_public};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// What the TLS listener serves and what clients pin.
pub struct Pki {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub ca_pem: String,
    pub checksum: CaChecksum,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct LeafMeta {
    sans: Vec<String>,
    not_after: i64,
}

const CA_CN: &str = "corral CA";
const CA_YEARS: i64 = 10;
const LEAF_DAYS: i64 = 2 * 365;
const LEAF_RENEW_DAYS: i64 = 60;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    dn.push(DnType::OrganizationName, "corral");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn offset(now: i64, seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(now.saturating_add(seconds))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Loads the server's PKI from `dir`, creating the CA and leaf on first start.
pub fn load_or_create(dir: &Path, sans: &[String], now: i64) -> Result<Pki, PkiError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let leaf_path = dir.join("server.pem");
    let leaf_key_path = dir.join("server-key.pem");
    let meta_path = dir.join("server.json");

    if !ca_path.exists() {
        let key = KeyPair::generate()?;
        let mut p = ca_params();
        p.not_before = offset(now, -3600);
        p.not_after = offset(now, CA_YEARS * 365 * 86400);
        let cert = p.self_signed(&key)?;
        write_private(&ca_key_path, key.serialize_pem().as_bytes()).map_err(io(&ca_key_path))?;
        write_public(&ca_path, cert.pem().as_bytes()).map_err(io(&ca_path))?;
        tracing::info!(path = %ca_path.display(), "created the server CA");
    }
    let ca_pem = std::fs::read_to_string(&ca_path).map_err(io(&ca_path))?;
    let ca_der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| PkiError::Invalid {
            path: ca_path.clone(),
            message: format!("not a PEM certificate: {e}"),
        })?;

    let wanted = LeafMeta {
        sans: sans.to_vec(),
        not_after: 0,
    };
    let current: Option<LeafMeta> = std::fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let reissue = match &current {
        None => true,
        Some(m) => {
            m.sans != wanted.sans
                || m.not_after - now < LEAF_RENEW_DAYS * 86400
                || !leaf_path.exists()
                || !leaf_key_path.exists()
        }
    };
    if reissue {
        let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)?;
        let issuer = Issuer::new(ca_params(), ca_key);
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans.to_vec())?;
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "corral server");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = offset(now, -3600);
        let not_after = now + LEAF_DAYS * 86400;
        p.not_after = offset(now, LEAF_DAYS * 86400);
        let cert = p.signed_by(&key, &issuer)?;
        write_private(&leaf_key_path, key.serialize_pem().as_bytes())
            .map_err(io(&leaf_key_path))?;
        write_public(&leaf_path, format!("{}{}", cert.pem(), ca_pem).as_bytes())
            .map_err(io(&leaf_path))?;
        let meta = serde_json::to_vec_pretty(&LeafMeta {
            sans: sans.to_vec(),
            not_after,
        })
        .map_err(|e| PkiError::Invalid {
            path: meta_path.clone(),
            message: e.to_string(),
        })?;
        write_public(&meta_path, &meta).map_err(io(&meta_path))?;
        tracing::info!(sans = ?sans, "issued the server certificate");
    }
    let (chain, key) = read_chain_and_key(&leaf_path, &leaf_key_path)?;
    Ok(Pki {
        chain,
        key,
        checksum: CaChecksum::of_der(ca_der.as_ref()),
        ca_pem,
    })
}

/// Uses an operator-supplied chain; the last certificate in it is the CA clients pin.
pub fn load_custom(cert: &Path, key: &Path) -> Result<Pki, PkiError> {
    let (chain, key) = read_chain_and_key(cert, key)?;
    let ca = chain.last().ok_or_else(|| PkiError::Invalid {
        path: cert.to_owned(),
        message: "no certificate found".into(),
    })?;
    if chain.len() < 2 {
        return Err(PkiError::Invalid {
            path: cert.to_owned(),
            message: "the file must hold the full chain: the server certificate first and the CA that agents pin last".into(),
        });
    }
    let ca_pem = pem_encode(ca.as_ref());
    Ok(Pki {
        checksum: CaChecksum::of_der(ca.as_ref()),
        chain,
        key,
        ca_pem,
    })
}

fn read_chain_and_key(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    let invalid = |path: &Path, message: String| PkiError::Invalid {
        path: path.to_owned(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(cert, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(cert, format!("bad certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(cert, "no certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(key, format!("cannot read the private key: {e}")))?;
    Ok((chain, key))
}

fn pem_encode(der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(ALPHABET[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_then_reuse_then_reissue_leaf_only() {
        let dir = std::env::temp_dir().join(format!("corral-pki-{}", crate::secrets::new_id("t")));
        let now = crate::time_fmt::now_unix();
        let sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let a = load_or_create(&dir, &sans, now).unwrap();
        let b = load_or_create(&dir, &sans, now).unwrap();
        assert_eq!(a.checksum, b.checksum);
        assert_eq!(a.chain, b.chain, "a restart reuses the leaf");
        let more = vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "corral.example".into(),
        ];
        let c = load_or_create(&dir, &more, now).unwrap();
        assert_eq!(a.checksum, c.checksum, "the CA never changes");
        assert_ne!(a.chain[0], c.chain[0], "the leaf is re-issued for new SANs");
        // The PEM we write for custom chains round-trips.
        let der =
            CertificateDer::from_pem_slice(pem_encode(c.chain[1].as_ref()).as_bytes()).unwrap();
        assert_eq!(der, c.chain[1]);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("ca-key.pem"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
