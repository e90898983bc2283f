//! `GET /v1/topology` (what `corral firewall` and `corral diagram` plan from) and
//! `POST /v1/hosts/{id}/firewall` (apply a host's derived rules).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::{FirewallApplyReport, FirewallApplyRequest};

use super::{Admin, ApiError, Body};
use crate::state::AppState;
use crate::topology;

pub(super) async fn topology(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<corral_firewall::Topology>, ApiError> {
    Ok(Json(topology::live(&state).await?))
}

pub(super) async fn apply_firewall(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: Body<FirewallApplyRequest>,
) -> Result<Json<FirewallApplyReport>, ApiError> {
    let Json(req) = body?;
    Ok(Json(topology::apply_firewall(&state, &id, req).await?))
}
