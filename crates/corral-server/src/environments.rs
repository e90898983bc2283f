//! Environments: listing them with their overlay, switching the overlay's mode, rotating its
//! pre-shared key.

use corral_proto::OverlayMode;
use corral_proto::api::{EnvironmentView, RotatedKey};

use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::Environment;
use crate::time_fmt::rfc3339;

/// Every environment with its overlay's mode, range and key generation.
pub async fn list(state: &AppState) -> Result<Vec<EnvironmentView>> {
    let mut out = Vec::new();
    for e in state.store.environments().await? {
        let overlay = state.store.overlay_env(&e.id).await?;
        out.push(EnvironmentView {
            overlay_mode: overlay
                .as_ref()
                .map(|o| o.overlay_mode.as_str().to_owned())
                .unwrap_or_default(),
            overlay_cidr: overlay
                .as_ref()
                .map(|o| o.overlay_cidr.clone())
                .unwrap_or_default(),
            overlay_key_generation: overlay
                .map(|o| u32::try_from(o.overlay_psk_generation).unwrap_or(0))
                .unwrap_or(0),
            id: e.id,
            name: e.name,
            created_at: rfc3339(e.created_at),
        });
    }
    Ok(out)
}

async fn by_name(state: &AppState, name: &str) -> Result<Environment> {
    state.store.environment_by_name(name).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no environment {name:?}; list them with `corral env ls`"
        ))
    })
}

/// `corral env set-overlay ENV --mode wireguard|vxlan`.
pub async fn set_overlay_mode(state: &AppState, name: &str, mode: &str) -> Result<()> {
    let mode = OverlayMode::parse(mode).map_err(|_| {
        Error::invalid(format!(
            "overlay mode {mode:?}: expected wireguard (encrypted) or vxlan (unencrypted, for trusted networks)"
        ))
    })?;
    let env = by_name(state, name).await?;
    state.store.set_overlay_mode(&env.id, mode).await?;
    state
        .record_event(
            "overlay_mode_changed",
            None,
            &format!("environment {} overlay mode {mode}", env.name),
        )
        .await;
    state.overlay.wake();
    Ok(())
}

/// `corral env rotate-key ENV`: a new pre-shared key, pushed to every agent at once.
pub async fn rotate_key(state: &AppState, name: &str) -> Result<RotatedKey> {
    let env = by_name(state, name).await?;
    let generation = crate::overlay::rotate(state, &env.id).await?;
    state
        .record_event(
            "overlay_key_rotated",
            None,
            &format!(
                "environment {} overlay key generation {generation}",
                env.name
            ),
        )
        .await;
    Ok(RotatedKey {
        environment: env.name,
        generation: u32::try_from(generation).unwrap_or(0),
    })
}
