//! Registration tokens: minting one (with the agent command that uses it) and listing them.

use corral_proto::api::{CreateToken, CreatedToken, TokenView};
use corral_proto::secret::SecretKind;

use crate::error::{Error, Result};
use crate::secrets::{SecretHash, new_id, new_secret};
use crate::state::AppState;
use crate::store::TokenRow;
use crate::time_fmt::{now_unix, rfc3339};

/// Default lifetime of a registration token.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Creates a registration token and the agent command that uses it.
pub async fn mint_token(state: &AppState, req: CreateToken) -> Result<CreatedToken> {
    let env_name = req.environment.unwrap_or_else(|| "default".into());
    let env = state
        .store
        .environment_by_name(&env_name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no environment named {env_name:?}")))?;
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
    if ttl > 10 * 365 * 86400 {
        return Err(Error::invalid(
            "ttl must be at most 10 years (0 means the token never expires)",
        ));
    }
    if req.max_uses == Some(0) {
        return Err(Error::invalid(
            "max_uses must be at least 1 (omit it for unlimited uses)",
        ));
    }
    let now = now_unix();
    let secret = new_secret(SecretKind::RegistrationToken);
    let row = TokenRow {
        id: new_id("tok"),
        environment_id: env.id,
        secret_hash: SecretHash::of(&secret).as_bytes().to_vec(),
        created_at: now,
        expires_at: (ttl > 0).then(|| now + ttl as i64),
        max_uses: req.max_uses.map(i64::from),
        uses: 0,
        revoked_at: None,
    };
    state.store.insert_token(&row).await?;
    let command = format!(
        "corral agent --server {} --token {} --ca-checksum {}",
        state.advertise_url, secret, state.checksum
    );
    Ok(CreatedToken {
        id: row.id,
        token: secret,
        command,
        environment: env.name,
        expires_at: row.expires_at.map(rfc3339),
        max_uses: req.max_uses,
    })
}

/// Every token, with its state (`active`, `expired`, `used up`, `revoked`).
pub async fn list(state: &AppState) -> Result<Vec<TokenView>> {
    let now = now_unix();
    let envs = state.store.environments().await?;
    let tokens = state.store.tokens().await?;
    Ok(tokens
        .into_iter()
        .map(|t| {
            let st = if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at.is_some_and(|e| now >= e) {
                "expired"
            } else if t.max_uses.is_some_and(|m| t.uses >= m) {
                "used up"
            } else {
                "active"
            };
            TokenView {
                environment: envs
                    .iter()
                    .find(|e| e.id == t.environment_id)
                    .map(|e| e.name.clone())
                    .unwrap_or_else(|| t.environment_id.clone()),
                id: t.id,
                created_at: rfc3339(t.created_at),
                expires_at: t.expires_at.map(rfc3339),
                max_uses: t.max_uses.map(|m| m as u32),
                uses: t.uses as u32,
                state: st.into(),
            }
        })
        .collect())
}

/// Revokes a token: no host can register with it any more.
pub async fn revoke(state: &AppState, id: &str) -> Result<()> {
    Ok(state.store.revoke_token(id, now_unix()).await?)
}
