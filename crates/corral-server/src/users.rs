//! Users, logins, API keys and roles: who may use the API and what they may do.
//!
//! - A user logs in with a password (`login`): checked against its argon2id hash (at most
//!   `logins::HASHES_AT_ONCE` at a time), answered with a new API key of theirs that expires
//!   (30 days by default). Failed logins lock the account for 30 s, doubled per further failure
//!   up to 15 min, from the 5th on; a source address with 20 failures in a minute is refused
//!   (429) for the rest of the minute. An unknown user costs the same hash as a known one.
//! - Every API key belongs to a user and acts as them: an admin may do everything; anyone else
//!   what their role in each environment allows (`access`). A removed user's keys are refused
//!   at once.

use std::net::IpAddr;

use corral_proto::api::{KeyView, LoginRequest, NewKeyView, RoleView, UserRequest, UserView};
use corral_proto::secret::SecretKind;

use crate::error::{Error, Result};
use crate::secrets::{self, SecretHash, new_secret};
use crate::state::AppState;
use crate::state::logins::{BASE_LOCK_SECS, FREE_FAILURES, MAX_LOCK_SECS};
use crate::store::{EnvRole, KeyRow, UserRow};
use crate::text::{MAX_ID, quoted};
use crate::time_fmt::{now_unix, rfc3339};

/// A login key's life unless asked otherwise…
const LOGIN_TTL_SECS: u64 = 30 * 24 * 3600;
/// …and the longest any key may be given.
const MAX_TTL_SECS: u64 = 366 * 24 * 3600;
/// Longest key name.
const MAX_KEY_NAME: usize = 64;

/// Why a login was refused.
#[derive(Debug)]
pub enum LoginRefusal {
    /// Wrong user or password (never says which).
    Wrong,
    /// The account is locked until then (Unix seconds).
    Locked(i64),
    /// This source failed too often; it may try again then.
    Throttled(i64),
    /// The directory accepted the password but none of the user's groups gives a role.
    NoRole,
    /// The directory could not be asked; the text says why.
    DirectoryDown(String),
}

fn key_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_KEY_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "a key name is 1 to {MAX_KEY_NAME} printable characters"
        )));
    }
    Ok(())
}

fn ttl(ttl_secs: Option<u64>, default: Option<u64>) -> Result<Option<i64>> {
    let Some(secs) = ttl_secs.or(default) else {
        return Ok(None);
    };
    if secs == 0 || secs > MAX_TTL_SECS {
        return Err(Error::invalid(format!(
            "a key lives 1 s to {} days",
            MAX_TTL_SECS / 86_400
        )));
    }
    Ok(Some(now_unix() + secs as i64))
}

async fn mint(
    state: &AppState,
    user: &UserRow,
    name: &str,
    expires_at: Option<i64>,
) -> Result<NewKeyView> {
    let key = new_secret(SecretKind::ApiKey);
    let key_id = state
        .store
        .insert_user_key(
            &user.id,
            name,
            &SecretHash::of(&key),
            expires_at,
            now_unix(),
        )
        .await?;
    Ok(NewKeyView {
        key,
        key_id,
        user: user.name.clone(),
        expires_at: expires_at.map(rfc3339),
    })
}

/// `POST /v1/login`.
pub async fn login(
    state: &AppState,
    req: &LoginRequest,
    source: Option<IpAddr>,
) -> Result<std::result::Result<NewKeyView, LoginRefusal>> {
    let now = now_unix();
    if let Some(ip) = source
        && let Some(until) = state.logins.blocked_until(ip, now)
    {
        return Ok(Err(LoginRefusal::Throttled(until)));
    }
    let name = req.key_name.as_deref().unwrap_or("login");
    key_name(name)?;
    let expires_at = ttl(req.ttl_secs, Some(LOGIN_TTL_SECS))?;
    let user = state.store.user_by_name(&req.user).await?;
    if let Some(u) = &user
        && let Some(until) = u.locked_until
        && until > now
    {
        return Ok(Err(LoginRefusal::Locked(until)));
    }
    // A directory user (or someone unknown here) is asked of the directory, when there is one.
    if let Some(cfg) = &state.options.ldap
        && user.as_ref().is_none_or(|u| u.source == "ldap")
        && corral_proto::validate_dns_label("user name", &req.user).is_ok()
    {
        return directory_login(state, cfg, req, user, source, name, expires_at).await;
    }
    let stored = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| secrets::decoy_hash().to_owned());
    let password = req.password.clone();
    let matches = {
        let _permit = login_permit(state).await?;
        tokio::task::spawn_blocking(move || secrets::verify_password(&stored, &password))
            .await
            .map_err(|e| Error::Internal(format!("password check failed: {e}")))?
    };
    match user {
        Some(u) if matches && u.password_hash.is_some() => {
            state.store.login_succeeded(&u.id).await?;
            Ok(Ok(mint(state, &u, name, expires_at).await?))
        }
        other => Ok(Err(failed(state, other.as_ref(), source, now).await?)),
    }
}

/// One of the few login checks (argon2 or a directory bind) that may run at once.
async fn login_permit(state: &AppState) -> Result<tokio::sync::SemaphorePermit<'_>> {
    state
        .logins
        .hashing
        .acquire()
        .await
        .map_err(|_| Error::Internal("the login limiter is closed".into()))
}

/// Counts a failed login (source throttle, and the account's lock when it exists).
async fn failed(
    state: &AppState,
    user: Option<&UserRow>,
    source: Option<IpAddr>,
    now: i64,
) -> Result<LoginRefusal> {
    if let Some(ip) = source {
        state.logins.failed(ip, now);
    }
    if let Some(u) = user
        && let Some(until) = state
            .store
            .login_failed(&u.id, now, FREE_FAILURES, BASE_LOCK_SECS, MAX_LOCK_SECS)
            .await?
    {
        return Ok(LoginRefusal::Locked(until));
    }
    Ok(LoginRefusal::Wrong)
}

async fn directory_login(
    state: &AppState,
    cfg: &crate::ldap::LdapConfig,
    req: &LoginRequest,
    user: Option<UserRow>,
    source: Option<IpAddr>,
    key_name: &str,
    expires_at: Option<i64>,
) -> Result<std::result::Result<NewKeyView, LoginRefusal>> {
    let now = now_unix();
    let answer = {
        // The same bound as password hashes: a flood of logins is not a flood of binds.
        let _permit = login_permit(state).await?;
        crate::ldap::login(cfg, &req.user, &req.password).await
    };
    let found = match answer {
        Ok(found) => found,
        Err(crate::ldap::DirectoryError::Refused) => {
            return Ok(Err(failed(state, user.as_ref(), source, now).await?));
        }
        Err(crate::ldap::DirectoryError::Unavailable(why)) => {
            tracing::error!(error = %why, "directory login failed");
            return Ok(Err(LoginRefusal::DirectoryDown(why)));
        }
    };
    let Some(u) = state
        .store
        .sync_directory_user(&req.user, found.admin, &found.roles, now)
        .await?
    else {
        return Ok(Err(LoginRefusal::Wrong));
    };
    if !found.admin && found.roles.is_empty() {
        return Ok(Err(LoginRefusal::NoRole));
    }
    state.store.login_succeeded(&u.id).await?;
    Ok(Ok(mint(state, &u, key_name, expires_at).await?))
}

async fn view(state: &AppState, u: &UserRow) -> Result<UserView> {
    let roles = state
        .store
        .memberships(&u.id)
        .await?
        .into_iter()
        .map(|(environment, role)| RoleView {
            environment,
            role: role.as_str().to_owned(),
        })
        .collect();
    let now = now_unix();
    Ok(UserView {
        name: u.name.clone(),
        admin: u.admin,
        roles,
        password: u.password_hash.is_some(),
        locked_until: u.locked_until.filter(|t| *t > now).map(rfc3339),
        created_at: rfc3339(u.created_at),
    })
}

pub async fn whoami(state: &AppState, user_id: &str, user_name: &str) -> Result<UserView> {
    let u = by_name(state, user_name).await?;
    if u.id != user_id {
        return Err(Error::NotFound(format!("user {user_name} was replaced")));
    }
    view(state, &u).await
}

async fn by_name(state: &AppState, name: &str) -> Result<UserRow> {
    state.store.user_by_name(name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no user {}; list them with `corral user ls`",
            quoted(name, MAX_ID)
        ))
    })
}

pub async fn list(state: &AppState) -> Result<Vec<UserView>> {
    let mut out = Vec::new();
    for u in state.store.users().await? {
        out.push(view(state, &u).await?);
    }
    Ok(out)
}

pub async fn create(state: &AppState, req: &UserRequest) -> Result<UserView> {
    corral_proto::validate_dns_label("user name", &req.name).map_err(Error::invalid)?;
    let hash = match &req.password {
        Some(p) => {
            secrets::check_new_password(p).map_err(Error::invalid)?;
            Some(hash(p).await?)
        }
        None => None,
    };
    let u = state
        .store
        .create_user(&req.name, hash.as_deref(), req.admin, now_unix())
        .await?
        .ok_or_else(|| Error::Conflict(format!("a user named {} exists", req.name)))?;
    view(state, &u).await
}

async fn hash(password: &str) -> Result<String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || secrets::hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))?
        .map_err(Error::Internal)
}

/// Removes a user: their keys stop working at once. The last admin stays.
pub async fn remove(state: &AppState, name: &str) -> Result<()> {
    let u = by_name(state, name).await?;
    if u.admin && state.store.count_admins().await? <= 1 {
        return Err(Error::Conflict(format!(
            "{name} is the last admin; make another admin first"
        )));
    }
    state.store.remove_user(&u.id, now_unix()).await?;
    Ok(())
}

/// A new password: for oneself, or anyone's by an admin.
pub async fn set_password(state: &AppState, name: &str, password: &str) -> Result<()> {
    secrets::check_new_password(password).map_err(Error::invalid)?;
    let u = by_name(state, name).await?;
    let h = hash(password).await?;
    state.store.set_password(&u.id, &h).await?;
    Ok(())
}

/// Gives a user a role in an environment (or takes it away with `None`).
pub async fn set_role(state: &AppState, name: &str, env: &str, role: Option<&str>) -> Result<()> {
    let u = by_name(state, name).await?;
    let env = state.store.environment_by_name(env).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no environment {}; list them with `corral env ls`",
            quoted(env, MAX_ID)
        ))
    })?;
    let role = role
        .map(|r| {
            EnvRole::parse(r).ok_or_else(|| {
                Error::invalid(format!(
                    "role {}: expected owner, member, restricted or read-only",
                    quoted(r, MAX_ID)
                ))
            })
        })
        .transpose()?;
    state.store.set_membership(&u.id, &env.id, role).await?;
    Ok(())
}

/// A new key of the caller.
pub async fn create_key(
    state: &AppState,
    user_name: &str,
    name: &str,
    ttl_secs: Option<u64>,
) -> Result<NewKeyView> {
    key_name(name)?;
    let expires_at = ttl(ttl_secs, None)?;
    let u = by_name(state, user_name).await?;
    mint(state, &u, name, expires_at).await
}

pub async fn keys(state: &AppState, user_id: &str) -> Result<Vec<KeyView>> {
    let now = now_unix();
    Ok(state
        .store
        .user_keys(user_id)
        .await?
        .into_iter()
        .map(|k: KeyRow| KeyView {
            state: if k.revoked_at.is_some() {
                "revoked"
            } else if k.expires_at.is_some_and(|t| t <= now) {
                "expired"
            } else {
                "active"
            }
            .into(),
            id: k.id,
            name: k.name,
            created_at: rfc3339(k.created_at),
            expires_at: k.expires_at.map(rfc3339),
        })
        .collect())
}

pub async fn revoke_key(state: &AppState, user_id: &str, key_id: &str) -> Result<()> {
    if !state
        .store
        .revoke_user_key(user_id, key_id, now_unix())
        .await?
    {
        return Err(Error::NotFound(format!(
            "you have no active key {}; list yours with `corral key ls`",
            quoted(key_id, MAX_ID)
        )));
    }
    Ok(())
}
