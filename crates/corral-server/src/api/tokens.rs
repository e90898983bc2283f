//! `/v1/tokens`: create, list, revoke registration tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use corral_proto::api::{CreateToken, TokenView};

use super::{Admin, ApiError, Body, created};
use crate::state::AppState;
use crate::tokens;

pub(super) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Body<CreateToken>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    Ok(created(true, tokens::mint_token(&state, req).await?))
}

pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(tokens::list(&state).await?))
}

pub(super) async fn revoke(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    tokens::revoke(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
