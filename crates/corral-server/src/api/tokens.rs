//! `/v1/tokens`: create, list, revoke registration tokens.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use corral_proto::api::{CreateToken, TokenView};

use super::access::{Access, Of, check};
use super::{ApiError, Body, Principal, created};
use crate::state::AppState;
use crate::tokens;

#[utoipa::path(
    post,
    operation_id = "tokens_create",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Mint a registration token",
    request_body = CreateToken,
    responses((status = 201, description = "The token and the command that uses it (shown once)", body = corral_proto::api::CreatedToken))
)]
pub(super) async fn create(
    p: Principal,
    State(state): State<Arc<AppState>>,
    body: Body<CreateToken>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let env = req.environment.as_deref().unwrap_or("default");
    check(&p, &state, Of::Env(env), Access::Manage).await?;
    Ok(created(true, tokens::mint_token(&state, req).await?))
}

/// The tokens of the environments the caller owns.
#[utoipa::path(
    get,
    operation_id = "tokens_list",
    path = "/v1/tokens",
    tag = "tokens",
    summary = "Registration tokens",
    responses((status = 200, description = "The tokens (never their secrets)", body = Vec<TokenView>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    let mut all = tokens::list(&state).await?;
    all.retain(|t| {
        p.in_scope(&t.environment)
            && p.role_in(&t.environment)
                .is_some_and(|r| super::access::allows(r, Access::Manage))
    });
    Ok(Json(all))
}

#[utoipa::path(
    delete,
    operation_id = "tokens_revoke",
    path = "/v1/tokens/{id}",
    tag = "tokens",
    summary = "Revoke a registration token",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 204, description = "Revoked"))
)]
pub(super) async fn revoke(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check(&p, &state, Of::Token(&id), Access::Manage).await?;
    tokens::revoke(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
