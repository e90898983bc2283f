//! Files a stack ships to its containers: project files (a relative bind mount such as
//! `./nginx.conf:/etc/nginx/nginx.conf`) and `configs:`, kept by the agent as read-only
//! copies, and `secrets:`, kept by the agent in memory only (a tmpfs) and removed with the
//! container.
//!
//! Every content is named by its SHA-256 (hex), so a change of content is a change of the
//! container's definition (its service rolls) and an unchanged one is not. The contents travel
//! only with the command that runs a container ([`FileContent`], base64 on the wire); what the
//! server stores about a container names digests only.

use serde::{Deserialize, Serialize};

/// Largest project file, config or secret.
pub const MAX_FILE_BYTES: usize = 256 * 1024;
/// Largest sum of the files one project ships (one container may mount them all, and its
/// command must fit in one message).
pub const MAX_PROJECT_FILES_BYTES: usize = 512 * 1024;
/// Most files one project ships (a mounted directory counts each file).
pub const MAX_PROJECT_FILES: usize = 1000;

/// What a shipped file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A project file or a config: a read-only copy on the host's disk.
    Config,
    /// A secret: on the host in memory only, for this container only.
    Secret,
}

/// A file or directory mounted read-only into a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMount {
    /// What it is, for people: `./nginx.conf`, `config app_conf`, `secret db_password`.
    pub name: String,
    /// A read-only copy on disk, or a secret in memory.
    pub kind: FileKind,
    /// Absolute path in the container.
    pub target: String,
    /// A single file's mode (a directory's files keep their own).
    pub mode: u32,
    /// The content's SHA-256 (hex); of a directory, the SHA-256 of its sorted entries.
    pub digest: String,
    /// A directory's files; empty for a single file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<FileEntry>,
}

/// One file of a mounted directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the directory, `/`-separated, no `.` or `..` parts.
    pub path: String,
    /// The content's SHA-256 (hex).
    pub digest: String,
    /// Its mode.
    pub mode: u32,
}

/// A content, sent with the command that needs it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileContent {
    /// SHA-256 (hex) of `data`.
    pub digest: String,
    /// The bytes (base64 on the wire).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for FileContent {
    // A secret's bytes never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileContent")
            .field("digest", &self.digest)
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// Serde for bytes as base64 text (`#[serde(with = "corral_proto::files::base64_bytes")]`).
pub mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes the bytes as base64.
    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(data))
    }

    /// Reads base64 into bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

/// A file of the project sent with `corral up`: a relative bind mount's file (or a file of a
/// mounted directory), or a config's or secret's `file:`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Relative to the project directory, normalised (`conf/nginx.conf`).
    pub path: String,
    /// Its mode on the machine that sent it.
    pub mode: u32,
    /// Its bytes (base64 on the wire).
    #[serde(with = "base64_bytes")]
    #[schema(value_type = String, format = Byte)]
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ProjectFile {
    // It may be a secret's file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectFile")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("bytes", &self.data.len())
            .finish()
    }
}

/// SHA-256 of a directory's entries, as [`FileMount::digest`] names it: each entry's path,
/// mode and digest, sorted by path.
pub fn tree_digest(entries: &[FileEntry], sha256_hex: impl Fn(&[u8]) -> String) -> String {
    let mut sorted: Vec<&FileEntry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut text = String::new();
    for e in sorted {
        text.push_str(&format!("{}\0{:o}\0{}\n", e.path, e.mode, e.digest));
    }
    sha256_hex(text.as_bytes())
}

/// Checks a relative path inside a shipped directory: `/`-separated, no empty, `.` or `..`
/// part, at most 1 KiB.
pub fn check_entry_path(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.len() > 1024
        || path.starts_with('/')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == ".." || p.contains('\0'))
    {
        return Err(format!(
            "{path:?} is not a relative path inside the directory"
        ));
    }
    Ok(())
}

/// Checks a digest: 64 lower-case hex digits.
pub fn check_digest_hex(digest: &str) -> Result<(), String> {
    if digest.len() == 64
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        Ok(())
    } else {
        Err(format!("{digest:?} is not a SHA-256 in hex"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_travel_as_base64_and_never_show_in_debug() {
        let c = FileContent {
            digest: "d".into(),
            data: b"TOPSECRET\x00\xff".to_vec(),
        };
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("VE9QU0VDUkVUAP8="), "{json}");
        assert_eq!(serde_json::from_str::<FileContent>(&json).unwrap(), c);
        assert!(!format!("{c:?}").contains("TOPSECRET"));
        assert!(serde_json::from_str::<FileContent>(r#"{"digest":"d","data":"!!"}"#).is_err());
    }

    #[test]
    fn entry_paths_stay_inside() {
        for ok in ["a", "a/b.conf", "conf.d/x"] {
            assert!(check_entry_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/../b", "./a", "a//b", ".."] {
            assert!(check_entry_path(bad).is_err(), "{bad}");
        }
    }
}
