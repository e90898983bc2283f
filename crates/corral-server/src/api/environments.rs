//! `/v1/environments`: list, switch the overlay's mode, rotate its key.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use corral_proto::api::{EnvironmentView, RotatedKey};
use serde::Deserialize;

use super::{Admin, ApiError, Body};
use crate::environments;
use crate::state::AppState;

pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<EnvironmentView>>, ApiError> {
    Ok(Json(environments::list(&state).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OverlayModeBody {
    mode: String,
}

pub(super) async fn set_overlay_mode(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<OverlayModeBody>,
) -> Result<StatusCode, ApiError> {
    let Json(body) = body?;
    environments::set_overlay_mode(&state, &name, &body.mode).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn rotate_key(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<RotatedKey>, ApiError> {
    Ok(Json(environments::rotate_key(&state, &name).await?))
}
