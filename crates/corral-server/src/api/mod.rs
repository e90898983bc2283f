//! The HTTP layer: routes, API-key authentication, and the mapping of the server's domain
//! errors to status codes. Each resource's handlers live in a submodule and only translate:
//! path, query and body in; a call to the module that owns the operation; JSON or a status
//! out. Nothing below this layer knows HTTP, and no module imports this one.
//!
//! Every `/v1/` route except the agent tunnel needs an API key (`Authorization: Bearer
//! crl_key_…`). An agent credential or a registration token is refused with 403 on all of them:
//! a credential authorizes only its own tunnel at `/v1/connect`.

mod access;
mod audit;
mod containers;
mod doctor;
mod environments;
mod events;
mod hosts;
mod images;
mod metrics;
mod netpolicy;
mod network;
mod openapi;
mod servers;
mod stacks;
mod tokens;
mod ui;
mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use corral_proto::api::ErrorBody;
use corral_proto::secret::SecretKind;

use crate::error::{Error, Progress};
use crate::secrets::SecretHash;
use crate::state::AppState;

/// Largest API request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    let (v1, document) = openapi::router().split_for_parts();
    let document: Arc<[u8]> = openapi::finish(document).into();
    v1.route(
        "/v1/openapi.json",
        get(move || {
            let document = Arc::clone(&document);
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    document.to_vec(),
                )
            }
        }),
    )
    .route("/healthz", get(healthz))
    .route("/", get(|| async { axum::response::Redirect::to("/ui/") }))
    .route(
        "/ui",
        get(|| async { axum::response::Redirect::to("/ui/") }),
    )
    .route("/ui/", get(ui::index))
    .route("/ui/app.js", get(ui::script))
    .route("/ui/app.css", get(ui::style))
    .route("/ui/login", post(ui::login))
    .route("/ui/logout", post(ui::logout))
    .route("/ui/session", get(ui::session))
    .route("/metrics", get(metrics::metrics))
    .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
    .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
    .layer(axum::middleware::map_response(ui::harden))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        audit::record,
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::observe,
    ))
    .layer(axum::middleware::map_request(relayed_client))
    .with_state(state)
}

/// A request that came through another server of the deployment (`relay`) is the client's,
/// not that server's: its address — for login throttling, the audit log and a tunnel's
/// overlay endpoint — is the one the relaying server vouched for.
async fn relayed_client(mut req: axum::extract::Request) -> axum::extract::Request {
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut()
            .insert(crate::relay::ConnectionPeer(peer));
    }
    if let Some(crate::relay::RelayedFrom(from)) = req.extensions().get().copied() {
        req.extensions_mut().insert(ConnectInfo(from));
    }
    req
}

/// What the connection gate knows a request's connection by (see `relay::ConnectionPeer`).
pub(crate) fn gate_peer(extensions: &axum::http::Extensions, client: SocketAddr) -> SocketAddr {
    extensions
        .get::<crate::relay::ConnectionPeer>()
        .map_or(client, |p| p.0)
}

/// An error answer: a status and a message that says what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let note = audit::ErrorNote(self.message.clone());
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        // For the audit log, which sees only the finished response.
        response.extensions_mut().insert(note);
        response
    }
}

/// A body that is not the JSON a route takes: axum's status and explanation.
impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

/// A query string that is not what a route takes (an unknown parameter, a bad value).
impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::new(e.status(), e.body_text())
    }
}

/// `ok` while the server can read its datastore; 503 with the reason when it cannot (a load
/// balancer then sends requests to another server).
async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(std::time::Duration::from_secs(5), state.store.ping()).await {
        Ok(Ok(())) => "ok\n".into_response(),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: the datastore cannot be read: {e}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "unhealthy: the datastore did not answer within 5 s\n",
        )
            .into_response(),
    }
}

/// The one place a domain error becomes an HTTP status.
impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Agent(_) => StatusCode::BAD_GATEWAY,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Store(s) if s.is_unreachable() => {
                tracing::error!(error = %e, "the datastore cannot be reached");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the datastore cannot be reached: the request was not carried out (a write cut off while it committed may have been; look before retrying). /healthz answers ok again once it is back",
                );
            }
            Error::Store(_) | Error::Internal(_) => {
                tracing::error!(error = %e, "server failure");
                return ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server failed; see the server log",
                );
            }
        };
        ApiError::new(status, e.to_string())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Error::from(e).into()
    }
}

/// `201 Created` (or `200 OK` when `created` is false) with a JSON body.
fn created<T: serde::Serialize>(created: bool, body: T) -> Response {
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    (status, Json(body)).into_response()
}

/// Done: `done` with the body; accepted and still under way: `202 Accepted`.
fn progress<T: serde::Serialize>(p: Progress<T>, done: StatusCode) -> Response {
    match p {
        Progress::Done(body) => (done, Json(body)).into_response(),
        Progress::Accepted(body) => (StatusCode::ACCEPTED, Json(body)).into_response(),
    }
}

/// The JSON body of a route, or the rejection as an [`ApiError`]. Bodies refuse fields they
/// do not know, and the rejection names the field.
type Body<T> = Result<Json<T>, JsonRejection>;

/// The query parameters of a route, or the rejection as an [`ApiError`]; as strict as bodies.
type Params<T> = Result<Query<T>, QueryRejection>;

/// Who a request acts as: the user whose valid (not revoked, not expired) API key it carried.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub user_name: String,
    pub admin: bool,
    pub key_id: String,
    pub key_name: String,
    /// Its role in each environment it has one in (by name); unused for an admin.
    pub roles: Vec<(String, crate::store::EnvRole)>,
    /// The environment the request works in ([`corral_proto::api::ENVIRONMENT_HEADER`]), one
    /// the principal has a role in; `None`: all of them.
    pub scope: Option<String>,
}

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let mut principal = authenticate(parts, state).await?;
        principal.scope = scope(&parts.headers, &principal, state).await?;
        // An authenticated connection no longer counts against the cap on unauthenticated
        // ones (and is never closed by it).
        if let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            state
                .gate
                .authenticated(gate_peer(&parts.extensions, *addr));
        }
        Ok(principal)
    }
}

/// Proof that the request carried a valid API key of an admin.
pub struct Admin;

impl FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let p = Principal::from_request_parts(parts, state).await?;
        if !p.admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "user {} is not an admin, and this needs one",
                    crate::text::quoted(&p.user_name, crate::text::MAX_ID)
                ),
            ));
        }
        Ok(Admin)
    }
}

/// The environment the request names in its header, if any: a valid name of an environment
/// the principal has a role in (an admin: of one that exists) — any other is answered as one
/// that does not exist.
async fn scope(
    headers: &HeaderMap,
    p: &Principal,
    state: &AppState,
) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(corral_proto::api::ENVIRONMENT_HEADER) else {
        return Ok(None);
    };
    let bad = |why: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the {} header {why}", corral_proto::api::ENVIRONMENT_HEADER),
        )
    };
    let name = value
        .to_str()
        .map_err(|_| bad("is not valid text".to_owned()))?;
    corral_proto::validate_dns_label("environment name", name).map_err(bad)?;
    let known = if p.admin {
        state.store.environment_by_name(name).await?.is_some()
    } else {
        p.sees(name)
    };
    if !known {
        return Err(access::Of::Env(name).not_found());
    }
    Ok(Some(name.to_owned()))
}

/// The key a request presents: its `Authorization: Bearer` header, else the web UI's
/// session cookie.
pub(super) struct Presented {
    pub key: String,
    /// It came in the session cookie: a request that changes state must also carry the
    /// session's CSRF token.
    pub via_cookie: bool,
}

/// The key the request presents, if any; a malformed `Authorization` header is an error (a
/// cookie beside it is not looked at).
pub(super) fn presented_key(headers: &HeaderMap) -> Result<Option<Presented>, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(ui::session_cookie(headers).map(|key| Presented {
            key,
            via_cookie: true,
        }));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not valid text"))?;
    // The scheme is case-insensitive (RFC 7235).
    let key = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("Bearer"))
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <API key>`"))?
        .1
        .trim();
    Ok(Some(Presented {
        key: key.to_owned(),
        via_cookie: false,
    }))
}

async fn authenticate(parts: &Parts, state: &AppState) -> Result<Principal, ApiError> {
    let presented = presented_key(&parts.headers)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing API key: send `Authorization: Bearer <key>` (the CLI reads CORRAL_API_KEY or the key `corral login` saved; the server's admin.env holds one), or log in to the web UI",
        )
    })?;
    // A browser sends the cookie with any request to this origin, including one a page of
    // another site makes it send: a request that changes state must prove it came from the
    // web UI's own page, which alone can read the token.
    let safe = matches!(
        parts.method,
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if presented.via_cookie && !safe && !ui::csrf_matches(&parts.headers, &presented.key) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "a request of the web UI that changes state needs the session's CSRF token in the {} header",
                corral_proto::api::CSRF_HEADER
            ),
        ));
    }
    authenticate_key(&presented.key, state).await
}

/// The principal an API key acts as, or why it acts as nobody.
pub(super) async fn authenticate_key(key: &str, state: &AppState) -> Result<Principal, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
    match SecretKind::of(key) {
        Some(SecretKind::HostCredential) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "an agent credential authorizes only its own tunnel (/v1/connect), never the API; use an API key",
            ));
        }
        Some(SecretKind::RegistrationToken) => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a registration token can only register a host; use an API key for the API",
            ));
        }
        _ => {}
    }
    let Some(k) = state.store.key_auth(&SecretHash::of(key)).await? else {
        return Err(unauthorized(
            "unknown API key: check CORRAL_API_KEY (or log in again with `corral login`)",
        ));
    };
    if k.user_removed {
        return Err(unauthorized(&format!(
            "user {} was removed; their keys are revoked",
            crate::text::quoted(&k.user_name, crate::text::MAX_ID)
        )));
    }
    if k.revoked_at.is_some() {
        return Err(unauthorized("this API key was revoked"));
    }
    if let Some(at) = k.expires_at
        && at <= crate::time_fmt::now_unix()
    {
        return Err(unauthorized(&format!(
            "this API key expired at {}; log in again with `corral login`",
            crate::time_fmt::rfc3339(at)
        )));
    }
    let roles = if k.admin {
        Vec::new()
    } else {
        state.store.memberships(&k.user_id).await?
    };
    Ok(Principal {
        user_id: k.user_id,
        user_name: k.user_name,
        admin: k.admin,
        key_id: k.key_id,
        key_name: k.key_name,
        roles,
        scope: None,
    })
}

/// The agent tunnel: a WebSocket upgrade, done here rather than by axum's extractor so that the
/// session owns the stream under the WebSocket (after an over-size frame it reads on and
/// discards the rest; see `tunnel::serve`).
#[utoipa::path(
    get,
    operation_id = "connect",
    security(()),
    path = "/v1/connect",
    tag = "agents",
    summary = "The agent tunnel (a WebSocket; agents authenticate in their first message)",
    responses(
        (status = 101, description = "Switched to the agent protocol"),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorBody)
    )
)]
async fn connect(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    mut req: axum::extract::Request,
) -> Response {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "/v1/connect is the agents' tunnel: a WebSocket upgrade (`corral agent` opens it)",
        )
        .into_response();
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return ApiError::new(StatusCode::BAD_REQUEST, "Sec-WebSocket-Version must be 13")
            .into_response();
    }
    let Some(accept) = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| tungstenite::handshake::derive_accept_key(k.as_bytes()))
    else {
        return ApiError::new(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing")
            .into_response();
    };
    let peer = gate_peer(req.extensions(), remote);
    // From here it is an agent at work, not an idle connection: the gate keeps it until its
    // hello is admitted (a reconnect storm's admissions queue for the datastore).
    state.gate.tunnel_asked(peer);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let limit = state.options.max_message_bytes;
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit))
        // Small buffers: an idle tunnel must cost little, so one server holds many thousands.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limit * 2);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    hyper_util::rt::TokioIo::new(upgraded),
                    tungstenite::protocol::Role::Server,
                    Some(config),
                )
                .await;
                crate::tunnel::serve(state, socket, remote, peer).await;
            }
            Err(e) => tracing::debug!(%remote, error = %e, "a tunnel upgrade failed"),
        }
    });
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    match header::HeaderValue::from_str(&accept) {
        Ok(v) => {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
    response
}
