//! `/v1/hosts`: list, show, remove.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use corral_proto::api::HostView;

use super::access::{Access, Of, check};
use super::{ApiError, Principal};
use crate::hosts;
use crate::state::AppState;

/// The hosts of the environments the caller has a role in.
#[utoipa::path(
    get,
    operation_id = "hosts_list",
    path = "/v1/hosts",
    tag = "hosts",
    summary = "The hosts the caller may see",
    responses((status = 200, description = "The hosts", body = Vec<HostView>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    let mut all = hosts::list(&state).await?;
    all.retain(|h| p.in_scope(&h.environment));
    Ok(Json(all))
}

#[utoipa::path(
    get,
    operation_id = "hosts_get",
    path = "/v1/hosts/{id}",
    tag = "hosts",
    summary = "One host",
    params(("id" = String, Path, description = "Host id or name")),
    responses((status = 200, description = "The host", body = HostView))
)]
pub(super) async fn get(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Read).await?;
    Ok(Json(hosts::get(&state, &id).await?))
}

#[utoipa::path(
    delete,
    operation_id = "hosts_remove",
    path = "/v1/hosts/{id}",
    tag = "hosts",
    summary = "Remove a host (its agent's certificate stops working)",
    params(("id" = String, Path, description = "Host id or name")),
    responses((status = 204, description = "Removed"))
)]
pub(super) async fn remove(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Hosts).await?;
    hosts::remove(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
