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

/// Passwords: at least this long (bytes)…
pub const MIN_PASSWORD_BYTES: usize = 12;
/// …and at most this long (hashing a huge one would cost the server, not the caller).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a new password's length.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD_BYTES || password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "a password must be {MIN_PASSWORD_BYTES} to {MAX_PASSWORD_BYTES} bytes long"
        ));
    }
    Ok(())
}

/// An argon2id hash of a password (PHC string, random salt, the argon2 crate's defaults: 19 MiB,
/// 2 passes), the only form a password is ever stored in.
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::PasswordHasher;
    let salt = argon2::password_hash::SaltString::encode_b64(&random_bytes::<16>())
        .map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the stored hash. A stored value that is not a PHC string never
/// matches.
pub fn verify_password(stored: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match argon2::password_hash::PasswordHash::new(stored) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash to verify against when the user does not exist, so that the answer takes as long.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("corral decoy password").unwrap_or_default())
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

    #[test]
    fn passwords_are_hashed_with_argon2id_and_verified() {
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse batterx"));
        assert!(!verify_password("not a hash", "correct horse battery"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
        assert!(check_new_password("short").is_err());
        assert!(check_new_password(&"x".repeat(1025)).is_err());
    }
}
