//! Hosts as the API shows them (registered facts beside live tunnel state), and their
//! removal.

use corral_proto::CloseReason;
use corral_proto::api::HostView;

use crate::error::Result;
use crate::state::AppState;
use crate::store::HostRow;
use crate::time_fmt::{now_unix, rfc3339};

fn host_view(
    state: &AppState,
    h: HostRow,
    env_names: &[(String, String)],
    leases: &[(String, String)],
) -> Result<HostView> {
    let live = state.registry.info(&h.id);
    let overlay_subnet = leases
        .iter()
        .find(|(id, _)| *id == h.id)
        .map(|(_, s)| s.clone());
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
    let leases = state.store.all_overlay_leases().await?;
    let hosts = state.store.hosts(false).await?;
    hosts
        .into_iter()
        .map(|h| host_view(state, h, &envs, &leases))
        .collect()
}

/// One host, by id or name.
pub async fn get(state: &AppState, id_or_name: &str) -> Result<HostView> {
    let envs = env_names(state).await?;
    let leases = state.store.all_overlay_leases().await?;
    let h = state.store.find_host(id_or_name).await?;
    host_view(state, h, &envs, &leases)
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
