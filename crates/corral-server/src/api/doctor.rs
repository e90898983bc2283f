//! `POST /v1/hosts/{id}/doctor`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::DoctorReport;

use super::{Admin, ApiError};
use crate::state::AppState;

pub(super) async fn run(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<DoctorReport>, ApiError> {
    Ok(Json(crate::doctor::run(&state, &id).await?))
}
