//! The overlay's control half: who is in it, with which key, where, and on which subnet.
//!
//! - Each host's agent generates its X25519 key pair and sends only the public key (in its
//!   hello); the private key never leaves the host.
//! - Each environment has a range (default `10.42.0.0/16`), a mode (`wireguard` or `vxlan`)
//!   and a pre-shared key made here, sealed at rest under the master key (`vault`), and sent
//!   only down the agents' pinned tunnels.
//! - Each host gets a subnet of the range (a lease, kept while the host exists): a /24 unless
//!   the environment chose another size before its first host joined. A subnet holds a fixed
//!   number of container addresses ([`address_capacity`]); the scheduler counts them like
//!   ports ([`holds_address`]), and a host that would join a full range is refused.
//! - [`run`] keeps every connected agent's [`OverlayConfig`] current: it recomputes them every
//!   second (and at once when woken by a connect, a removal or a rotation) and sends a host its
//!   configuration only when it changed since the last one that connection received. So peers
//!   learn of a host joining, moving (new endpoint) or leaving within about a second.
//!
//! The pure parts (allocation, configuration) are `corral_control::overlay`, tested without a
//! datastore.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use corral_control::overlay as plan;
use corral_control::states::{Desired, is_ready};
use corral_proto::{NameTable, NetworkPolicy, ServerMessage, ServiceAddresses};
use ring::rand::{SecureRandom, SystemRandom};

use corral_control::overlay::Update;

use crate::state::AppState;
use crate::state::overlay::{EnvNames, EnvPolicy, SyncMemory};
use crate::state::registry::{LiveSession, Queued};
use crate::store::{ContainerRow, HostRow, OverlayEnvRow, OverlayMemberRow, StoreError};
use corral_control::states::Actual;
use corral_proto::ContainerSpec;

const TICK: Duration = Duration::from_secs(1);
/// At most one pass per this, however many wakes (a connect storm): each pass may read an
/// environment's members and send every host a delta, so passes back to back would cost
/// O(hosts) per connect; this way a storm costs at most two deltas per host per second, each
/// carrying every peer that joined meanwhile, and peers still learn of a join within a second.
const PASS_GAP: Duration = Duration::from_millis(500);

/// The environment's service names: every stack replica with an overlay address; the ones
/// running (and healthy, with a healthcheck) are the answers.
async fn name_table(state: &AppState, env_id: &str) -> Result<NameTable, StoreError> {
    let mut by_service: BTreeMap<(String, String), ServiceAddresses> = BTreeMap::new();
    for row in state.store.name_rows(env_id).await? {
        let Ok(ip) = row.ip.parse::<std::net::Ipv4Addr>() else {
            continue;
        };
        if row.desired != Desired::Running {
            continue;
        }
        let entry = match by_service.entry((row.stack.clone(), row.service.clone())) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                // Labels that do not read are an error, never "no labels": a policy rule that
                // selects on them would silently stop matching.
                let labels = serde_json::from_str(&row.labels).map_err(|err| {
                    StoreError::Corrupt(format!(
                        "the labels of service {}/{} do not read: {err}",
                        row.stack, row.service
                    ))
                })?;
                e.insert(ServiceAddresses {
                    stack: row.stack,
                    service: row.service,
                    ready: Vec::new(),
                    members: Vec::new(),
                    labels,
                })
            }
        };
        entry.members.push(ip);
        if is_ready(row.actual, row.health) {
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

/// The network policy in force in an environment: its newest generation (0: none applied)
/// and the document every host enforces — the environment's rules with every stack's own
/// (`x-corral: policy:`) added; `None` when there are neither. A stored generation or a
/// stack's rules that no longer read are an error, never "no policy".
pub async fn effective_policy(
    state: &AppState,
    env_id: &str,
) -> Result<(i64, Option<corral_policy::Document>), StoreError> {
    let Some(row) = state.store.network_policy(env_id, None).await? else {
        let combined = with_stack_rules(state, env_id, &Default::default()).await?;
        // No environment policy and no stack rules: nothing to enforce.
        let none = combined == corral_policy::Document::default();
        return Ok((0, (!none).then_some(combined)));
    };
    let document: corral_policy::Document = serde_json::from_str(&row.policy).map_err(|e| {
        StoreError::Corrupt(format!(
            "the network policy's generation {} does not read: {e}",
            row.generation
        ))
    })?;
    Ok((
        row.generation,
        Some(with_stack_rules(state, env_id, &document).await?),
    ))
}

/// `doc` with the rules of every stack of the environment that carries its own
/// (`corral_policy::combine`). Rules that no longer read are an error, never "no rules".
pub async fn with_stack_rules(
    state: &AppState,
    env_id: &str,
    doc: &corral_policy::Document,
) -> Result<corral_policy::Document, StoreError> {
    let stacks = state.store.stack_policies(env_id).await?;
    let mut rules = Vec::with_capacity(stacks.len());
    for (stack, json) in stacks {
        let r: corral_policy::StackRules = serde_json::from_str(&json).map_err(|e| {
            StoreError::Corrupt(format!(
                "the network policy rules of stack {stack} do not read: {e}; deploy it again"
            ))
        })?;
        rules.push((stack, r));
    }
    Ok(corral_policy::combine(doc, &rules))
}

/// The environment's network policy as its hosts get it. One that cannot be read is an error:
/// the hosts keep enforcing what they have rather than be told there is no policy.
async fn policy_message(state: &AppState, env_id: &str) -> Result<NetworkPolicy, StoreError> {
    let environment = state
        .store
        .environment_by_id(env_id)
        .await?
        .map(|e| e.name)
        .unwrap_or_else(|| env_id.to_owned());
    let (generation, document) = effective_policy(state, env_id).await?;
    Ok(NetworkPolicy {
        environment,
        generation: u64::try_from(generation).unwrap_or(0),
        document,
    })
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

/// The environment's range cut into host subnets. A stored range or size that does not read
/// is corrupt state: no lease is chosen from a guess.
pub fn shape(env: &OverlayEnvRow) -> Result<plan::Shape, StoreError> {
    let prefix = u8::try_from(env.overlay_host_prefix).map_err(|_| {
        StoreError::Corrupt(format!(
            "environment {}: impossible host subnet size {}",
            env.name, env.overlay_host_prefix
        ))
    })?;
    plan::Shape::new(&env.overlay_cidr, prefix)
        .map_err(|e| StoreError::Corrupt(format!("environment {}: {e}", env.name)))
}

/// Container addresses a host's overlay subnet holds: `None` for a host on no overlay (it
/// never sent a key: its stacks' containers are on Docker's own networks, no limit here),
/// `Some(0)` for one that joined but has no subnet.
pub fn address_capacity(member: &OverlayMemberRow) -> Option<u32> {
    member.overlay_public_key.as_ref()?;
    Some(member.subnet.as_deref().map_or(0, |subnet| {
        plan::parse_cidr(subnet)
            .map(|(_, len)| plan::addresses_in(len))
            .unwrap_or(0)
    }))
}

/// Whether a container holds an address of its host's overlay subnet: a stack's container on
/// the overlay network (not `network_mode: host` or `none`), whatever its state but gone — a
/// stopped one needs its address again to start. One whose spec does not read counts (it may
/// hold one).
pub fn holds_address(c: &ContainerRow) -> bool {
    c.stack_id.is_some()
        && c.actual != Actual::Missing
        && serde_json::from_str::<ContainerSpec>(&c.spec)
            .map_or(true, |s| corral_control::define::takes_overlay_address(&s))
}

/// Overlay addresses held per host id.
pub fn addresses_held<'a>(
    containers: impl IntoIterator<Item = &'a ContainerRow>,
) -> HashMap<String, u32> {
    let mut held: HashMap<String, u32> = HashMap::new();
    for c in containers {
        if holds_address(c) {
            *held.entry(c.host_id.clone()).or_default() += 1;
        }
    }
    held
}

/// Whether a host registering in this environment would find a subnet: refused at the door
/// rather than let in to run nothing. Races between two registrations for the last subnet
/// leave the loser without one; `host ls` and the scheduler say so.
pub async fn has_room(state: &AppState, env_id: &str) -> Result<Option<String>, StoreError> {
    let Some(env) = state.store.overlay_env(env_id).await? else {
        return Ok(None);
    };
    let shape = shape(&env)?;
    let leased = state.store.overlay_lease_count(env_id).await?;
    if leased < u64::from(shape.hosts()) {
        return Ok(None);
    }
    Ok(Some(format!(
        "environment {}: its overlay range {} is full ({} host(s) hold a /{} subnet each); grow it with `corral env set-overlay {} --range …` or remove a host",
        env.name,
        shape.range(),
        leased,
        shape.host_prefix(),
        env.name
    )))
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
    // Nothing to record (a host on no overlay) is no write at all.
    if key.is_some() || endpoint.is_some() {
        state
            .store
            .set_host_overlay(&host.id, key, endpoint.as_deref())
            .await?;
    }
    // A reconnecting host has its lease: one indexed lookup, not the environment's leases
    // (nor its row, which only choosing a new lease needs). A host on no overlay (it sent no
    // key: `--no-overlay`) takes no subnet: it would only use up the range.
    if public_key.is_none() || state.store.lease_of(&host.id).await?.is_some() {
        state.overlay.wake();
        return Ok(());
    }
    let Some(env) = state.store.overlay_env(&host.environment_id).await? else {
        return Ok(());
    };
    let _one_at_a_time = state.overlay.leasing.lock().await;
    // Read again under the lock: the shape may have changed while no host held a lease.
    let Some(env) = state.store.overlay_env(&env.id).await? else {
        return Ok(());
    };
    let shape = shape(&env)?;
    loop {
        let leases = state.store.overlay_leases(&env.id).await?;
        if leases.iter().any(|(h, _)| *h == host.id) {
            break;
        }
        let taken: Vec<String> = leases.into_iter().map(|(_, s)| s).collect();
        let Some(subnet) = shape.allocate(&taken) else {
            tracing::error!(environment = %env.name, range = %env.overlay_cidr, "the overlay range is full: no subnet for host {}", host.name);
            state
                .record_event(
                    "overlay_range_full",
                    Some(&host.id),
                    &format!(
                        "host {} got no overlay subnet: the range {} of environment {} is full; it runs no stack container until it has one",
                        host.name, env.overlay_cidr, env.name
                    ),
                )
                .await;
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
        PASS_GAP,
        "overlay sync",
        |s| async move { sync(&s).await },
    )
    .await;
}

/// One pass. It first compares the environments' change counters and the registry's
/// generation with the last complete pass's: when neither moved, it is done (an idle server
/// reads one small table per second and does nothing per host). Otherwise, for each
/// environment with live hosts: the overlay view is recomputed only if its overlay counter
/// moved (O(members), once), the name table only if its names counter moved; then each live
/// connection is sent what it lacks — nothing, a delta of the peers that changed, or a full
/// configuration (a new connection, a change of the environment itself).
async fn sync(state: &AppState) -> Result<(), StoreError> {
    let counters = state.store.change_counters().await?;
    let generation = state.registry.changes();
    if let Some((seen, seen_generation)) = &state.overlay.memory().seen
        && *seen == counters
        && *seen_generation == generation
    {
        return Ok(());
    }
    let live = state.registry.live_sessions();
    let mut by_env: HashMap<&str, Vec<&LiveSession>> = HashMap::new();
    for s in &live {
        by_env.entry(s.environment_id.as_str()).or_default().push(s);
    }
    // False when a message could not be queued: the next tick runs a pass again.
    let mut complete = true;
    for (env_id, sessions) in by_env {
        let counter = counters.get(env_id).copied().unwrap_or_default();
        let view_is_current = state
            .overlay
            .memory()
            .views
            .get(env_id)
            .is_some_and(|(c, _)| *c == counter.overlay);
        if !view_is_current {
            let Some((env, psk)) = env_with_psk(state, env_id).await? else {
                continue;
            };
            let members: Vec<plan::Member> = state
                .store
                .leased_members(env_id)
                .await?
                .iter()
                .map(member)
                .collect();
            let mut memory = state.overlay.memory();
            let (at, view) = memory.views.entry(env_id.to_owned()).or_default();
            *at = counter.overlay;
            view.update(env, psk, members);
        }
        let names_are_current = state
            .overlay
            .memory()
            .names
            .get(env_id)
            .is_some_and(|n| n.counter == counter.names);
        if !names_are_current {
            let table = name_table(state, env_id).await?;
            state.overlay.memory().names.insert(
                env_id.to_owned(),
                EnvNames {
                    counter: counter.names,
                    digest: digest(&table),
                    table,
                },
            );
        }
        let policy_is_current = state
            .overlay
            .memory()
            .policies
            .get(env_id)
            .is_some_and(|p| p.counter == counter.policy);
        if !policy_is_current {
            match policy_message(state, env_id).await {
                Ok(message) => {
                    state.overlay.memory().policies.insert(
                        env_id.to_owned(),
                        EnvPolicy {
                            counter: counter.policy,
                            digest: digest(&message),
                            message,
                        },
                    );
                }
                Err(e) => {
                    // Fail closed: nothing is sent, so every host keeps the rules it has.
                    tracing::error!(environment = %env_id, error = %e, "not sending the network policy");
                    state.overlay.memory().policies.remove(env_id);
                }
            }
        }
        let mut memory = state.overlay.memory();
        let SyncMemory {
            views,
            names,
            sent,
            names_sent,
            policies,
            policies_sent,
            ..
        } = &mut *memory;
        let view = views.get(env_id).map(|(_, v)| v);
        let env_names = names.get(env_id);
        let env_policy = policies.get(env_id);
        for s in sessions {
            // A session still busy with earlier messages (a slow agent) is not sent more, and
            // nothing is built for it: the next pass tries again.
            if !state.registry.has_room(&s.host_id) {
                complete = false;
                continue;
            }
            if let Some(n) = env_names
                && names_sent.get(&s.host_id) != Some(&(s.conn_id, n.digest))
            {
                match state
                    .registry
                    .try_send(&s.host_id, ServerMessage::Names(n.table.clone()))
                {
                    Queued::Yes => {
                        names_sent.insert(s.host_id.clone(), (s.conn_id, n.digest));
                    }
                    _ => complete = false,
                }
            }
            if let Some(p) = env_policy
                && s.capabilities.network_policy
                && policies_sent.get(&s.host_id) != Some(&(s.conn_id, p.digest))
            {
                match state
                    .registry
                    .try_send(&s.host_id, ServerMessage::NetworkPolicy(p.message.clone()))
                {
                    Queued::Yes => {
                        policies_sent.insert(s.host_id.clone(), (s.conn_id, p.digest));
                    }
                    _ => complete = false,
                }
            }
            let Some(view) = view else {
                continue;
            };
            let holds = sent
                .get(&s.host_id)
                .filter(|(conn, _)| *conn == s.conn_id)
                .map(|(_, version)| *version);
            let (message, version) = match view.update_for(
                &s.host_id,
                holds,
                s.capabilities.overlay_deltas,
            ) {
                Ok(Some(Update::Full(config))) => {
                    let version = config.version;
                    (ServerMessage::Overlay(config), version)
                }
                Ok(Some(Update::Delta(delta))) => {
                    let version = delta.to;
                    (ServerMessage::OverlayDelta(delta), version)
                }
                Ok(None) => continue,
                Err(e) => {
                    // Fail closed: no configuration rather than one without the key.
                    tracing::error!(host = %s.host_id, error = %e, "not sending the overlay configuration");
                    continue;
                }
            };
            // A full queue leaves it unrecorded: the next tick sends what is missing then.
            match state.registry.try_send(&s.host_id, message) {
                Queued::Yes => {
                    sent.insert(s.host_id.clone(), (s.conn_id, version));
                }
                _ => complete = false,
            }
        }
    }
    let live_ids: HashSet<&str> = live.iter().map(|s| s.host_id.as_str()).collect();
    let mut memory = state.overlay.memory();
    memory.sent.retain(|h, _| live_ids.contains(h.as_str()));
    memory
        .names_sent
        .retain(|h, _| live_ids.contains(h.as_str()));
    memory
        .policies_sent
        .retain(|h, _| live_ids.contains(h.as_str()));
    memory.seen = complete.then_some((counters, generation));
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
