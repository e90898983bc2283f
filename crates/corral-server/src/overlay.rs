//! The overlay's control half: who is in it, with which key, where, and on which subnet.
//!
//! - Each host's agent generates its X25519 key pair and sends only the public key (in its
//!   hello); the private key never leaves the host.
//! - Each environment has a range (default `10.42.0.0/16`), a mode (`wireguard` or `vxlan`)
//!   and a pre-shared key made here, sealed at rest under the master key (`vault`), and sent
//!   only down the agents' pinned tunnels.
//! - Each host gets a /24 of the range (a lease, kept while the host exists).
//! - [`run`] keeps every connected agent's [`OverlayConfig`] current: it recomputes them every
//!   second (and at once when woken by a connect, a removal or a rotation) and sends a host its
//!   configuration only when it changed since the last one that connection received. So peers
//!   learn of a host joining, moving (new endpoint) or leaving within about a second.
//!
//! The pure parts (allocation, configuration) are `corral_control::overlay`, tested without a
//! datastore.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_control::overlay as plan;
use corral_control::states::{Desired, is_ready};
use corral_proto::{NameTable, ServerMessage, ServiceAddresses};
use ring::rand::{SecureRandom, SystemRandom};

use crate::state::AppState;
use crate::state::registry::Queued;
use crate::store::{HostRow, OverlayMemberRow, StoreError};

const TICK: Duration = Duration::from_secs(1);

/// The environment's service names: every stack replica with an overlay address; the ones
/// running (and healthy, with a healthcheck) are the answers.
async fn name_table(state: &AppState, env_id: &str) -> Result<NameTable, StoreError> {
    let stacks: HashMap<String, String> = state
        .store
        .stacks()
        .await?
        .into_iter()
        .filter(|s| s.environment_id == env_id)
        .map(|s| (s.id, s.name))
        .collect();
    let mut by_service: std::collections::BTreeMap<(String, String), ServiceAddresses> =
        std::collections::BTreeMap::new();
    for c in state.store.containers().await? {
        let (Some(stack_id), Some(service), Some(ip)) = (&c.stack_id, &c.service, &c.ip) else {
            continue;
        };
        let (Some(stack), Ok(ip)) = (stacks.get(stack_id), ip.parse::<std::net::Ipv4Addr>()) else {
            continue;
        };
        if c.desired != Desired::Running {
            continue;
        }
        let entry = by_service
            .entry((stack.clone(), service.clone()))
            .or_insert_with(|| ServiceAddresses {
                stack: stack.clone(),
                service: service.clone(),
                ready: Vec::new(),
                members: Vec::new(),
            });
        entry.members.push(ip);
        if is_ready(c.actual, c.health) {
            entry.ready.push(ip);
        }
    }
    let mut services: Vec<ServiceAddresses> = by_service.into_values().collect();
    for s in &mut services {
        s.ready.sort();
        s.members.sort();
    }
    Ok(NameTable { services })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment's overlay row and its pre-shared key in clear (hex), making the key on
/// first use.
async fn env_with_psk(
    state: &AppState,
    env_id: &str,
) -> Result<Option<(plan::OverlayEnv, Option<String>)>, StoreError> {
    let Some(mut env) = state.store.overlay_env(env_id).await? else {
        return Ok(None);
    };
    if env.overlay_psk.is_none() {
        new_psk(state, env_id, env.overlay_psk_generation).await?;
        match state.store.overlay_env(env_id).await? {
            Some(e) => env = e,
            None => return Ok(None),
        }
    }
    let psk = env.overlay_psk.as_ref().and_then(|sealed| {
        match state.vault.open(sealed, env_id.as_bytes()) {
            Ok(psk) => Some(hex(&psk)),
            Err(e) => {
                tracing::error!(environment = %env.name, error = %e, "cannot open the overlay key");
                None
            }
        }
    });
    let plan_env = plan::OverlayEnv {
        name: env.name.clone(),
        mode: env.overlay_mode,
        cidr: env.overlay_cidr.clone(),
        psk_generation: u32::try_from(env.overlay_psk_generation).unwrap_or(0),
    };
    Ok(Some((plan_env, psk)))
}

/// Seals and stores a fresh key if the generation is still `previous`.
async fn new_psk(state: &AppState, env_id: &str, previous: i64) -> Result<bool, StoreError> {
    let mut psk = [0u8; 32];
    SystemRandom::new()
        .fill(&mut psk)
        .map_err(|_| StoreError::Corrupt("no randomness available".into()))?;
    let sealed = state
        .vault
        .seal(&psk, env_id.as_bytes())
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    state.store.set_overlay_psk(env_id, &sealed, previous).await
}

/// `corral env rotate-key`: a new pre-shared key for the environment, pushed to every agent
/// at once. Returns the new generation.
pub async fn rotate(state: &AppState, env_id: &str) -> Result<i64, StoreError> {
    loop {
        let env = state
            .store
            .overlay_env(env_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no environment {env_id}")))?;
        if new_psk(state, env_id, env.overlay_psk_generation).await? {
            state.overlay.wake();
            return Ok(env.overlay_psk_generation + 1);
        }
    }
}

/// An agent connected: record its overlay key and endpoint, and give it a lease.
pub async fn on_connect(
    state: &AppState,
    host: &HostRow,
    public_key: Option<&str>,
    overlay_port: Option<u16>,
    remote: SocketAddr,
) -> Result<(), StoreError> {
    let key = public_key.filter(|k| plan::valid_public_key(k));
    if public_key.is_some() && key.is_none() {
        tracing::warn!(host = %host.name, "ignoring a malformed overlay public key");
    }
    let endpoint = overlay_port.map(|p| SocketAddr::new(remote.ip(), p).to_string());
    state
        .store
        .set_host_overlay(&host.id, key, endpoint.as_deref())
        .await?;
    let Some(env) = state.store.overlay_env(&host.environment_id).await? else {
        return Ok(());
    };
    loop {
        let leases = state.store.overlay_leases(&env.id).await?;
        if leases.iter().any(|(h, _)| *h == host.id) {
            break;
        }
        let taken: Vec<String> = leases.into_iter().map(|(_, s)| s).collect();
        let Some(subnet) = plan::allocate(&env.overlay_cidr, &taken) else {
            tracing::error!(environment = %env.name, range = %env.overlay_cidr, "the overlay range is full: no subnet for host {}", host.name);
            break;
        };
        if state.store.insert_lease(&env.id, &host.id, &subnet).await? {
            tracing::info!(host = %host.name, %subnet, "leased an overlay subnet");
            break;
        }
    }
    state.overlay.wake();
    Ok(())
}

/// Keeps every connected agent's overlay configuration current until shutdown.
pub async fn run(state: Arc<AppState>) {
    crate::state::every(
        state,
        |s| &s.overlay.wake,
        TICK,
        "overlay sync",
        |s| async move { sync(&s).await },
    )
    .await;
}

async fn sync(state: &AppState) -> Result<(), StoreError> {
    let live = state.registry.connected();
    let hosts = state.store.hosts(false).await?;
    let mut by_env: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    for (host_id, conn) in &live {
        if let Some(h) = hosts.iter().find(|h| &h.id == host_id) {
            by_env
                .entry(h.environment_id.clone())
                .or_default()
                .push((host_id.clone(), *conn));
        }
    }
    for (env_id, connected) in by_env {
        let Some((env, psk)) = env_with_psk(state, &env_id).await? else {
            continue;
        };
        let names = name_table(state, &env_id).await?;
        let names_digest = digest(&names);
        for (host_id, conn) in &connected {
            if state.overlay.names_sent().get(host_id) == Some(&(*conn, names_digest)) {
                continue;
            }
            if state
                .registry
                .try_send(host_id, ServerMessage::Names(names.clone()))
                == Queued::Yes
            {
                state
                    .overlay
                    .names_sent()
                    .insert(host_id.clone(), (*conn, names_digest));
            }
        }
        let members = state.store.overlay_members(&env_id).await?;
        let plan_members: Vec<plan::Member> = members.iter().map(member).collect();
        for (host_id, conn) in connected {
            let Some(me) = members.iter().find(|m| m.id == host_id) else {
                continue;
            };
            let config = match plan::config_for(&env, &member(me), &plan_members, psk.clone()) {
                Ok(Some(config)) => config,
                Ok(None) => continue,
                Err(e) => {
                    // Fail closed: no configuration rather than one without the key.
                    tracing::error!(host = %me.name, error = %e, "not sending the overlay configuration");
                    continue;
                }
            };
            let digest = digest(&config);
            if state.overlay.sent().get(&host_id) == Some(&(conn, digest)) {
                continue;
            }
            // A full queue leaves it unrecorded: the next tick sends it again.
            if state
                .registry
                .try_send(&host_id, ServerMessage::Overlay(Box::new(config)))
                == Queued::Yes
            {
                state.overlay.sent().insert(host_id, (conn, digest));
            }
        }
    }
    let live_ids: Vec<&String> = live.iter().map(|(h, _)| h).collect();
    state.overlay.sent().retain(|h, _| live_ids.contains(&h));
    state
        .overlay
        .names_sent()
        .retain(|h, _| live_ids.contains(&h));
    Ok(())
}

fn member(m: &OverlayMemberRow) -> plan::Member {
    plan::Member {
        id: m.id.clone(),
        name: m.name.clone(),
        public_key: m.overlay_public_key.clone(),
        endpoint: m.overlay_endpoint.clone(),
        subnet: m.subnet.clone(),
    }
}

fn digest(value: &impl serde::Serialize) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(value)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}
