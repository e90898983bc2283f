//! Columns that may carry secrets (container specs and service definitions hold environment
//! values; command payloads carry specs) are sealed at rest under the master key: written as
//! `sealed:` and the hex of the vault's `nonce || ciphertext+tag`, with the column and the
//! row's key as associated data, so a value moved to another row or column does not open.
//! A value that does not open (another master key, tampering) is corrupt state, never read as
//! empty. Values written in clear by an earlier version are sealed at start
//! ([`super::Store::seal_clear_columns`]).

use crate::vault::Vault;

use super::{Result, StoreError};

const PREFIX: &str = "sealed:";

/// Which column a value belongs to (part of the associated data).
#[derive(Debug, Clone, Copy)]
pub enum Column {
    ContainerSpec,
    ServiceSpec,
    CommandPayload,
}

impl Column {
    fn name(self) -> &'static str {
        match self {
            Column::ContainerSpec => "containers.spec",
            Column::ServiceSpec => "services.spec",
            Column::CommandPayload => "commands.payload",
        }
    }

    fn aad(self, key: &str) -> Vec<u8> {
        format!("{}/{key}", self.name()).into_bytes()
    }
}

/// The stored form of `plain`.
pub fn seal(vault: &Vault, column: Column, key: &str, plain: &str) -> Result<String> {
    let sealed = vault
        .seal(plain.as_bytes(), &column.aad(key))
        .map_err(|e| StoreError::Corrupt(format!("cannot seal {}: {e}", column.name())))?;
    let mut out = String::with_capacity(PREFIX.len() + sealed.len() * 2);
    out.push_str(PREFIX);
    for b in sealed {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The clear form of a stored value. One written in clear by an earlier version is returned
/// as it is (they are sealed at start).
pub fn open(vault: &Vault, column: Column, key: &str, stored: &str) -> Result<String> {
    let Some(hex) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_owned());
    };
    let corrupt = |why: &str| {
        StoreError::Corrupt(format!(
            "{} of {key}: {why} (is this the master.key the data was written with?)",
            column.name()
        ))
    };
    let bytes = decode_hex(hex).ok_or_else(|| corrupt("not hex"))?;
    let plain = vault
        .open(&bytes, &column.aad(key))
        .map_err(|_| corrupt("does not open"))?;
    String::from_utf8(plain).map_err(|_| corrupt("not text"))
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_column_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open_or_create(dir.path()).unwrap();
        let s = seal(
            &vault,
            Column::ContainerSpec,
            "ctr-1",
            r#"{"env":["PW=x"]}"#,
        )
        .unwrap();
        assert!(s.starts_with(PREFIX) && !s.contains("PW=x"));
        assert_eq!(
            open(&vault, Column::ContainerSpec, "ctr-1", &s).unwrap(),
            r#"{"env":["PW=x"]}"#
        );
        assert!(open(&vault, Column::ContainerSpec, "ctr-2", &s).is_err());
        assert!(open(&vault, Column::CommandPayload, "ctr-1", &s).is_err());
        assert!(open(&vault, Column::ContainerSpec, "ctr-1", "sealed:zz").is_err());
        assert_eq!(
            open(&vault, Column::ContainerSpec, "c", "{}").unwrap(),
            "{}"
        );
    }
}
