//! X25519 keys: generation on the host (the private key never leaves it) and their text form.

use boringtun::x25519::{PublicKey, StaticSecret};
use ring::rand::{SecureRandom, SystemRandom};

use crate::OverlayError;

/// Generates a private key from the system's randomness (`ring::rand::SystemRandom`) and
/// returns `(private, public)`.
pub fn keypair() -> Result<([u8; 32], [u8; 32]), OverlayError> {
    let mut private = [0u8; 32];
    SystemRandom::new()
        .fill(&mut private)
        .map_err(|_| OverlayError::Random)?;
    // Clamp as X25519 does on use, so the stored form is the canonical one.
    private[0] &= 248;
    private[31] &= 127;
    private[31] |= 64;
    Ok((private, public_key(&private)))
}

/// The X25519 public key of a private key.
pub fn public_key(private: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*private)).to_bytes()
}

/// Lower-case hex of a key (64 digits), the form corral's logs and CLI flags use.
pub fn to_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits into a key.
pub fn from_hex(text: &str) -> Result<[u8; 32], OverlayError> {
    let text = text.trim();
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OverlayError::KeyText);
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| OverlayError::KeyText)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let (private, public) = keypair().unwrap();
        assert_eq!(public_key(&private), public);
        let (other, _) = keypair().unwrap();
        assert_ne!(private, other);
        assert_eq!(from_hex(&to_hex(&public)).unwrap(), public);
        assert!(from_hex("zz").is_err());
        assert!(from_hex(&"g".repeat(64)).is_err());
    }

    #[test]
    fn dh_agrees() {
        let (a, a_pub) = keypair().unwrap();
        let (b, b_pub) = keypair().unwrap();
        let ab = StaticSecret::from(a).diffie_hellman(&PublicKey::from(b_pub));
        let ba = StaticSecret::from(b).diffie_hellman(&PublicKey::from(a_pub));
        assert_eq!(ab.as_bytes(), ba.as_bytes());
    }
}
