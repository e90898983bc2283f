//! `/v1/login`, `/v1/whoami`, `/v1/users` (admins) and `/v1/keys` (one's own).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{
    KeyRequest, KeyView, LoginRequest, NewKeyView, PasswordRequest, RoleRequest, UserRequest,
    UserView,
};

use super::audit::Actor;
use super::{Admin, ApiError, Body, Principal};
use crate::state::AppState;
use crate::time_fmt::{now_unix, rfc3339};
use crate::users::{self, LoginRefusal};

/// `POST /v1/login`: no key needed; a user's password for a new key of theirs.
#[utoipa::path(
    post,
    operation_id = "users_login",
    security(()),
    path = "/v1/login",
    tag = "users",
    summary = "Log in with a password; get an API key",
    request_body = LoginRequest,
    responses((status = 201, description = "A new API key (shown once)", body = NewKeyView))
)]
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    body: Body<LoginRequest>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let actor = Actor(format!(
        "{} (login)",
        crate::text::clip(&req.user, crate::text::MAX_ID)
    ));
    let mut response = match users::login(&state, &req, Some(remote.ip())).await {
        Ok(Ok(key)) => (StatusCode::CREATED, Json(key)).into_response(),
        Ok(Err(refusal)) => refused(refusal, remote),
        Err(e) => ApiError::from(e).into_response(),
    };
    response.extensions_mut().insert(actor);
    response
}

/// A refused login as its answer (the same for the CLI's and the web UI's).
pub(super) fn refused(refusal: LoginRefusal, remote: SocketAddr) -> Response {
    match refusal {
        LoginRefusal::Wrong => {
            ApiError::new(StatusCode::UNAUTHORIZED, "wrong user name or password").into_response()
        }
        LoginRefusal::Locked(until) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "the account is locked until {} after repeated failed logins",
                rfc3339(until)
            ),
        )
        .into_response(),
        LoginRefusal::Throttled(until) => {
            let wait = (until - now_unix()).max(1);
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many failed logins from {}; try again after {}",
                    remote.ip(),
                    rfc3339(until)
                ),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
        LoginRefusal::NoRole => ApiError::new(
            StatusCode::FORBIDDEN,
            "the directory accepted the password, but none of the user's groups gives a corral role",
        )
        .into_response(),
        LoginRefusal::DirectoryDown(why) => {
            ApiError::new(StatusCode::BAD_GATEWAY, why).into_response()
        }
    }
}

#[utoipa::path(
    get,
    operation_id = "users_whoami",
    path = "/v1/whoami",
    tag = "users",
    summary = "The caller",
    responses((status = 200, description = "The caller", body = UserView))
)]
pub(super) async fn whoami(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<UserView>, ApiError> {
    Ok(Json(users::whoami(&state, &p.user_id, &p.user_name).await?))
}

#[utoipa::path(
    get,
    operation_id = "users_list",
    path = "/v1/users",
    tag = "users",
    summary = "Users (admins)",
    responses((status = 200, description = "The users", body = Vec<UserView>))
)]
pub(super) async fn list(
    _: Admin,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<UserView>>, ApiError> {
    Ok(Json(users::list(&state).await?))
}

#[utoipa::path(
    post,
    operation_id = "users_create",
    path = "/v1/users",
    tag = "users",
    summary = "Create a user (admins)",
    request_body = UserRequest,
    responses((status = 201, description = "Created", body = UserView))
)]
pub(super) async fn create(
    _: Admin,
    State(state): State<Arc<AppState>>,
    body: Body<UserRequest>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let Json(req) = body?;
    Ok((
        StatusCode::CREATED,
        Json(users::create(&state, &req).await?),
    ))
}

#[utoipa::path(
    delete,
    operation_id = "users_remove",
    path = "/v1/users/{name}",
    tag = "users",
    summary = "Remove a user (admins)",
    params(("name" = String, Path, description = "User name")),
    responses((status = 204, description = "Removed"))
)]
pub(super) async fn remove(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::remove(&state, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One's own password, or anyone's by an admin.
#[utoipa::path(
    put,
    operation_id = "users_set_password",
    path = "/v1/users/{name}/password",
    tag = "users",
    summary = "Set a password (admins, or the user)",
    params(("name" = String, Path, description = "User name")),
    request_body = PasswordRequest,
    responses((status = 204, description = "Set"))
)]
pub(super) async fn set_password(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Body<PasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body?;
    if !p.admin && p.user_name != name {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only an admin sets another user's password",
        ));
    }
    users::set_password(&state, &name, &req.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    put,
    operation_id = "users_set_role",
    path = "/v1/users/{name}/roles/{env}",
    tag = "users",
    summary = "Give a user a role in an environment (admins)",
    params(("name" = String, Path, description = "User name"), ("env" = String, Path, description = "Environment name")),
    request_body = RoleRequest,
    responses((status = 204, description = "Set"))
)]
pub(super) async fn set_role(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path((name, env)): Path<(String, String)>,
    body: Body<RoleRequest>,
) -> Result<StatusCode, ApiError> {
    let Json(req) = body?;
    users::set_role(&state, &name, &env, Some(&req.role)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    delete,
    operation_id = "users_remove_role",
    path = "/v1/users/{name}/roles/{env}",
    tag = "users",
    summary = "Take a user's role in an environment (admins)",
    params(("name" = String, Path, description = "User name"), ("env" = String, Path, description = "Environment name")),
    responses((status = 204, description = "Taken"))
)]
pub(super) async fn remove_role(
    _: Admin,
    State(state): State<Arc<AppState>>,
    Path((name, env)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    users::set_role(&state, &name, &env, None).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    operation_id = "users_keys",
    path = "/v1/keys",
    tag = "users",
    summary = "The caller's API keys",
    responses((status = 200, description = "The keys (never their secrets)", body = Vec<KeyView>))
)]
pub(super) async fn keys(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Json<Vec<KeyView>>, ApiError> {
    Ok(Json(users::keys(&state, &p.user_id).await?))
}

#[utoipa::path(
    post,
    operation_id = "users_create_key",
    path = "/v1/keys",
    tag = "users",
    summary = "Mint an API key for the caller",
    request_body = KeyRequest,
    responses((status = 201, description = "The key (shown once)", body = NewKeyView))
)]
pub(super) async fn create_key(
    p: Principal,
    State(state): State<Arc<AppState>>,
    body: Body<KeyRequest>,
) -> Result<(StatusCode, Json<NewKeyView>), ApiError> {
    let Json(req) = body?;
    let key = users::create_key(&state, &p.user_name, &req.name, req.ttl_secs).await?;
    Ok((StatusCode::CREATED, Json(key)))
}

#[utoipa::path(
    delete,
    operation_id = "users_revoke_key",
    path = "/v1/keys/{id}",
    tag = "users",
    summary = "Revoke an API key",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 204, description = "Revoked"))
)]
pub(super) async fn revoke_key(
    p: Principal,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    users::revoke_key(&state, &p.user_id, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
