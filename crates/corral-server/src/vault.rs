//! Secrets the server must read back (today: each environment's overlay pre-shared key) are
//! sealed with XChaCha20-Poly1305 under a master key that lives in its own file in the data dir
//! (`master.key`, 32 random bytes, mode 0600), never in the database: a copy of the database
//! alone reveals none of them. The associated data binds a sealed value to what it belongs to
//! (e.g. the environment id), so a value copied onto another row does not open.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ring::rand::{SecureRandom, SystemRandom};

const NONCE_LEN: usize = 24;
pub const MASTER_KEY_FILE: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("cannot read or create the master key {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the master key {0} is not 32 bytes: restore it from a backup (sealed secrets cannot be opened without it)"
    )]
    BadKey(String),
    #[error(
        "a sealed secret does not open with this master key (wrong master.key, or the value was tampered with or moved)"
    )]
    Open,
    #[error("no randomness available")]
    Random,
}

pub struct Vault {
    cipher: XChaCha20Poly1305,
    rng: SystemRandom,
    /// The audit log's chain key, derived from the master key.
    audit_key: ring::hmac::Key,
    /// What a server relaying a connection to the active one proves it holds the master key
    /// with (`relay`): HMAC-SHA-256 of a fixed label under the master key.
    relay_secret: [u8; 32],
}

impl Vault {
    /// Loads `DATA_DIR/master.key`, creating it when there is none (a new datastore only: an
    /// existing one needs the key its secrets were sealed with, see [`Vault::load`]).
    pub fn open_or_create(data_dir: &Path) -> Result<Vault, VaultError> {
        let path = data_dir.join(MASTER_KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Vault::from_key(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                SystemRandom::new()
                    .fill(&mut key)
                    .map_err(|_| VaultError::Random)?;
                corral_tls::files::write_private(&path, &key).map_err(|source| VaultError::Io {
                    path: path.display().to_string(),
                    source,
                })?;
                Vault::from_key(&path, &key)
            }
            Err(source) => Err(VaultError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Loads `DATA_DIR/master.key`, which must be there.
    pub fn load(data_dir: &Path) -> Result<Vault, VaultError> {
        let path = data_dir.join(MASTER_KEY_FILE);
        let bytes = std::fs::read(&path).map_err(|source| VaultError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Vault::from_key(&path, &bytes)
    }

    /// The vault of a key read from `path` (named in errors): `load`'s, and a restore's.
    pub fn from_key(path: &Path, key: &[u8]) -> Result<Vault, VaultError> {
        if key.len() != 32 {
            return Err(VaultError::BadKey(path.display().to_string()));
        }
        Ok(Vault {
            cipher: XChaCha20Poly1305::new_from_slice(key)
                .map_err(|_| VaultError::BadKey(path.display().to_string()))?,
            rng: SystemRandom::new(),
            audit_key: corral_control::audit::chain_key(key),
            relay_secret: relay_secret(key),
        })
    }

    /// The key the audit log's entries are chained with (see `corral_control::audit`).
    pub fn audit_key(&self) -> &ring::hmac::Key {
        &self.audit_key
    }

    /// The servers' relay secret (see `relay`); every server of a deployment holds the same
    /// master key, so the same secret, and nothing else does.
    pub fn relay_secret(&self) -> &[u8; 32] {
        &self.relay_secret
    }

    /// `nonce || ciphertext+tag`.
    pub fn seal(&self, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| VaultError::Random)?;
        let sealed = self
            .cipher
            .encrypt(&XNonce::from(nonce), Payload { msg: plain, aad })
            .map_err(|_| VaultError::Open)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, VaultError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(VaultError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| VaultError::Open)?;
        self.cipher
            .decrypt(&XNonce::from(nonce), Payload { msg: body, aad })
            .map_err(|_| VaultError::Open)
    }
}

fn relay_secret(master_key: &[u8]) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, master_key);
    let tag = ring::hmac::sign(&key, b"corral server relay v1");
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(dir.path()).unwrap();
        let sealed = vault.seal(b"psk", b"env-1").unwrap();
        assert!(!sealed.windows(3).any(|w| w == b"psk"));
        assert_eq!(vault.open(&sealed, b"env-1").unwrap(), b"psk");
        assert!(
            vault.open(&sealed, b"env-2").is_err(),
            "moved to another row"
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(vault.open(&tampered, b"env-1").is_err());
        assert!(vault.open(b"short", b"env-1").is_err());
        // The same key file on restart; another key file opens nothing.
        let again = Vault::open_or_create(dir.path()).unwrap();
        assert_eq!(again.open(&sealed, b"env-1").unwrap(), b"psk");
        let other = tempfile::tempdir().unwrap();
        assert!(
            Vault::open_or_create(other.path())
                .unwrap()
                .open(&sealed, b"env-1")
                .is_err()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(MASTER_KEY_FILE), b"short").unwrap();
        assert!(matches!(
            Vault::open_or_create(dir.path()),
            Err(VaultError::BadKey(_))
        ));
        assert!(matches!(
            Vault::load(dir.path()),
            Err(VaultError::BadKey(_))
        ));
        assert!(matches!(
            Vault::load(other.path().join("none").as_path()),
            Err(VaultError::Io { .. })
        ));
    }
}
