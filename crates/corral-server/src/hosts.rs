//! Hosts as the API shows them (registered facts beside live tunnel state), and their
//! removal.

use corral_proto::CloseReason;
use corral_proto::api::HostView;

use crate::error::Result;
use crate::state::AppState;
use std::collections::HashMap;

use crate::store::{ContainerRow, HostRow, OverlayMemberRow};
use crate::time_fmt::{now_unix, rfc3339};

/// What the views need of the hosts' overlay: each member's subnet and address capacity, and
/// the addresses held on each host.
struct OverlayFacts {
    members: HashMap<String, OverlayMemberRow>,
    held: HashMap<String, u32>,
}

impl OverlayFacts {
    async fn read(
        state: &AppState,
        env_ids: &[&str],
        containers: &[ContainerRow],
    ) -> Result<OverlayFacts> {
        let mut members = HashMap::new();
        for env_id in env_ids {
            for m in state.store.overlay_members(env_id).await? {
                members.insert(m.id.clone(), m);
            }
        }
        Ok(OverlayFacts {
            members,
            held: crate::overlay::addresses_held(containers),
        })
    }
}

fn host_view(
    state: &AppState,
    h: HostRow,
    env_names: &[(String, String)],
    overlay: &OverlayFacts,
) -> Result<HostView> {
    let live = state.registry.info(&h.id);
    let member = overlay.members.get(&h.id);
    let overlay_subnet = member.and_then(|m| m.subnet.clone());
    let overlay_addresses_total = member.and_then(crate::overlay::address_capacity);
    let overlay_addresses_used =
        overlay_addresses_total.map(|_| overlay.held.get(&h.id).copied().unwrap_or(0));
    let labels = h.labels()?;
    Ok(HostView {
        environment: env_names
            .iter()
            .find(|(id, _)| *id == h.environment_id)
            .map(|(_, n)| n.clone())
            .unwrap_or_else(|| h.environment_id.clone()),
        state: if live.is_some() {
            "active"
        } else {
            "disconnected"
        }
        .into(),
        last_seen_at: rfc3339(live.as_ref().map(|l| l.last_rx).unwrap_or(h.last_seen_at)),
        connected_since: live.as_ref().map(|l| rfc3339(l.connected_at)),
        docker: live.as_ref().and_then(|l| l.docker.clone()),
        remote_addr: live.map(|l| l.remote).unwrap_or(h.remote_addr),
        id: h.id,
        name: h.name,
        labels,
        agent_version: h.agent_version,
        hostname: h.hostname,
        os: h.os,
        kernel: h.kernel,
        arch: h.arch,
        registered_at: rfc3339(h.registered_at),
        overlay_subnet,
        overlay_addresses_used,
        overlay_addresses_total,
    })
}

async fn env_names(state: &AppState) -> Result<Vec<(String, String)>> {
    Ok(state
        .store
        .environments()
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect())
}

/// Every host that was not removed.
pub async fn list(state: &AppState) -> Result<Vec<HostView>> {
    let envs = env_names(state).await?;
    let env_ids: Vec<&str> = envs.iter().map(|(id, _)| id.as_str()).collect();
    let containers = state.store.containers().await?;
    let overlay = OverlayFacts::read(state, &env_ids, &containers).await?;
    let hosts = state.store.hosts(false).await?;
    hosts
        .into_iter()
        .map(|h| host_view(state, h, &envs, &overlay))
        .collect()
}

/// One host, by id or name.
pub async fn get(state: &AppState, id_or_name: &str) -> Result<HostView> {
    let envs = env_names(state).await?;
    let h = state.store.find_host(id_or_name).await?;
    let containers = state.store.host_containers(&h.id).await?;
    let overlay = OverlayFacts::read(state, &[h.environment_id.as_str()], &containers).await?;
    host_view(state, h, &envs, &overlay)
}

/// Removes a host: its credential is revoked, its open commands fail, and its tunnel is closed
/// with the reason.
pub async fn remove(state: &AppState, id_or_name: &str) -> Result<()> {
    let h = state.store.find_host(id_or_name).await?;
    state.store.remove_host(&h.id, now_unix()).await?;
    state.overlay.wake();
    crate::dispatch::fail_host(state, &h.id, "the host was removed").await;
    state.registry.close(
        &h.id,
        CloseReason::HostRemoved,
        format!(
            "host {} ({}) was removed by an operator; its credential is revoked. The agent stops; to bring the host back, delete its state dir and register it again with a new token",
            h.name, h.id
        ),
    );
    Ok(())
}
