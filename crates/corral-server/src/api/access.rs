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

    /// Whether listings show the environment's objects: it sees it, and the request works in
    /// it or in every environment.
    pub fn in_scope(&self, env: &str) -> bool {
        self.sees(env) && self.scope.as_deref().is_none_or(|s| s == env)
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

impl<'a> Of<'a> {
    /// What the route would answer if the object did not exist (what a principal with no role
    /// in its environment gets, so that it learns nothing of it).
    pub(super) fn not_found(self) -> ApiError {
        let (what, name, list) = self.words();
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no {what} {}; list them with `{list}`",
                quoted(name, MAX_ID)
            ),
        )
    }

    fn words(self) -> (&'static str, &'a str, &'static str) {
        match self {
            Of::Env(n) => ("environment", n, "corral env ls"),
            Of::Host(n) => ("host", n, "corral host ls"),
            Of::Container(n) => ("container", n, "corral container ls"),
            Of::Stack(n) => ("stack", n, "corral stack ls"),
            Of::Token(n) => ("registration token", n, "corral token ls"),
        }
    }

    /// Every object it may name — by id, or by name in any environment — with the name of
    /// its environment.
    async fn candidates(self, state: &AppState) -> Result<Vec<Candidate>, ApiError> {
        use crate::store::Named;
        let (kind, id_or_name) = match self {
            Of::Env(name) => {
                return Ok(state
                    .store
                    .environment_by_name(name)
                    .await?
                    .map(|e| Candidate {
                        id: e.name.clone(),
                        environment: e.name,
                    })
                    .into_iter()
                    .collect());
            }
            Of::Token(id) => (Named::Token, id),
            Of::Host(n) => (Named::Host, n),
            Of::Container(n) => (Named::Container, n),
            Of::Stack(n) => (Named::Stack, n),
        };
        Ok(state
            .store
            .named(kind, id_or_name)
            .await?
            .into_iter()
            .map(|(id, environment)| Candidate { id, environment })
            .collect())
    }
}

struct Candidate {
    /// The object's id (an environment's: its name).
    id: String,
    /// The name of its environment.
    environment: String,
}

/// Resolves what a route names to the one object the principal may do `access` to, and
/// returns its id (an environment's name; for an admin naming nothing that exists, the name
/// as given). An id names its object wherever it is; a name is
/// looked up in the request's environment when it names one, else in every environment the
/// principal has a role in, and a name found in several of those is refused (409) with their
/// names. Found nowhere it may look, or only where it has no role: the same 404 as for nothing
/// at all (a user sees nothing of an environment they have no role in). Found, but the role
/// there does not allow `access`: 403.
pub async fn check(
    p: &Principal,
    state: &AppState,
    of: Of<'_>,
    access: Access,
) -> Result<String, ApiError> {
    let (what, id_or_name, _) = of.words();
    let candidates = of.candidates(state).await?;
    if candidates.is_empty() {
        // An admin may do anything anywhere: the route validates its input and answers for
        // the missing object itself. Anyone else learns no more than "not found".
        if p.admin {
            return Ok(id_or_name.to_owned());
        }
        return Err(of.not_found());
    }
    let mut found: Vec<&Candidate> = match candidates.iter().find(|c| c.id == id_or_name) {
        Some(exact) => vec![exact],
        None => candidates.iter().collect(),
    };
    // An environment named outright is where the route acts, whatever the request's scope.
    found.retain(|c| match of {
        Of::Env(_) => p.sees(&c.environment),
        _ => p.in_scope(&c.environment),
    });
    match found.as_slice() {
        [] => Err(of.not_found()),
        [c] => {
            p.require(&c.environment, access)?;
            Ok(c.id.clone())
        }
        many => {
            let mut envs: Vec<&str> = many.iter().map(|c| c.environment.as_str()).collect();
            envs.sort_unstable();
            Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "{} {what}s are named {}, in environments {}: say which with `--env` (or CORRAL_ENV), or use the id",
                    many.len(),
                    quoted(id_or_name, MAX_ID),
                    envs.join(", ")
                ),
            ))
        }
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
    let names = state.store.environment_names().await?;
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
