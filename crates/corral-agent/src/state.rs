//! The agent's state dir (default `/var/lib/corral-agent`):
//!
//! - `credential` (0600): the host's secret, generated here on first start and saved *before*
//!   it is ever sent, so a crash at any point of a registration can be retried with the same
//!   credential and never leaves a host registered that nobody can log in as.
//! - `agent.json` (0600): server URL, pinned CA checksum, host name and whether the server has
//!   confirmed the registration; later starts need no token and no flags.

use std::path::{Path, PathBuf};

use corral_proto::secret::{SECRET_BYTES, SecretKind, check_secret, format_secret};
use corral_proto::{Auth, Welcome};
use corral_tls::CaChecksum;
use corral_tls::files::write_private;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::{AgentError, AgentOptions, facts};

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    server: String,
    ca_checksum: String,
    name: String,
    host_id: Option<String>,
    registered: bool,
    /// The deployment's other servers (repeated `--server`, the welcome's list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    servers: Vec<String>,
}

pub struct AgentState {
    dir: PathBuf,
    pub server: String,
    /// Other servers of the deployment, dialed when `server` cannot be reached (at most
    /// `MAX_SERVERS`, each an https:// URL the dialer reads).
    pub servers: Vec<String>,
    pub ca_checksum: CaChecksum,
    pub name: String,
    pub host_id: Option<String>,
    pub registered: bool,
    credential: String,
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    if SystemRandom::new().fill(&mut out).is_err() {
        panic!("the operating system's random number generator failed");
    }
    out
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |source| AgentError::Io { context, source }
}

impl AgentState {
    pub fn load_or_init(options: &AgentOptions) -> Result<Self, AgentError> {
        let dir = options.state_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(io(format!("cannot create state dir {}", dir.display())))?;
        let _ = std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let json_path = dir.join("agent.json");
        let saved: Option<Saved> = match std::fs::read(&json_path) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                AgentError::Config(format!(
                    "{} is corrupt ({e}); delete the state dir and register again",
                    json_path.display()
                ))
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(format!("cannot read {}", json_path.display()))(e)),
        };
        let server = options
            .server
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.server.clone()))
            .ok_or_else(|| {
                AgentError::Config(
                    "--server is required on first start (the command from `corral token create` has it)".into(),
                )
            })?;
        let ca_checksum = match (options.ca_checksum, &saved) {
            (Some(c), _) => c,
            (None, Some(s)) => CaChecksum::parse(&s.ca_checksum)
                .map_err(|e| AgentError::Config(format!("{}: {e}", json_path.display())))?,
            (None, None) => {
                return Err(AgentError::Config(
                    "--ca-checksum is required on first start: the agent trusts only the server CA it pins (the command from `corral token create` has it)".into(),
                ));
            }
        };
        let name = options
            .name
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.name.clone()))
            .unwrap_or_else(|| facts::default_name(&facts::hostname()));
        corral_proto::validate_host_name(&name).map_err(AgentError::Config)?;

        let cred_path = dir.join("credential");
        let credential = match std::fs::read_to_string(&cred_path) {
            Ok(text) => {
                let text = text.trim().to_owned();
                check_secret(SecretKind::HostCredential, &text)
                    .map_err(|e| AgentError::Config(format!("{}: {e}", cred_path.display())))?;
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if options.token.is_none() {
                    return Err(AgentError::Config(format!(
                        "this host is not registered yet (no credential in {}): pass --token from `corral token create`",
                        dir.display()
                    )));
                }
                let fresh =
                    format_secret(SecretKind::HostCredential, &random_bytes::<SECRET_BYTES>());
                write_private(&cred_path, fresh.as_bytes())
                    .map_err(io(format!("cannot write {}", cred_path.display())))?;
                fresh
            }
            Err(e) => return Err(io(format!("cannot read {}", cred_path.display()))(e)),
        };
        let server_changed = saved.as_ref().is_some_and(|s| s.server != server);
        let mut servers = Vec::new();
        for url in &options.more_servers {
            crate::dial::parse_server_url(url)?;
            servers.push(url.clone());
        }
        servers.extend(
            saved
                .as_ref()
                .map(|s| s.servers.clone())
                .unwrap_or_default(),
        );
        let mut st = AgentState {
            dir,
            server,
            servers: Vec::new(),
            ca_checksum,
            name,
            host_id: saved.as_ref().and_then(|s| s.host_id.clone()),
            registered: saved.as_ref().is_some_and(|s| s.registered) && !server_changed,
            credential,
        };
        st.learn_servers(&servers);
        st.save()?;
        Ok(st)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn save(&self) -> Result<(), AgentError> {
        let path = self.dir.join("agent.json");
        let saved = Saved {
            server: self.server.clone(),
            ca_checksum: self.ca_checksum.to_string(),
            name: self.name.clone(),
            host_id: self.host_id.clone(),
            registered: self.registered,
            servers: self.servers.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&saved)
            .map_err(|e| AgentError::Config(format!("cannot encode agent state: {e}")))?;
        write_private(&path, &bytes).map_err(io(format!("cannot write {}", path.display())))
    }

    /// Adds the servers of `urls` this agent does not know yet (never its own `server`; a URL
    /// the dialer cannot read is skipped), up to `MAX_SERVERS` in all. Whether any was new.
    pub fn learn_servers(&mut self, urls: &[String]) -> bool {
        let mut learned = false;
        for url in urls.iter().take(corral_proto::MAX_SERVERS) {
            let url = url.trim_end_matches('/');
            if url == self.server.trim_end_matches('/')
                || self.servers.iter().any(|s| s == url)
                || self.servers.len() + 1 >= corral_proto::MAX_SERVERS
            {
                continue;
            }
            match crate::dial::parse_server_url(url) {
                Ok(_) => {
                    self.servers.push(url.to_owned());
                    learned = true;
                }
                Err(e) => tracing::warn!(error = %e, "ignoring a server URL"),
            }
        }
        learned
    }

    /// How to authenticate on the next connection.
    pub fn auth(&self, token: Option<&str>) -> Result<Auth, AgentError> {
        Ok(match (self.registered, token) {
            (false, Some(token)) => Auth::Register {
                token: token.to_owned(),
                credential: self.credential.clone(),
            },
            _ => Auth::Credential {
                credential: self.credential.clone(),
            },
        })
    }

    /// The server welcomed us: from now on the credential alone is enough.
    pub fn mark_registered(&mut self, welcome: &Welcome) -> Result<(), AgentError> {
        let learned = self.learn_servers(&welcome.servers);
        if self.registered && self.host_id.as_deref() == Some(welcome.host_id.as_str()) {
            return if learned { self.save() } else { Ok(()) };
        }
        self.registered = true;
        self.host_id = Some(welcome.host_id.clone());
        self.name = welcome.host_name.clone();
        self.save()
    }
}
