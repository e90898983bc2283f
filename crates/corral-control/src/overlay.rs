//! The overlay's plan: which /24 each host leases, and the configuration each host runs.

use std::net::Ipv4Addr;

use corral_proto::{OverlayConfig, OverlayMode, OverlayPeer};

/// An environment's overlay, as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayEnv {
    /// The environment's name.
    pub name: String,
    /// Encrypted or not.
    pub mode: OverlayMode,
    /// The environment's range, e.g. `10.42.0.0/16`.
    pub cidr: String,
    /// Bumped by every rotation of the pre-shared key.
    pub psk_generation: u32,
}

/// A host as a member of its environment's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The host's id.
    pub id: String,
    /// The host's name.
    pub name: String,
    /// Its X25519 public key, once its agent has sent one.
    pub public_key: Option<String>,
    /// Where its overlay socket was last seen (`ip:port`).
    pub endpoint: Option<String>,
    /// Its /24 lease.
    pub subnet: Option<String>,
}

/// Why no configuration can be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The encrypted mode without its key: sending the configuration anyway would downgrade
    /// the overlay to no pre-shared key without anyone noticing.
    #[error("environment {0}: the overlay is encrypted but its pre-shared key is unavailable")]
    MissingKey(String),
}

/// `A.B.C.D/P` (IPv4 only).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{s:?} is not an IPv4 range like 10.42.0.0/16");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Ok((Ipv4Addr::from(u32::from(ip) & mask), prefix))
}

/// The first /24 of `cidr` not in `taken` (the range's first /24 is skipped, so no host
/// network starts at the range's base address). `None` when the range is full or smaller
/// than two /24s.
pub fn allocate(cidr: &str, taken: &[String]) -> Option<String> {
    let (base, prefix) = parse_cidr(cidr).ok()?;
    if prefix > 23 {
        return None;
    }
    let count = 1u32 << (24 - prefix);
    (1..count)
        .map(|i| format!("{}/24", Ipv4Addr::from(u32::from(base) + (i << 8))))
        .find(|s| !taken.contains(s))
}

/// 64 hex digits.
pub fn valid_public_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What host `me` should run: every other member with a key and a lease is a peer. `None`
/// until `me` has a lease; an error when the encrypted mode has no key to send.
pub fn config_for(
    env: &OverlayEnv,
    me: &Member,
    members: &[Member],
    psk_hex: Option<String>,
) -> Result<Option<OverlayConfig>, PlanError> {
    let Some(subnet) = me.subnet.clone() else {
        return Ok(None);
    };
    let psk = match env.mode {
        OverlayMode::Wireguard => {
            Some(psk_hex.ok_or_else(|| PlanError::MissingKey(env.name.clone()))?)
        }
        OverlayMode::Vxlan => None,
    };
    let peers = members
        .iter()
        .filter(|m| m.id != me.id)
        .filter_map(|m| {
            Some(OverlayPeer {
                host_id: m.id.clone(),
                name: m.name.clone(),
                public_key: m.public_key.clone()?,
                endpoint: m.endpoint.clone(),
                subnet: m.subnet.clone()?,
            })
        })
        .collect();
    Ok(Some(OverlayConfig {
        environment: env.name.clone(),
        mode: env.mode,
        cidr: env.cidr.clone(),
        subnet,
        psk,
        psk_generation: env.psk_generation,
        peers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, key: Option<&str>, subnet: Option<&str>) -> Member {
        Member {
            id: id.into(),
            name: id.into(),
            public_key: key.map(Into::into),
            endpoint: Some("192.0.2.11:51820".into()),
            subnet: subnet.map(Into::into),
        }
    }

    #[test]
    fn leases_are_the_first_free_24s_of_the_range() {
        assert_eq!(
            allocate("10.42.0.0/16", &[]).as_deref(),
            Some("10.42.1.0/24")
        );
        let taken = vec!["10.42.1.0/24".to_string(), "10.42.3.0/24".to_string()];
        assert_eq!(
            allocate("10.42.0.0/16", &taken).as_deref(),
            Some("10.42.2.0/24")
        );
        // A range given with host bits is normalised.
        assert_eq!(
            allocate("10.42.7.9/16", &[]).as_deref(),
            Some("10.42.1.0/24")
        );
        let all: Vec<String> = (1..256).map(|i| format!("10.42.{i}.0/24")).collect();
        assert_eq!(allocate("10.42.0.0/16", &all), None);
        assert_eq!(allocate("10.42.0.0/24", &[]), None);
        assert_eq!(
            allocate("10.42.0.0/23", &[]).as_deref(),
            Some("10.42.1.0/24")
        );
        assert!(parse_cidr("10.42.0.0").is_err());
        assert!(parse_cidr("fd00::/8").is_err());
        assert!(parse_cidr("10.42.0.0/33").is_err());
    }

    #[test]
    fn peers_are_the_other_members_with_a_key_and_a_lease() {
        let env = OverlayEnv {
            name: "default".into(),
            mode: OverlayMode::Wireguard,
            cidr: "10.42.0.0/16".into(),
            psk_generation: 3,
        };
        let key = "ab".repeat(32);
        let members = vec![
            member("a", Some(&key), Some("10.42.1.0/24")),
            member("b", Some(&key), Some("10.42.2.0/24")),
            member("c", None, Some("10.42.3.0/24")),
            member("d", Some(&key), None),
        ];
        let cfg = config_for(&env, &members[0], &members, Some("cd".repeat(32)))
            .unwrap()
            .unwrap();
        assert_eq!(cfg.subnet, "10.42.1.0/24");
        assert_eq!(cfg.psk_generation, 3);
        assert_eq!(cfg.psk.as_deref(), Some("cd".repeat(32).as_str()));
        let names: Vec<&str> = cfg.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b"]);
        // No lease, no configuration; vxlan carries no key.
        assert_eq!(config_for(&env, &members[3], &members, None), Ok(None));
        // The encrypted mode without its key sends nothing rather than no key.
        assert_eq!(
            config_for(&env, &members[0], &members, None),
            Err(PlanError::MissingKey("default".into()))
        );
        let vx = OverlayEnv {
            mode: OverlayMode::Vxlan,
            ..env
        };
        assert!(
            config_for(&vx, &members[0], &members, Some("x".into()))
                .unwrap()
                .unwrap()
                .psk
                .is_none()
        );
        assert!(valid_public_key(&key));
        assert!(!valid_public_key("xyz"));
    }
}
