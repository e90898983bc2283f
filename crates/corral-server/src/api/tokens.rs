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

pub(super) async fn revoke(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    check(&p, &state, Of::Token(&id), Access::Manage).await?;
    tokens::revoke(&state, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
