//! The web UI: its page and assets (built into the binary, no build step), the browser's
//! session (`POST /ui/login`, `GET /ui/session`, `POST /ui/logout`), the live feed the pages
//! follow (`GET /v1/live`, server-sent events) and the drawings and rule sets the network page
//! shows (`GET /v1/diagram.svg`, `GET /v1/firewall`).
//!
//! Security, in one place:
//! - A session is a new API key of the user (12 h) in a `__Host-` cookie that is HttpOnly,
//!   Secure and SameSite=Strict; the key the user typed (password or API key) is not kept.
//! - Every request with the cookie that changes state carries the session's CSRF token
//!   ([`corral_proto::api::CSRF_HEADER`]), derived from the key, which only the page can read
//!   (`GET /ui/session`, same origin); without it the request is refused (`api::authenticate`).
//! - The page runs under a Content Security Policy that allows only its own script and style
//!   (no inline script, no `eval`), and builds every element with `textContent`: names, log
//!   lines and messages are text, never markup. Drawings come as `<img>` (no script runs in
//!   one). No response may be framed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use corral_proto::api::{
    CSRF_HEADER, LoginRequest, RoleView, WEB_SESSION_COOKIE, WEB_SESSION_SECS, WebLoginRequest,
    WebSessionView,
};
use serde::Deserialize;

use super::audit::Actor;
use super::{ApiError, Body, Params, Principal};
use crate::state::AppState;
use crate::users;

const INDEX_HTML: &str = include_str!("../../ui/index.html");
const APP_JS: &str = include_str!("../../ui/app.js");
const APP_CSS: &str = include_str!("../../ui/app.css");

/// The page's policy: its own script, style and images (and drawings handed to `<img>` as
/// blobs), requests to its own origin only, no plugins, no frames, no inline code.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Most browsers following the live feed at once; beyond, `503` (each holds a connection).
pub const MAX_LIVE_FOLLOWERS: usize = 1_000;

/// A keep-alive comment this often, so that proxies do not close an idle feed.
const LIVE_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(25);

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    r
}

/// `GET /ui/` (and `/`): the page.
pub(super) async fn index() -> Response {
    let mut r = asset("text/html; charset=utf-8", INDEX_HTML);
    r.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    r
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

/// Headers every answer carries: no content sniffing, no framing, no referrer; an answer
/// that set no policy of its own gets one that allows nothing (an API answer opened in a
/// tab runs nothing).
pub(super) async fn harden(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; sandbox"),
        );
    }
    r
}

/// The session key in the request's cookie, if any.
pub(super) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == WEB_SESSION_COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// The session's CSRF token: a digest of its key, so the server keeps nothing for it and only
/// someone who can read the key (the server) or the session answer (the page) knows it.
fn csrf_of(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("corral web csrf\0{key}").as_bytes(),
    );
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether the request carries the CSRF token of the session `key`.
pub(super) fn csrf_matches(headers: &HeaderMap, key: &str) -> bool {
    let Some(sent) = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    // Compared as digests: equal length, and the time taken says nothing about the token.
    let a = ring::digest::digest(&ring::digest::SHA256, sent.as_bytes());
    let b = ring::digest::digest(&ring::digest::SHA256, csrf_of(key).as_bytes());
    a.as_ref() == b.as_ref()
}

fn session_cookie_header(key: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{WEB_SESSION_COOKIE}={key}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .ok()
}

fn roles(p: &Principal) -> Vec<RoleView> {
    p.roles
        .iter()
        .map(|(environment, role)| RoleView {
            environment: environment.clone(),
            role: role.as_str().to_owned(),
        })
        .collect()
}

/// `POST /ui/login`: a user's password or an API key for a browser session.
pub(super) async fn login(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    peer: Option<axum::Extension<crate::relay::ConnectionPeer>>,
    body: Body<WebLoginRequest>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ttl = Some(WEB_SESSION_SECS);
    let (minted, actor) = match (&req.user, &req.password, &req.key) {
        (Some(user), Some(password), None) => {
            let actor = Actor(format!(
                "{} (web login)",
                crate::text::clip(user, crate::text::MAX_ID)
            ));
            let login = LoginRequest {
                user: user.clone(),
                password: password.clone(),
                key_name: Some("web".to_owned()),
                ttl_secs: ttl,
            };
            match users::login(&state, &login, Some(remote.ip())).await {
                Ok(Ok(key)) => (key, actor),
                Ok(Err(refusal)) => {
                    let mut r = super::users::refused(refusal, remote);
                    r.extensions_mut().insert(actor);
                    return r;
                }
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        (None, None, Some(key)) => {
            let p = match super::authenticate_key(key.trim(), &state).await {
                Ok(p) => p,
                Err(e) => return e.into_response(),
            };
            let actor = Actor(format!(
                "{} (web login with key {})",
                crate::text::clip(&p.user_name, crate::text::MAX_ID),
                p.key_id
            ));
            match users::create_key(&state, &p.user_name, "web", ttl).await {
                Ok(k) => (k, actor),
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        _ => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "log in with `user` and `password`, or with `key` (an API key) alone",
            )
            .into_response();
        }
    };
    let p = match super::authenticate_key(&minted.key, &state).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let view = WebSessionView {
        user: p.user_name.clone(),
        admin: p.admin,
        roles: roles(&p),
        csrf: csrf_of(&minted.key),
        expires_at: minted.expires_at.clone(),
    };
    // Logged in: the connection no longer counts as unauthenticated (it carries the page's
    // requests from now on, over HTTP/2 all of them).
    state
        .gate
        .authenticated(peer.map_or(remote, |axum::Extension(p)| p.0));
    let mut r = (StatusCode::CREATED, Json(view)).into_response();
    if let Some(cookie) = session_cookie_header(&minted.key, WEB_SESSION_SECS) {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.extensions_mut().insert(actor);
    r
}

/// `GET /ui/session`: who the browser's cookie is, with the CSRF token to send (for a
/// bearer key, the token that key would need in a cookie: nothing its holder lacks). No key
/// at all is not an error but "not logged in" (`204`): the login page asks this on every
/// visit, and a refusal would be recorded each time; a key that does not work is refused.
pub(super) async fn session(
    State(state): State<Arc<AppState>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    peer: Option<axum::Extension<crate::relay::ConnectionPeer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(presented) = super::presented_key(&headers)? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let p = super::authenticate_key(&presented.key, &state).await?;
    state
        .gate
        .authenticated(peer.map_or(remote, |axum::Extension(p)| p.0));
    let view = WebSessionView {
        user: p.user_name.clone(),
        admin: p.admin,
        roles: roles(&p),
        csrf: csrf_of(&presented.key),
        expires_at: None,
    };
    let mut r = Json(view).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// `POST /ui/logout`: ends the session (its key is revoked) and clears the cookie.
pub(super) async fn logout(
    p: Principal,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Only a browser session ends here: a bearer key is removed with `corral key rm`.
    if !super::presented_key(&headers)?.is_some_and(|k| k.via_cookie) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "only a web session logs out here; remove an API key with `corral key rm ID`",
        ));
    }
    users::revoke_key(&state, &p.user_id, &p.key_id).await?;
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Some(cookie) = session_cookie_header("", 0) {
        r.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(r)
}

/// `GET /v1/live`: server-sent events; `change` whenever something a page shows may have
/// changed (at most about once a second), then the page reads its data again. The stream
/// ends when the key stops working.
#[utoipa::path(
    get,
    operation_id = "ui_live",
    path = "/v1/live",
    tag = "network",
    summary = "Server-sent events: what changed, as it changes",
    responses((status = 200, description = "An event stream: `hello` first, then `change` whenever the state the caller may see changed (data: its version number)", body = LiveEvent, content_type = "text/event-stream"))
)]
pub(super) async fn live(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    if state.live.followers() >= MAX_LIVE_FOLLOWERS {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_LIVE_FOLLOWERS} pages already follow the live feed; try again later"),
        ));
    }
    let rx = state.live.follow();
    let keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + LIVE_KEEPALIVE, LIVE_KEEPALIVE);
    let first = axum::body::Bytes::from(format!(
        "retry: 3000\nevent: hello\ndata: {}\n\n",
        *rx.borrow()
    ));
    let stream = futures_util::stream::unfold(
        (rx, keepalive, Some(first)),
        |(mut rx, mut keepalive, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::io::Error>(first), (rx, keepalive, None)));
            }
            tokio::select! {
                changed = rx.changed() => {
                    changed.ok()?;
                    let version = *rx.borrow_and_update();
                    let chunk = axum::body::Bytes::from(format!("event: change\ndata: {version}\n\n"));
                    Some((Ok(chunk), (rx, keepalive, None)))
                }
                _ = keepalive.tick() => {
                    Some((Ok(axum::body::Bytes::from_static(b": keep-alive\n\n")), (rx, keepalive, None)))
                }
            }
        },
    );
    let body = super::access::revocable(
        state.clone(),
        p.key_id.clone(),
        axum::body::Body::from_stream(stream),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// `GET /v1/diagram.svg`: the port-flow diagram of what the caller may see, as `corral
/// diagram` draws it.
#[utoipa::path(
    get,
    operation_id = "ui_diagram",
    path = "/v1/diagram.svg",
    tag = "network",
    summary = "The deployment's diagram",
    responses((status = 200, description = "SVG", body = String, content_type = "image/svg+xml"))
)]
pub(super) async fn diagram(
    p: Principal,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let topo = super::network::scoped_topology(&p, &state).await?;
    let svg = corral_firewall::diagram(&topo, corral_firewall::DiagramFormat::Svg);
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
            // Opened on its own, the drawing runs nothing and loads nothing.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; sandbox",
            ),
        ],
        svg,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct FirewallQuery {
    /// A format of `corral firewall --format` (markdown, aws-json, nftables, …); absent: the
    /// plan's flows as JSON (the web UI's table).
    #[serde(default)]
    format: Option<String>,
    /// `server`, `host` or `all` (default).
    #[serde(default)]
    role: Option<String>,
    /// One machine (a host's name), for the per-machine formats.
    #[serde(default)]
    host: Option<String>,
}

/// One event of `/v1/live`, as the document describes it (the stream itself is written as
/// text by `live`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // read by the document only
pub(super) struct LiveEvent {
    /// `hello` (first) or `change`.
    event: String,
    /// The state's version number.
    data: String,
    /// Milliseconds to wait before reconnecting (on `hello`).
    retry: Option<u64>,
}

/// `GET /v1/firewall`: the least-privilege rules of what the caller may see, as `corral
/// firewall` derives them: the flows as JSON, or one format's text to download.
#[utoipa::path(
    get,
    operation_id = "ui_firewall",
    path = "/v1/firewall",
    tag = "network",
    summary = "Least-privilege firewall rules of what the caller may see",
    params(FirewallQuery),
    responses((status = 200, description = "The flows as JSON (no format), or the format's text", body = Object))
)]
pub(super) async fn firewall(
    p: Principal,
    State(state): State<Arc<AppState>>,
    q: Params<FirewallQuery>,
) -> Result<Response, ApiError> {
    use corral_firewall::{Role, Scope};
    let topo = super::network::scoped_topology(&p, &state).await?;
    let Query(q) = q?;
    let plan = corral_firewall::plan(&topo).map_err(|e| {
        let problems: Vec<String> = e.problems().iter().map(ToString::to_string).collect();
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("cannot derive the rules: {}", problems.join("; ")),
        )
    })?;
    let Some(format) = q.format else {
        let warnings: Vec<String> = plan.warnings.iter().map(ToString::to_string).collect();
        return Ok(Json(serde_json::json!({
            "flows": plan.flows,
            "warnings": warnings,
        }))
        .into_response());
    };
    let format: corral_firewall::Format =
        format
            .parse()
            .map_err(|e: corral_firewall::render::UnknownFormat| {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            })?;
    let scope = Scope {
        role: match q.role.as_deref() {
            None | Some("all") => Role::All,
            Some("server") => Role::Server,
            Some("host") => Role::Host,
            Some(other) => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "role {} is not one of server, host, all",
                        crate::text::quoted(other, crate::text::MAX_ID)
                    ),
                ));
            }
        },
        host: q.host,
    };
    let text = corral_firewall::render(&plan, format, &scope)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))?;
    let disposition = format!(
        "attachment; filename=\"corral-firewall.{}\"",
        format.extension()
    );
    let mut r = ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response();
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}
