//! What a principal may do where. Every route names the access it needs and the environment it
//! acts in (from its path, its body, or the object it names: a host, container, stack or token
//! belongs to one); listings show only the environments the principal has a role in.
//!
//! | role (per environment) | `Read` | `Operate` | `Hosts` | `Manage` |
//! |---|---|---|---|---|
//! | read-only  | yes | | | |
//! | restricted | yes | yes | | |
//! | member     | yes | yes | yes | |
//! | owner      | yes | yes | yes | yes |
//!
//! Admins may do everything everywhere, and alone what belongs to no environment (users,
//! environments themselves, the audit log, metrics, events of no host).

use axum::http::StatusCode;

use super::{ApiError, Principal};
use crate::state::AppState;
use crate::store::EnvRole;
use crate::text::{MAX_ID, quoted};

/// What a route does in an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Listings, details, logs, diagrams, firewall export, doctor, policy show/test.
    Read,
    /// Deploy, scale, update, remove stacks; run, start, stop, remove containers.
    Operate,
    /// Host operations: remove a host, apply its firewall, pull or remove its images.
    Hosts,
    /// The environment's settings: tokens, overlay, key rotation, registries, admission and
    /// network policies.
    Manage,
}

impl Access {
    fn least_role(self) -> EnvRole {
        match self {
            Access::Read => EnvRole::ReadOnly,
            Access::Operate => EnvRole::Restricted,
            Access::Hosts => EnvRole::Member,
            Access::Manage => EnvRole::Owner,
        }
    }
}

/// Whether `role` allows `access` (roles are ordered from owner down to read-only).
pub fn allows(role: EnvRole, access: Access) -> bool {
    role <= access.least_role()
}

impl Principal {
    /// The principal's role in the environment (an admin's: owner everywhere).
    pub fn role_in(&self, env: &str) -> Option<EnvRole> {
        if self.admin {
            return Some(EnvRole::Owner);
        }
        self.roles
            .iter()
            .find(|(name, _)| name == env)
            .map(|(_, r)| *r)
    }

    /// Whether it may see the environment at all.
    pub fn sees(&self, env: &str) -> bool {
        self.role_in(env).is_some()
    }

    /// `access` in `env`, else 403 naming the role it has and the one it needs — or, when it
    /// has none there, 404 as for an environment that does not exist (a user sees nothing of an
    /// environment they have no role in).
    pub fn require(&self, env: &str, access: Access) -> Result<(), ApiError> {
        match self.role_in(env) {
            Some(role) if allows(role, access) => Ok(()),
            Some(role) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "user {} is {} in environment {}; this needs {} or more",
                    quoted(&self.user_name, MAX_ID),
                    role.as_str(),
                    quoted(env, MAX_ID),
                    access.least_role().as_str()
                ),
            )),
            None => Err(Of::Env(env).not_found()),
        }
    }
}

/// What a route acts on: an environment by name, or an object that belongs to one.
#[derive(Debug, Clone, Copy)]
pub enum Of<'a> {
    Env(&'a str),
    Host(&'a str),
    Container(&'a str),
    Stack(&'a str),
    Token(&'a str),
}

impl Of<'_> {
    /// What the route would answer if the object did not exist (what a principal with no role
    /// in its environment gets, so that it learns nothing of it).
    fn not_found(self) -> ApiError {
        let (what, name, list) = match self {
            Of::Env(n) => ("environment", n, "corral env ls"),
            Of::Host(n) => ("host", n, "corral host ls"),
            Of::Container(n) => ("container", n, "corral container ls"),
            Of::Stack(n) => ("stack", n, "corral stack ls"),
            Of::Token(n) => ("token", n, "corral token ls"),
        };
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no {what} {}; list them with `{list}`",
                quoted(name, MAX_ID)
            ),
        )
    }

    /// The name of the environment it is or belongs to; `None` when there is no such object.
    async fn environment(self, state: &AppState) -> Result<Option<String>, ApiError> {
        use crate::store::StoreError;
        let env_id = match self {
            Of::Env(name) => return Ok(Some(name.to_owned())),
            Of::Host(n) => state.store.find_host(n).await.map(|h| h.environment_id),
            Of::Container(n) => state
                .store
                .find_container(n)
                .await
                .map(|c| c.environment_id),
            Of::Stack(n) => state.store.find_stack(n).await.map(|s| s.environment_id),
            Of::Token(id) => {
                let tokens = state.store.tokens().await?;
                match tokens.into_iter().find(|t| t.id == id) {
                    Some(t) => Ok(t.environment_id),
                    None => Err(StoreError::NotFound(id.to_owned())),
                }
            }
        };
        match env_id {
            Ok(id) => Ok(Some(state.store.environment_name(&id).await?)),
            Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// Checks that `p` may do `access` to `of`. No role in its environment, or no such object:
/// the same 404 (a user sees nothing of an environment they have no role in). Admins pass,
/// and the route then answers for a missing object itself.
pub async fn check(
    p: &Principal,
    state: &AppState,
    of: Of<'_>,
    access: Access,
) -> Result<(), ApiError> {
    if p.admin {
        return Ok(());
    }
    match of.environment(state).await? {
        Some(env) if p.sees(&env) => p.require(&env, access),
        _ => Err(of.not_found()),
    }
}

/// Operate somewhere (build contexts are content-addressed and shared: whoever may deploy
/// in some environment may upload one).
pub fn operates_somewhere(p: &Principal) -> Result<(), ApiError> {
    if p.admin || p.roles.iter().any(|(_, r)| allows(*r, Access::Operate)) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "user {} may deploy in no environment",
            quoted(&p.user_name, MAX_ID)
        ),
    ))
}

/// Host id → its environment's name, from the host rows alone (listings filter by it; the
/// hosts' full views, which read every container, are not needed for that).
pub async fn host_environments(
    state: &AppState,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let names: std::collections::HashMap<String, String> = state
        .store
        .environments()
        .await?
        .into_iter()
        .map(|e| (e.id, e.name))
        .collect();
    Ok(state
        .store
        .hosts(false)
        .await?
        .into_iter()
        .filter_map(|h| Some((h.id, names.get(&h.environment_id)?.clone())))
        .collect())
}

/// Admins only.
pub fn admin_only(p: &Principal) -> Result<(), ApiError> {
    if p.admin {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        format!(
            "user {} is not an admin, and this needs one",
            quoted(&p.user_name, MAX_ID)
        ),
    ))
}

/// A streamed response (a log that follows) that ends as soon as the key that opened it stops
/// working — revoked, expired, or its user removed — checked every second whether or not
/// bytes flow, so a removed user's open streams close within a second. A datastore failure
/// ends it too (fail closed). Dropping the inner stream cancels it on the agent.
pub fn revocable(
    state: std::sync::Arc<AppState>,
    key_id: String,
    body: axum::body::Body,
) -> axum::body::Body {
    use futures_util::StreamExt;
    const NOTE: &[u8] = b"\n[corral: the API key of this stream no longer works; stream closed]\n";
    let inner = body.into_data_stream();
    let tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let stream =
        futures_util::stream::unfold(Some((inner, tick, state, key_id)), |open| async move {
            let (mut inner, mut tick, state, key_id) = open?;
            loop {
                tokio::select! {
                    chunk = inner.next() => {
                        return chunk.map(|c| (c, Some((inner, tick, state, key_id))));
                    }
                    _ = tick.tick() => {
                        let live = state
                            .store
                            .key_live(&key_id, crate::time_fmt::now_unix())
                            .await
                            .unwrap_or(false);
                        if !live {
                            return Some((Ok(axum::body::Bytes::from_static(NOTE)), None));
                        }
                    }
                }
            }
        });
    axum::body::Body::from_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_allows_what_its_row_says() {
        use Access::*;
        let table = [
            (EnvRole::ReadOnly, [true, false, false, false]),
            (EnvRole::Restricted, [true, true, false, false]),
            (EnvRole::Member, [true, true, true, false]),
            (EnvRole::Owner, [true, true, true, true]),
        ];
        for (role, row) in table {
            for (access, want) in [Read, Operate, Hosts, Manage].into_iter().zip(row) {
                assert_eq!(allows(role, access), want, "{role:?} {access:?}");
            }
        }
    }
}
