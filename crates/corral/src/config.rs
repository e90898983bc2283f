//! The CLI's own configuration: what `corral login` saved (server URL, the pinned CA checksum,
//! the user's API key), in `$CORRAL_CONFIG`, else `$XDG_CONFIG_HOME/corral/config.json`, else
//! `~/.config/corral/config.json` — a file only its owner can read (0600, directory 0700).
//! Flags and `CORRAL_*` variables win over it; its key is sent only to its own server.

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Largest config file read.
const MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    pub server: String,
    pub ca_checksum: Option<String>,
    pub api_key: String,
    pub user: String,
    /// The environment commands work in when they name none (`corral env use`, `corral login
    /// --env`); `None`: every environment the user has a role in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

/// The environment a command that acts in one uses when `--env` and `CORRAL_ENV` name none:
/// the one `corral env use` saved, else `default`. (A config that does not read is reported by
/// the client that loads it for the request; here it counts as none chosen.)
/// Read once per run: clap asks for it for each of the arguments it is the default of.
pub fn default_env() -> String {
    static CHOSEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            load()
                .ok()
                .flatten()
                .and_then(|s| s.env)
                .unwrap_or_else(|| "default".to_owned())
        })
        .clone()
}

pub fn path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CORRAL_CONFIG") {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("corral").join("config.json"))
}

/// What is saved, if anything; a file that does not read is an error, never "nothing saved".
pub fn load() -> anyhow::Result<Option<Saved>> {
    let Some(path) = path() else { return Ok(None) };
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    if meta.len() > MAX_BYTES {
        anyhow::bail!("{} is larger than {MAX_BYTES} bytes", path.display());
    }
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let saved = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} does not read (log in again with `corral login`)",
            path.display()
        )
    })?;
    Ok(Some(saved))
}

/// Saves what `corral login` got, readable by its owner only.
pub fn save(saved: &Saved) -> anyhow::Result<PathBuf> {
    let path = path().context("no home directory for the CLI's config: set CORRAL_CONFIG")?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", dir.display()))?;
    }
    let text = serde_json::to_vec_pretty(saved)?;
    corral_tls::files::write_private(&path, &text)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
