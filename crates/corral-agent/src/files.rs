//! Files a stack ships to its containers (`corral_proto::files`), put where Docker can bind
//! them read-only:
//!
//! - project files and configs: `STATE_DIR/files/DIGEST-MODE` (a directory:
//!   `STATE_DIR/files/tree-DIGEST/…`), named by content, so replicas and hosts share one copy
//!   and a copy never changes once written (written aside and renamed);
//! - secrets: `/dev/shm/corral-ID/CONTAINER/DIGEST`, in memory only: the directory must be on
//!   a tmpfs (checked; a host without one refuses to run a container with a secret rather than
//!   write it to disk), it is the container's own, and it goes with the container.
//!
//! `/dev/shm` rather than a tmpfs of the agent's own: a tmpfs the agent mounted would live in
//! the agent's mount namespace, which need not be dockerd's; `/dev/shm` is the same tmpfs in
//! both.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use corral_proto::files::{check_digest_hex, check_entry_path, tree_digest};
use corral_proto::{ContainerSpec, FileContent, FileKind, FileMount};

/// Where the agent keeps shipped files.
#[derive(Debug, Clone)]
pub struct FileStore {
    configs: PathBuf,
    secrets: PathBuf,
}

/// The SHA-256 of `data`, hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The file system type of the mount holding `path`, from `/proc/self/mounts`.
fn fs_type(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let path = path.to_str()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (_, Some(point), Some(kind)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        // Mount points escape spaces as \040; corral's paths have none.
        let inside = path == point
            || point == "/"
            || path.strip_prefix(point).is_some_and(|r| r.starts_with('/'));
        if inside && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), kind.to_owned()));
        }
    }
    best.map(|(_, kind)| kind)
}

impl FileStore {
    /// The store of the agent whose state is in `state_dir`.
    pub fn new(state_dir: &Path) -> FileStore {
        // Several agents may share a machine (and its /dev/shm): each has its own directory.
        let id = sha256_hex(state_dir.as_os_str().as_encoded_bytes());
        FileStore {
            configs: state_dir.join("files"),
            secrets: PathBuf::from(format!("/dev/shm/corral-{}", &id[..16])),
        }
    }

    /// Writes what `spec` mounts (from `spec.file_contents`, each checked against its
    /// digest) and returns each mount's host path and target.
    pub fn materialize(&self, spec: &ContainerSpec) -> Result<Vec<(PathBuf, String)>, String> {
        if spec.files.is_empty() {
            return Ok(Vec::new());
        }
        let mut contents: HashMap<&str, &FileContent> = HashMap::new();
        for c in &spec.file_contents {
            if sha256_hex(&c.data) != c.digest {
                return Err(format!(
                    "a shipped file's content does not match its digest {}",
                    c.digest
                ));
            }
            contents.insert(c.digest.as_str(), c);
        }
        let content = |digest: &str, name: &str| -> Result<&[u8], String> {
            contents
                .get(digest)
                .map(|c| c.data.as_slice())
                .ok_or_else(|| format!("the content of {name} was not sent with the command"))
        };
        let mut out = Vec::new();
        for m in &spec.files {
            check_digest_hex(&m.digest).map_err(|e| format!("{}: {e}", m.name))?;
            if !m.target.starts_with('/') {
                return Err(format!("{}: target {:?} is not absolute", m.name, m.target));
            }
            let host = match (m.kind, m.entries.is_empty()) {
                (FileKind::Config, true) => {
                    self.config_file(&m.digest, m.mode, content(&m.digest, &m.name)?)?
                }
                (FileKind::Config, false) => self.config_tree(m, &content)?,
                (FileKind::Secret, true) => {
                    self.secret(&spec.corral_id, m, content(&m.digest, &m.name)?)?
                }
                (FileKind::Secret, false) => {
                    return Err(format!("{}: a secret is one file, not a directory", m.name));
                }
            };
            out.push((host, m.target.clone()));
        }
        Ok(out)
    }

    fn config_file(&self, digest: &str, mode: u32, data: &[u8]) -> Result<PathBuf, String> {
        make_dir(&self.configs, 0o755)?;
        let path = self.configs.join(format!("{digest}-{:o}", mode & 0o777));
        if path.exists() {
            return Ok(path);
        }
        write_aside(&self.configs, &path, data, mode & 0o777)?;
        Ok(path)
    }

    fn config_tree<'a>(
        &self,
        m: &FileMount,
        content: &impl Fn(&str, &str) -> Result<&'a [u8], String>,
    ) -> Result<PathBuf, String> {
        if tree_digest(&m.entries, sha256_hex) != m.digest {
            return Err(format!(
                "{}: the directory's entries do not match its digest",
                m.name
            ));
        }
        make_dir(&self.configs, 0o755)?;
        let path = self.configs.join(format!("tree-{}", m.digest));
        if path.exists() {
            return Ok(path);
        }
        let tmp = self
            .configs
            .join(format!(".tree-{}-{}", m.digest, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        make_dir(&tmp, 0o755)?;
        for e in &m.entries {
            check_entry_path(&e.path).map_err(|why| format!("{}: {why}", m.name))?;
            let file = tmp.join(&e.path);
            if let Some(parent) = file.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|err| format!("{}: {err}", parent.display()))?;
            }
            write_file(&file, content(&e.digest, &m.name)?, e.mode & 0o777)?;
        }
        match std::fs::rename(&tmp, &path) {
            Ok(()) => Ok(path),
            // Another replica wrote the same tree meanwhile: same content.
            Err(_) if path.exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(path)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn secret(&self, corral_id: &str, m: &FileMount, data: &[u8]) -> Result<PathBuf, String> {
        if corral_id.is_empty()
            || !corral_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "container id {corral_id:?} cannot name a directory"
            ));
        }
        make_dir(&self.secrets, 0o700)?;
        match fs_type(&self.secrets) {
            Some(t) if t == "tmpfs" => {}
            other => {
                return Err(format!(
                    "{}: secrets are kept in memory only, and {} is not on a tmpfs ({}); nothing was written",
                    m.name,
                    self.secrets.display(),
                    other.unwrap_or_else(|| "unknown".into())
                ));
            }
        }
        let dir = self.secrets.join(corral_id);
        make_dir(&dir, 0o700)?;
        let path = dir.join(&m.digest);
        write_aside(&dir, &path, data, m.mode & 0o777)?;
        Ok(path)
    }

    /// Removes the container's secrets (with it gone, nothing mounts them).
    pub fn forget(&self, corral_id: &str) {
        if corral_id.is_empty() || corral_id.contains('/') || corral_id.contains("..") {
            return;
        }
        let dir = self.secrets.join(corral_id);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a container's secrets");
        }
    }
}

fn make_dir(dir: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| format!("cannot make {}: {e}", dir.display()))
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    f.write_all(data).map_err(fail)?;
    // The mode asked for, whatever the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(fail)
}

/// Writes `data` to a temporary file in `dir`, then renames it to `path`.
fn write_aside(dir: &Path, path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    write_file(&tmp, data, mode)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use corral_proto::FileEntry;

    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(dir)
    }

    fn content(data: &[u8]) -> FileContent {
        FileContent {
            digest: sha256_hex(data),
            data: data.to_vec(),
        }
    }

    #[test]
    fn configs_are_written_once_by_content_and_secrets_in_memory_per_container() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let conf = content(b"listen 80;\n");
        let secret = content(b"TOPSECRET");
        let a = content(b"a");
        let entries = vec![FileEntry {
            path: "sub/a.yml".into(),
            digest: a.digest.clone(),
            mode: 0o644,
        }];
        let spec = ContainerSpec {
            corral_id: "ctr-1".into(),
            files: vec![
                FileMount {
                    name: "./nginx.conf".into(),
                    kind: FileKind::Config,
                    target: "/etc/nginx/nginx.conf".into(),
                    mode: 0o444,
                    digest: conf.digest.clone(),
                    entries: vec![],
                },
                FileMount {
                    name: "./prom".into(),
                    kind: FileKind::Config,
                    target: "/etc/prom".into(),
                    mode: 0o755,
                    digest: tree_digest(&entries, sha256_hex),
                    entries,
                },
                FileMount {
                    name: "secret pw".into(),
                    kind: FileKind::Secret,
                    target: "/run/secrets/pw".into(),
                    mode: 0o400,
                    digest: secret.digest.clone(),
                    entries: vec![],
                },
            ],
            file_contents: vec![conf.clone(), a, secret],
            ..ContainerSpec::default()
        };
        let mounts = s.materialize(&spec).unwrap();
        assert_eq!(std::fs::read(&mounts[0].0).unwrap(), b"listen 80;\n");
        assert_eq!(
            std::fs::metadata(&mounts[0].0)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o444
        );
        assert_eq!(std::fs::read(mounts[1].0.join("sub/a.yml")).unwrap(), b"a");
        assert!(mounts[2].0.starts_with("/dev/shm/"), "{:?}", mounts[2].0);
        assert_eq!(std::fs::read(&mounts[2].0).unwrap(), b"TOPSECRET");
        // Again: the same copies.
        assert_eq!(s.materialize(&spec).unwrap()[0], mounts[0]);
        s.forget("ctr-1");
        assert!(!mounts[2].0.exists());

        // A content that does not match its digest, or one missing, is refused.
        let mut bad = spec.clone();
        bad.file_contents[0].data = b"other".to_vec();
        assert!(s.materialize(&bad).is_err());
        let mut missing = spec.clone();
        missing.file_contents.remove(2);
        assert!(s.materialize(&missing).unwrap_err().contains("secret pw"));
    }

    #[test]
    fn the_mount_table_says_which_file_system_holds_a_path() {
        assert_eq!(fs_type(Path::new("/dev/shm/x")).as_deref(), Some("tmpfs"));
        assert!(fs_type(Path::new("/")).is_some());
    }
}
