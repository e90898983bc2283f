//! Textual form of corral's bearer secrets: a kind prefix and 256 random bits in hex. The
//! prefix lets secret scanners recognise them and lets the server say "this is an agent
//! credential, not an API key" instead of a bare 401.

/// Number of random bytes in every secret (256 bits).
pub const SECRET_BYTES: usize = 32;

/// What a secret is for, as its prefix tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// One-time (or few-time) registration token.
    RegistrationToken,
    /// A host's credential for its tunnel.
    HostCredential,
    /// An API key for the CLI and API users.
    ApiKey,
}

impl SecretKind {
    /// The prefix of every secret of this kind (`crl_reg_`, `crl_host_`, `crl_key_`).
    pub fn prefix(self) -> &'static str {
        match self {
            SecretKind::RegistrationToken => "crl_reg_",
            SecretKind::HostCredential => "crl_host_",
            SecretKind::ApiKey => "crl_key_",
        }
    }

    /// The kind's name for people, in error messages.
    pub fn describe(self) -> &'static str {
        match self {
            SecretKind::RegistrationToken => "registration token",
            SecretKind::HostCredential => "agent credential",
            SecretKind::ApiKey => "API key",
        }
    }

    /// Which kind a string claims to be, by prefix alone.
    pub fn of(text: &str) -> Option<SecretKind> {
        [
            SecretKind::RegistrationToken,
            SecretKind::HostCredential,
            SecretKind::ApiKey,
        ]
        .into_iter()
        .find(|k| text.starts_with(k.prefix()))
    }
}

/// Formats random bytes as a secret of the given kind.
pub fn format_secret(kind: SecretKind, bytes: &[u8; SECRET_BYTES]) -> String {
    let mut s = String::with_capacity(kind.prefix().len() + 2 * SECRET_BYTES);
    s.push_str(kind.prefix());
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Checks that `text` is a well-formed secret of `kind` (without saying whether it is valid).
pub fn check_secret(kind: SecretKind, text: &str) -> Result<(), String> {
    let Some(hex) = text.strip_prefix(kind.prefix()) else {
        return match SecretKind::of(text) {
            Some(other) => Err(format!(
                "expected a {}, got a {}",
                kind.describe(),
                other.describe()
            )),
            None => Err(format!(
                "not a {}: it should start with {:?}",
                kind.describe(),
                kind.prefix()
            )),
        };
    };
    if hex.len() != 2 * SECRET_BYTES || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "malformed {}: expected {} hex digits after {:?}",
            kind.describe(),
            2 * SECRET_BYTES,
            kind.prefix()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_and_check() {
        let s = format_secret(SecretKind::ApiKey, &[0xab; 32]);
        assert_eq!(s.len(), 8 + 64);
        assert!(check_secret(SecretKind::ApiKey, &s).is_ok());
        let e = check_secret(SecretKind::RegistrationToken, &s).unwrap_err();
        assert!(e.contains("got a API key") || e.contains("API key"), "{e}");
        assert!(check_secret(SecretKind::ApiKey, "crl_key_zz").is_err());
        assert!(check_secret(SecretKind::ApiKey, "hello").is_err());
        assert_eq!(SecretKind::of(&s), Some(SecretKind::ApiKey));
    }
}
