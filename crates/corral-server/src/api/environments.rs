//! `/v1/environments`: list, create, remove, change the overlay (mode, range, host subnet
//! size), rotate its key.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use corral_proto::api::{EnvironmentView, RotatedKey};
use serde::Deserialize;

use super::access::{Access, Of, check};
use super::{Admin, ApiError, Body, Principal};
use crate::environments;
use crate::state::AppState;

/// The environments the caller has a role in.
#[utoipa::path(
    get,
    operation_id = "environments_list",
    path = "/v1/environments",
    tag = "environments",
    summary = "The environments the caller has a role in",
    responses((status = 200, description = "The environments", body = Vec<EnvironmentView>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    let mut all = environments::list(&state).await?;
    all.retain(|e| p.sees(&e.name));
    Ok(Json(all))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct OverlayModeBody {
    #[serde(default)]
    mode: Option<String>,
    /// A new overlay range (`10.64.0.0/12`); every existing lease must lie in it.
    #[serde(default)]
    range: Option<String>,
    /// The size of every host's subnet (`/22`), while no host holds one.
    #[serde(default)]
    host_subnet: Option<String>,
}

#[utoipa::path(
    post,
    operation_id = "environments_set_overlay_mode",
    path = "/v1/environments/{name}/overlay",
    tag = "environments",
    summary = "Change the overlay mode, range or host subnet size",
    params(("name" = String, Path, description = "Environment name")),
    request_body = OverlayModeBody,
    responses((status = 204, description = "Changed"))
)]
pub(super) async fn set_overlay_mode(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<OverlayModeBody>,
) -> Result<StatusCode, ApiError> {
    check(&p, &state, Of::Env(&name), Access::Manage).await?;
    let Json(body) = body?;
    if body.mode.is_none() && body.range.is_none() && body.host_subnet.is_none() {
        return Err(crate::error::Error::invalid(
            "say what to change: mode, range, host_subnet or several",
        )
        .into());
    }
    if body.range.is_some() || body.host_subnet.is_some() {
        environments::set_overlay_shape(
            &state,
            &name,
            body.range.as_deref(),
            body.host_subnet.as_deref(),
        )
        .await?;
    }
    if let Some(mode) = &body.mode {
        environments::set_overlay_mode(&state, &name, mode).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateBody {
    name: String,
    #[serde(default)]
    range: Option<String>,
    #[serde(default)]
    host_subnet: Option<String>,
    #[serde(default)]
    mode: Option<String>,
}

/// `POST /v1/environments`: a new environment (201 with its view).
#[utoipa::path(
    post,
    operation_id = "environments_create",
    path = "/v1/environments",
    tag = "environments",
    summary = "Create an environment (admins)",
    request_body = CreateBody,
    responses((status = 201, description = "Created", body = EnvironmentView))
)]
pub(super) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Body<CreateBody>,
) -> Result<(StatusCode, Json<EnvironmentView>), ApiError> {
    let Json(b) = body?;
    let view = environments::create(
        &state,
        &b.name,
        b.range.as_deref(),
        b.host_subnet.as_deref(),
        b.mode.as_deref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// `DELETE /v1/environments/{name}`: refused (409) while it holds hosts, stacks or containers.
#[utoipa::path(
    delete,
    operation_id = "environments_remove",
    path = "/v1/environments/{name}",
    tag = "environments",
    summary = "Remove an empty environment (admins)",
    params(("name" = String, Path, description = "Environment name")),
    responses((status = 204, description = "Removed"))
)]
pub(super) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    environments::remove(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    post,
    operation_id = "environments_rotate_key",
    path = "/v1/environments/{name}/rotate-key",
    tag = "environments",
    summary = "Rotate the overlay pre-shared key",
    params(("name" = String, Path, description = "Environment name")),
    responses((status = 200, description = "The new key generation", body = RotatedKey))
)]
pub(super) async fn rotate_key(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<RotatedKey>, ApiError> {
    check(&p, &state, Of::Env(&name), Access::Manage).await?;
    Ok(Json(environments::rotate_key(&state, &name).await?))
}
