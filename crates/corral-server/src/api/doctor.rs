//! `POST /v1/hosts/{id}/doctor`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use corral_proto::api::DoctorReport;

use super::access::{Access, Of, check};
use super::{ApiError, Principal};
use crate::state::AppState;

#[utoipa::path(
    post,
    operation_id = "doctor_run",
    path = "/v1/hosts/{id}/doctor",
    tag = "hosts",
    summary = "Run the agent's checks on a host",
    params(("id" = String, Path, description = "Host id or name")),
    responses((status = 200, description = "The checks", body = DoctorReport))
)]
pub(super) async fn run(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<DoctorReport>, ApiError> {
    let id = check(&p, &state, Of::Host(&id), Access::Read).await?;
    Ok(Json(crate::doctor::run(&state, &id).await?))
}
