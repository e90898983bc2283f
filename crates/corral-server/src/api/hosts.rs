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
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    let mut all = hosts::list(&state).await?;
    all.retain(|h| p.in_scope(&h.environment));
    Ok(Json(all))
}

pub(super) async fn get(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Read).await?;
    Ok(Json(hosts::get(&state, &id).await?))
}

pub(super) async fn remove(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Hosts).await?;
    hosts::remove(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
