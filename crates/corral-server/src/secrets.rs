//! Random secrets and identifiers, and the one-way hash the datastore keeps instead of them.

use corral_proto::secret::{SECRET_BYTES, SecretKind, format_secret};
use ring::rand::{SecureRandom, SystemRandom};

/// SHA-256 of a secret's full text. This, never the secret, is what the datastore holds.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        SecretHash(out)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    // The OS random source failing is not recoverable for a server that mints secrets.
    if SystemRandom::new().fill(&mut out).is_err() {
        panic!("the operating system's random number generator failed");
    }
    out
}

/// A new 256-bit secret of the given kind, e.g. `crl_reg_…`.
pub fn new_secret(kind: SecretKind) -> String {
    format_secret(kind, &random_bytes::<SECRET_BYTES>())
}

/// A new identifier such as `host-3f9c2a1b7e4d`: short, unguessable enough to never collide
/// in practice (48 random bits), and typed by its prefix.
pub fn new_id(prefix: &str) -> String {
    let bytes = random_bytes::<6>();
    let mut s = String::with_capacity(prefix.len() + 13);
    s.push_str(prefix);
    s.push('-');
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_distinct_and_hashes_stable() {
        let a = new_secret(SecretKind::ApiKey);
        let b = new_secret(SecretKind::ApiKey);
        assert_ne!(a, b);
        assert!(corral_proto::secret::check_secret(SecretKind::ApiKey, &a).is_ok());
        assert_eq!(SecretHash::of(&a), SecretHash::of(&a));
        assert_ne!(SecretHash::of(&a), SecretHash::of(&b));
        assert!(new_id("host").starts_with("host-"));
    }
}
