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
    #[serde(default)]
    mode: Option<String>,
    /// A new overlay range (`10.64.0.0/12`); every existing lease must lie in it.
    #[serde(default)]
    range: Option<String>,
    /// The size of every host's subnet (`/22`), while no host holds one.
    #[serde(default)]
    host_subnet: Option<String>,
}

pub(super) async fn set_overlay_mode(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<OverlayModeBody>,
) -> Result<StatusCode, ApiError> {
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

pub(super) async fn rotate_key(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<RotatedKey>, ApiError> {
    Ok(Json(environments::rotate_key(&state, &name).await?))
}
