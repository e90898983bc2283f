//! What a diagram shows, independent of the output language. Built tolerantly from an
//! unvalidated topology: unknown environments become their own box, bad CIDRs are shown as
//! given (escaped later by each language).

use crate::net::Protocol;
use crate::topology::{HostRole, Overlay, Topology};

/// A server-side box (server, replica).
pub(crate) struct ServerBox {
    pub lines: Vec<String>,
}

/// The datastore box.
pub(crate) struct DatastoreBox {
    pub lines: Vec<String>,
    pub link_label: String,
}

/// A host box.
pub(crate) struct HostBox {
    /// Unique index across the diagram (for node ids).
    pub id: usize,
    pub name: String,
    pub addresses: Vec<String>,
    pub runs_server: bool,
    /// `80/tcp web`, ...
    pub published: Vec<String>,
}

/// An environment and its hosts.
pub(crate) struct EnvBox {
    pub name: String,
    pub overlay_label: String,
    pub encrypted: bool,
    pub hosts: Vec<HostBox>,
}

impl EnvBox {
    /// Label of the overlay mesh.
    pub fn mesh_label(&self) -> String {
        if self.hosts.len() > super::FULL_MESH_LIMIT {
            format!(
                "{} (full mesh, {} hosts)",
                self.overlay_label,
                self.hosts.len()
            )
        } else {
            self.overlay_label.clone()
        }
    }
}

pub(crate) struct Model {
    pub users_sub: String,
    pub api_label: String,
    pub agent_label: String,
    pub servers: Vec<ServerBox>,
    pub datastore: Option<DatastoreBox>,
    pub envs: Vec<EnvBox>,
}

impl Model {
    pub fn has_published(&self) -> bool {
        self.envs
            .iter()
            .any(|e| e.hosts.iter().any(|h| !h.published.is_empty()))
    }

    pub fn host_count(&self) -> usize {
        self.envs.iter().map(|e| e.hosts.len()).sum()
    }

    pub fn from_topology(t: &Topology) -> Model {
        let port = t.server.listen_port;
        let agent_port = t
            .server
            .advertised_url
            .as_deref()
            .and_then(advertised_port)
            .unwrap_or(port);
        let api_sources: Vec<String> = match &t.api_cidrs {
            Some(l) if !l.is_empty() => l.clone(),
            _ => t.admin_cidrs.clone(),
        };
        let users_sub = if api_sources.is_empty() {
            "CLI and API clients".to_string()
        } else {
            format!("from {}", short_list(&api_sources, 2))
        };
        let mut servers = vec![ServerBox {
            lines: {
                let mut l = vec![
                    t.server.name.clone(),
                    format!("corral server, {port}/tcp"),
                    "API and agent tunnel".to_string(),
                ];
                if !t.server.addresses.is_empty() {
                    l.push(short_list(
                        &t.server
                            .addresses
                            .iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>(),
                        2,
                    ));
                }
                l
            },
        }];
        for r in &t.server.replicas {
            let mut l = vec![
                r.name.clone(),
                format!("server replica, {port}/tcp"),
                "API and agent tunnel".to_string(),
            ];
            if !r.addresses.is_empty() {
                l.push(short_list(
                    &r.addresses
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>(),
                    2,
                ));
            }
            servers.push(ServerBox { lines: l });
        }
        let datastore = t.server.datastore.as_ref().map(|d| DatastoreBox {
            lines: vec![format!("PostgreSQL {}", d.name), format!("{}/tcp", d.port)],
            link_label: format!("PostgreSQL {}/tcp", d.port),
        });
        let mut envs: Vec<EnvBox> = t
            .environments
            .iter()
            .map(|e| env_box(&e.name, e.overlay))
            .collect();
        for (id, h) in t.hosts.iter().enumerate() {
            let env_name = h
                .environment
                .clone()
                .or_else(|| envs.first().map(|e| e.name.clone()))
                .unwrap_or_else(|| "default".to_string());
            let idx = match envs.iter().position(|e| e.name == env_name) {
                Some(i) => i,
                None => {
                    envs.push(env_box(&env_name, Overlay::default()));
                    envs.len() - 1
                }
            };
            let published: Vec<String> = t
                .published
                .iter()
                .filter(|p| p.host.as_deref().is_none_or(|x| x == h.name))
                .map(|p| {
                    let proto = match p.protocol {
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                        Protocol::Icmp => "icmp",
                    };
                    format!("{}/{proto} {}", p.port, p.display_name())
                })
                .collect();
            let hb = HostBox {
                id,
                name: h.name.clone(),
                addresses: h.addresses.iter().map(|a| a.to_string()).collect(),
                runs_server: h.role() == HostRole::Server,
                published,
            };
            if let Some(env) = envs.get_mut(idx) {
                env.hosts.push(hb);
            }
        }
        envs.retain(|e| !e.hosts.is_empty());
        Model {
            users_sub,
            api_label: format!("API {port}/tcp"),
            agent_label: format!("agent dials out, {agent_port}/tcp"),
            servers,
            datastore,
            envs,
        }
    }
}

fn env_box(name: &str, overlay: Overlay) -> EnvBox {
    EnvBox {
        name: name.to_string(),
        overlay_label: overlay.label(),
        encrypted: overlay.is_encrypted(),
        hosts: Vec::new(),
    }
}

fn short_list(items: &[String], max: usize) -> String {
    let mut s = items
        .iter()
        .take(max)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > max {
        s.push_str(&format!(" +{} more", items.len() - max));
    }
    s
}

fn advertised_port(url: &str) -> Option<u16> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("wss://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let port = if let Some(after) = authority.strip_prefix('[') {
        after.split_once(']')?.1.strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, p)| p)
    };
    match port {
        Some(p) => p.parse().ok().filter(|p| *p != 0),
        None => Some(443),
    }
}
