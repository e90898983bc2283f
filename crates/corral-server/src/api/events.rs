//! `GET /v1/events`: the latest audit and security events (the newest `limit`, oldest first;
//! 100 by default, at most [`MAX_EVENTS_PER_REQUEST`], so an answer stays near 1 MiB at most).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use corral_proto::api::{EventView, MAX_EVENTS_PER_REQUEST};
use serde::Deserialize;

use super::{ApiError, Params, Principal};
use crate::error::Error;
use crate::state::AppState;
use crate::time_fmt::rfc3339;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    limit: Option<i64>,
}

/// An admin sees every event; anyone else the events of the hosts of their environments.
#[utoipa::path(
    get,
    operation_id = "events_list",
    path = "/v1/events",
    tag = "events",
    summary = "Recent events",
    params(EventsQuery),
    responses((status = 200, description = "The newest events, oldest first", body = Vec<EventView>))
)]
pub(super) async fn list(
    p: Principal,
    State(state): State<Arc<AppState>>,
    q: Params<EventsQuery>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=i64::from(MAX_EVENTS_PER_REQUEST)).contains(&limit) {
        return Err(Error::invalid(format!(
            "limit={limit}: ask for 1 to {MAX_EVENTS_PER_REQUEST} events per request (the newest come back, oldest first)"
        ))
        .into());
    }
    let mut events = state.store.events(limit).await?;
    if !p.admin || p.scope.is_some() {
        let hosts = super::access::host_environments(&state).await?;
        events.retain(|e| {
            e.host_id
                .as_ref()
                .and_then(|h| hosts.get(h))
                .is_some_and(|env| p.in_scope(env))
        });
    }
    Ok(Json(
        events
            .into_iter()
            .map(|e| EventView {
                id: e.id,
                at: rfc3339(e.at),
                kind: e.kind,
                host_id: e.host_id,
                message: e.message,
            })
            .collect(),
    ))
}
