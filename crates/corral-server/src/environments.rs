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

/// The largest overlay range (smallest prefix) an environment may have: 4,095 hosts, whose
/// full configuration (about 200 bytes per peer) stays under the 1 MiB tunnel message limit.
const MIN_RANGE_PREFIX: u8 = 12;

/// `corral env set-overlay ENV --range CIDR`: a new overlay range for the environment. Every
/// lease already given must lie in it (hosts keep their subnets; a range that would strand one
/// is refused), so a range can grow, or move before any host has joined.
pub async fn set_overlay_range(state: &AppState, name: &str, range: &str) -> Result<()> {
    let (base, prefix) = corral_control::overlay::parse_cidr(range).map_err(Error::invalid)?;
    if prefix > 23 {
        return Err(Error::invalid(format!(
            "overlay range {range}: hosts get a /24 each, so the range must be a /23 or larger (a /16 holds 255 hosts, a /12 4,095)"
        )));
    }
    if prefix < MIN_RANGE_PREFIX {
        return Err(Error::invalid(format!(
            "overlay range {range}: at most a /{MIN_RANGE_PREFIX} (4,095 hosts): every host is every other's peer, and a host's configuration with more peers would not fit in one tunnel message"
        )));
    }
    let env = by_name(state, name).await?;
    let outside: Vec<String> = state
        .store
        .overlay_leases(&env.id)
        .await?
        .into_iter()
        .filter(|(_, subnet)| !corral_control::overlay::contains(base, prefix, subnet))
        .map(|(_, subnet)| subnet)
        .collect();
    if !outside.is_empty() {
        return Err(Error::Conflict(format!(
            "environment {}: {} lease(s) lie outside {range} (e.g. {}); a new range must hold every host's subnet",
            env.name,
            outside.len(),
            outside[0]
        )));
    }
    let normalised = format!("{base}/{prefix}");
    state.store.set_overlay_range(&env.id, &normalised).await?;
    state
        .record_event(
            "overlay_range_changed",
            None,
            &format!("environment {} overlay range {normalised}", env.name),
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
