//! The deployment's network as the firewall planner and the diagram see it, and applying a
//! host's derived rules through its agent.

use std::net::SocketAddr;
use std::time::Duration;

use corral_proto::api::{FirewallApplyReport, FirewallApplyRequest};
use corral_proto::{FirewallApply, OverlayMode};

use crate::dispatch::{self, CallError};
use crate::error::{Error, Result};
use crate::state::AppState;

/// A URL's host as the rules' address: an IP literal other than loopback (a name is resolved
/// by whoever applies the rules; loopback says nothing about the network).
fn routable_address(host: &str) -> Vec<std::net::IpAddr> {
    host.trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .ok()
        .filter(|ip| !ip.is_loopback())
        .into_iter()
        .collect()
}

/// The deployment as the firewall planner and the diagram see it, from live state: the
/// server's listener and advertised URL, every host with the address its tunnel comes from
/// (loopback addresses are left out: they say nothing about the network), its labels and
/// environment, and every environment with its overlay mode.
pub async fn live(state: &AppState) -> Result<corral_firewall::Topology> {
    use corral_firewall::topology as t;
    let listen = state.options.listen;
    let mut server = t::Server::at(Vec::new());
    server.name = "corral".into();
    if !listen.ip().is_unspecified() {
        server.listen_addresses = vec![listen.ip()];
    }
    server.listen_port = state.local_port;
    server.advertised_url = Some(state.advertise_url.clone());
    // On PostgreSQL the server dials its database: that flow is in the rules too (its address
    // when the URL gives one other than loopback; a name is resolved by whoever applies the
    // rules).
    if let Some((host, port)) = state.options.datastore.as_ref().map(|u| u.host_port()) {
        server.datastore = Some(t::Datastore {
            name: "postgres".into(),
            addresses: routable_address(host),
            port,
        });
    }
    // The other servers of the deployment (seen in the last hour): they relay to this one,
    // the active one (only the active one answers the API).
    let since = crate::time_fmt::now_unix_millis() - 3_600_000;
    for other in state.store.servers_seen_since(since).await? {
        if other.active {
            continue;
        }
        let Some(host) = url::Url::parse(&other.peer_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
        else {
            continue;
        };
        let host = host.trim_matches(['[', ']']).to_owned();
        server.replicas.push(t::Machine {
            addresses: routable_address(&host),
            name: host,
        });
    }
    let envs = state.store.environments().await?;
    let mut topo = corral_firewall::Topology::new(server);
    for e in &envs {
        // The rules follow each environment's overlay mode (51820/udp encrypted, or 4789/udp).
        let vxlan = state
            .store
            .overlay_env(&e.id)
            .await?
            .is_some_and(|o| o.overlay_mode == OverlayMode::Vxlan);
        topo.environments.push(t::Environment {
            name: e.name.clone(),
            overlay: if vxlan {
                t::Overlay::Vxlan {
                    port: corral_firewall::topology::DEFAULT_VXLAN_PORT,
                }
            } else {
                t::Overlay::default()
            },
        });
    }
    for h in state.store.hosts(false).await? {
        let remote = state
            .registry
            .info(&h.id)
            .map(|l| l.remote)
            .unwrap_or_else(|| h.remote_addr.clone());
        let addresses = remote
            .parse::<SocketAddr>()
            .ok()
            .map(|a| a.ip().to_canonical())
            .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
            .into_iter()
            .collect();
        topo.hosts.push(t::Host {
            environment: envs
                .iter()
                .find(|e| e.id == h.environment_id)
                .map(|e| e.name.clone()),
            labels: h.labels()?,
            name: h.name,
            addresses,
            role: None,
        });
    }
    Ok(topo)
}

/// Extra time the API waits beyond an agent's dead-man window.
const FIREWALL_SLACK: Duration = Duration::from_secs(20);

/// `corral firewall apply HOST`: derive the host's rules from live state and have its agent
/// install them, with its dead-man rollback.
pub async fn apply_firewall(
    state: &AppState,
    id: &str,
    req: FirewallApplyRequest,
) -> Result<FirewallApplyReport> {
    let h = state.store.find_host(id).await?;
    if state.registry.info(&h.id).is_none() {
        return Err(Error::conflict(format!(
            "host {} is disconnected: rules are applied by its agent, which must be connected",
            h.name
        )));
    }
    let window = req.confirm_within_secs.unwrap_or(60);
    if !(1..=3600).contains(&window) {
        return Err(Error::invalid(
            "the confirmation window must be between 1 s and 1 h",
        ));
    }
    let mut topo = live(state).await?;
    topo.admin_cidrs = req.admin_cidrs;
    if !req.api_cidrs.is_empty() {
        topo.api_cidrs = Some(req.api_cidrs);
    }
    let plan = corral_firewall::plan(&topo).map_err(|e| {
        let problems: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        Error::invalid(format!("cannot derive the rules: {}", problems.join("; ")))
    })?;
    let ruleset = corral_firewall::render(
        &plan,
        corral_firewall::Format::Nftables,
        &corral_firewall::Scope::host(&h.name),
    )
    .map_err(|e| Error::invalid(e.to_string()))?;
    let request = FirewallApply {
        ruleset: ruleset.clone(),
        dry_run: req.dry_run,
        confirm_within_secs: window,
    };
    let ttl = Duration::from_secs(window) + FIREWALL_SLACK;
    let (applied, message) = match dispatch::call(state, &h.id, request, ttl).await {
        Ok(_) if req.dry_run => (
            false,
            "dry run: the ruleset loads on the host (nft -c); nothing changed".to_string(),
        ),
        Ok(outcome) => (
            true,
            format!(
                "applied as table inet corral; the agent reached the server through the new rules after {} ms",
                outcome.confirmed_after_ms.unwrap_or(0)
            ),
        ),
        Err(CallError::Failed(message)) => (false, message),
        Err(CallError::Store(e)) => return Err(e.into()),
        Err(e @ CallError::Unreadable { .. }) => (false, e.to_string()),
        Err(CallError::Expired | CallError::Abandoned) => (
            false,
            "the agent did not answer in time; if the rules were applied and not confirmed, the agent rolls them back by itself".to_string(),
        ),
    };
    Ok(FirewallApplyReport {
        host: h.name,
        dry_run: req.dry_run,
        applied,
        message,
        ruleset,
    })
}
