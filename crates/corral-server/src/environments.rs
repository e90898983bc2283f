//! Environments: listing them with their overlay, switching the overlay's mode, rotating its
//! pre-shared key.

use corral_proto::OverlayMode;
use corral_proto::api::{EnvironmentView, RotatedKey};

use crate::error::{Error, Result};
use crate::state::AppState;
use crate::store::Environment;
use crate::time_fmt::{now_unix, rfc3339};

/// Every environment with its overlay's mode, range and key generation.
pub async fn list(state: &AppState) -> Result<Vec<EnvironmentView>> {
    let mut out = Vec::new();
    for e in state.store.environments().await? {
        let overlay = state.store.overlay_env(&e.id).await?;
        let shape = overlay.as_ref().map(crate::overlay::shape).transpose()?;
        let hosts_leased = match overlay {
            Some(_) => {
                usize::try_from(state.store.overlay_lease_count(&e.id).await?).unwrap_or(usize::MAX)
            }
            None => 0,
        };
        out.push(EnvironmentView {
            host_subnet_prefix: shape.map_or(0, |s| s.host_prefix()),
            addresses_per_host: shape.map_or(0, |s| s.addresses_per_host()),
            hosts_capacity: shape.map_or(0, |s| s.hosts()),
            hosts_leased: u32::try_from(hosts_leased).unwrap_or(u32::MAX),
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

/// `corral env create NAME [--range CIDR] [--host-subnet /N] [--mode M]`: a new environment,
/// its overlay's shape checked as `set-overlay` checks it (the default range `10.42.0.0/16`
/// with /24s). Overlay ranges of different environments may overlap: their hosts never peer.
pub async fn create(
    state: &AppState,
    name: &str,
    range: Option<&str>,
    host_subnet: Option<&str>,
    mode: Option<&str>,
) -> Result<EnvironmentView> {
    corral_proto::validate_dns_label("environment name", name).map_err(Error::invalid)?;
    let host_prefix = host_subnet
        .map(corral_control::overlay::parse_host_prefix)
        .transpose()
        .map_err(Error::invalid)?
        .unwrap_or(corral_control::overlay::DEFAULT_HOST_PREFIX);
    let shape = corral_control::overlay::Shape::new(range.unwrap_or(DEFAULT_RANGE), host_prefix)
        .map_err(Error::invalid)?;
    let mode = match mode {
        Some(m) => OverlayMode::parse(m).map_err(|_| {
            Error::invalid(format!(
                "overlay mode {m:?}: expected wireguard (encrypted) or vxlan (unencrypted, for trusted networks)"
            ))
        })?,
        None => OverlayMode::Wireguard,
    };
    let env = state
        .store
        .create_environment(name, &shape.range(), shape.host_prefix(), mode, now_unix())
        .await?
        .ok_or_else(|| Error::Conflict(format!("an environment named {name} exists")))?;
    state
        .record_event(
            "environment_created",
            None,
            &format!(
                "environment {name}: overlay {mode} {} with /{} host subnets",
                shape.range(),
                shape.host_prefix()
            ),
        )
        .await;
    state.overlay.wake();
    list(state)
        .await?
        .into_iter()
        .find(|e| e.id == env.id)
        .ok_or_else(|| Error::Internal(format!("environment {name} vanished as it was made")))
}

/// `corral env rm NAME`: only an environment that holds no host, stack or container; its
/// registration tokens are revoked. `default` stays: it is where commands go without `--env`.
pub async fn remove(state: &AppState, name: &str) -> Result<()> {
    if name == "default" {
        return Err(Error::Conflict(
            "the default environment cannot be removed: it is where commands go without --env"
                .into(),
        ));
    }
    let env = by_name(state, name).await?;
    match state.store.remove_environment(&env, now_unix()).await? {
        crate::store::EnvRemoval::Removed => {
            state
                .record_event(
                    "environment_removed",
                    None,
                    &format!("environment {name} removed; its tokens are revoked"),
                )
                .await;
            Ok(())
        }
        crate::store::EnvRemoval::Holds {
            hosts,
            stacks,
            containers,
        } => {
            let mut left = Vec::new();
            for (what, names, how) in [
                ("host", &hosts, "corral host rm"),
                ("stack", &stacks, "corral down"),
                ("container", &containers, "corral container rm"),
            ] {
                if !names.is_empty() {
                    left.push(format!(
                        "{} {what}(s) ({}) — {how}",
                        names.len(),
                        few(names)
                    ));
                }
            }
            Err(Error::Conflict(format!(
                "environment {name} still holds {}; remove them first",
                left.join("; ")
            )))
        }
    }
}

/// "a, b, c and 4 more".
fn few(names: &[String]) -> String {
    let mut out = names.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if names.len() > 3 {
        out.push_str(&format!(" and {} more", names.len() - 3));
    }
    out
}

/// The overlay range of a new environment unless it names one.
const DEFAULT_RANGE: &str = "10.42.0.0/16";

/// `corral env set-overlay ENV [--range CIDR] [--host-subnet /N]`: a new overlay range, a
/// new size of host subnet, or both, checked together (the range must hold at least one and at
/// most 4,095 hosts). Every lease already given must lie in the new range (hosts keep their
/// subnets; a range that would strand one is refused), so a range can grow, or move before
/// any host has joined. The size of host subnets changes only while no host holds one: every
/// lease of an environment has the same size, and a host's containers are on its subnet.
pub async fn set_overlay_shape(
    state: &AppState,
    name: &str,
    range: Option<&str>,
    host_subnet: Option<&str>,
) -> Result<()> {
    let host_prefix = host_subnet
        .map(corral_control::overlay::parse_host_prefix)
        .transpose()
        .map_err(Error::invalid)?;
    if let Some(range) = range {
        corral_control::overlay::parse_cidr(range).map_err(Error::invalid)?;
    }
    let env = by_name(state, name).await?;
    // No lease is chosen while the shape changes.
    let _no_leasing = state.overlay.leasing.lock().await;
    let current = state
        .store
        .overlay_env(&env.id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("environment {name} has no overlay")))?;
    let current_prefix = crate::overlay::shape(&current)?.host_prefix();
    let prefix = host_prefix.unwrap_or(current_prefix);
    let shape = corral_control::overlay::Shape::new(range.unwrap_or(&current.overlay_cidr), prefix)
        .map_err(Error::invalid)?;
    let leases = state.store.overlay_leases(&env.id).await?;
    if prefix != current_prefix && !leases.is_empty() {
        let names = lease_holders(state, &leases).await?;
        return Err(Error::Conflict(format!(
            "environment {}: {} host(s) already hold a /{current_prefix} subnet ({names}); the size of host subnets is chosen before the first host joins. Remove them (`corral host rm`) to change it",
            env.name,
            leases.len()
        )));
    }
    let outside: Vec<&String> = leases
        .iter()
        .map(|(_, subnet)| subnet)
        .filter(|subnet| !shape.holds(subnet))
        .collect();
    if let Some(first) = outside.first() {
        return Err(Error::Conflict(format!(
            "environment {}: {} lease(s) lie outside {} (e.g. {first}); a new range must hold every host's subnet",
            env.name,
            outside.len(),
            shape.range()
        )));
    }
    if prefix != current_prefix {
        if !state.store.set_overlay_host_prefix(&env.id, prefix).await? {
            return Err(Error::Conflict(format!(
                "environment {}: a host joined meanwhile; the size of host subnets is chosen before the first host joins",
                env.name
            )));
        }
        state
            .record_event(
                "overlay_host_subnet_changed",
                None,
                &format!(
                    "environment {} host subnets /{prefix} ({} containers each, {} hosts)",
                    env.name,
                    corral_control::overlay::thousands(u64::from(shape.addresses_per_host())),
                    corral_control::overlay::thousands(u64::from(shape.hosts()))
                ),
            )
            .await;
    }
    if shape.range() != current.overlay_cidr {
        state
            .store
            .set_overlay_range(&env.id, &shape.range())
            .await?;
        state
            .record_event(
                "overlay_range_changed",
                None,
                &format!("environment {} overlay range {}", env.name, shape.range()),
            )
            .await;
    }
    state.overlay.wake();
    Ok(())
}

/// "h1, h2, h3 and 4 more": who holds these leases (the first leased first).
async fn lease_holders(state: &AppState, leases: &[(String, String)]) -> Result<String> {
    let mut by_subnet: Vec<(u32, &str)> = leases
        .iter()
        .map(|(host_id, subnet)| {
            let at = corral_control::overlay::parse_cidr(subnet)
                .map_or(u32::MAX, |(ip, _)| u32::from(ip));
            (at, host_id.as_str())
        })
        .collect();
    by_subnet.sort_unstable();
    let mut names: Vec<String> = Vec::new();
    for (_, host_id) in by_subnet.into_iter().take(3) {
        names.push(match state.store.find_host(host_id).await {
            Ok(h) => h.name,
            Err(_) => host_id.to_owned(),
        });
    }
    let mut out = names.join(", ");
    if leases.len() > names.len() {
        out.push_str(&format!(" and {} more", leases.len() - names.len()));
    }
    Ok(out)
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
