//! `GET /v1/topology` (what `corral firewall` and `corral diagram` plan from) and
//! `POST /v1/hosts/{id}/firewall` (apply a host's derived rules).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::{FirewallApplyReport, FirewallApplyRequest};

use super::access::{Access, Of, check};
use super::{ApiError, Body, Principal};
use crate::state::AppState;
use crate::topology;

/// The live topology, cut to the environments the caller has a role in (their hosts,
/// overlays and published ports; the server's own facts stay: every host dials it).
#[utoipa::path(
    get,
    operation_id = "network_topology",
    path = "/v1/topology",
    tag = "network",
    summary = "The deployment's machines, ports and flows",
    responses((status = 200, description = "The topology", body = corral_firewall::Topology))
)]
pub(super) async fn topology(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<corral_firewall::Topology>, ApiError> {
    Ok(Json(scoped_topology(&p, &state).await?))
}

/// The live topology as `p` may see it (see [`topology`]).
pub(super) async fn scoped_topology(
    p: &Principal,
    state: &AppState,
) -> Result<corral_firewall::Topology, ApiError> {
    let mut topo = topology::live(state).await?;
    if !p.admin || p.scope.is_some() {
        topo.hosts
            .retain(|h| h.environment.as_deref().is_some_and(|e| p.in_scope(e)));
        topo.environments.retain(|e| p.in_scope(&e.name));
        let names: std::collections::HashSet<String> =
            topo.hosts.iter().map(|h| h.name.clone()).collect();
        topo.published
            .retain(|port| port.host.as_ref().is_some_and(|h| names.contains(h)));
    }
    Ok(topo)
}

#[utoipa::path(
    post,
    operation_id = "network_apply_firewall",
    path = "/v1/hosts/{id}/firewall",
    tag = "network",
    summary = "Apply (or preview) the host's nftables rules",
    params(("id" = String, Path, description = "Host id or name")),
    request_body = FirewallApplyRequest,
    responses((status = 200, description = "What was (or would be) applied", body = FirewallApplyReport))
)]
pub(super) async fn apply_firewall(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body<FirewallApplyRequest>,
) -> Result<Json<FirewallApplyReport>, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Hosts).await?;
    let Json(req) = body?;
    Ok(Json(topology::apply_firewall(&state, &id, req).await?))
}
