//! `/v1/hosts`: list, show, remove.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use corral_proto::api::HostView;

use super::{Admin, ApiError};
use crate::hosts;
use crate::state::AppState;

pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<HostView>>, ApiError> {
    Ok(Json(hosts::list(&state).await?))
}

pub(super) async fn get(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<HostView>, ApiError> {
    Ok(Json(hosts::get(&state, &id).await?))
}

pub(super) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    hosts::remove(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
