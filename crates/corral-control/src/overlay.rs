//! The overlay's plan: how an environment's range is cut into host subnets, which one each
//! host leases, and the configuration each host runs.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;

use corral_proto::{OverlayConfig, OverlayDelta, OverlayMode, OverlayPeer};

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
    /// Its lease (a /24 unless the environment says otherwise).
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

/// The size of a host's subnet unless its environment says otherwise: 253 containers.
pub const DEFAULT_HOST_PREFIX: u8 = 24;
/// The largest host subnet: 65,533 containers.
pub const MIN_HOST_PREFIX: u8 = 16;
/// The smallest host subnet: 13 containers.
pub const MAX_HOST_PREFIX: u8 = 28;
/// Hosts one environment's overlay may hold: every host is every other's peer, and a host's
/// configuration with more peers (about 200 bytes each) would not fit in one 1 MiB tunnel
/// message.
pub const MAX_HOSTS: u32 = 4095;

/// Container addresses in a host subnet of this prefix: all but the network address, the
/// broadcast address and the gateway (the host's end of the bridge), as Docker hands them out.
pub fn addresses_in(host_prefix: u8) -> u32 {
    (1u32 << (32 - u32::from(host_prefix.clamp(1, 30)))) - 3
}

/// `/22` or `22`: the prefix length of a host subnet, within the bounds above.
pub fn parse_host_prefix(s: &str) -> Result<u8, String> {
    let n: u8 = s
        .trim()
        .trim_start_matches('/')
        .parse()
        .map_err(|_| format!("host subnet {s:?}: expected a prefix length such as /22"))?;
    if !(MIN_HOST_PREFIX..=MAX_HOST_PREFIX).contains(&n) {
        return Err(format!(
            "host subnet /{n}: between /{MIN_HOST_PREFIX} ({} containers a host) and /{MAX_HOST_PREFIX} ({})",
            thousands(u64::from(addresses_in(MIN_HOST_PREFIX))),
            addresses_in(MAX_HOST_PREFIX)
        ));
    }
    Ok(n)
}

/// An environment's overlay range cut into host subnets: the range's first subnet is never
/// leased (so no host network starts at the range's base address); every other one is a
/// host's, first free first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    base: Ipv4Addr,
    range_prefix: u8,
    host_prefix: u8,
}

impl Shape {
    /// Checks that `range` cut into `/host_prefix` subnets holds at least one and at most
    /// [`MAX_HOSTS`] hosts.
    pub fn new(range: &str, host_prefix: u8) -> Result<Shape, String> {
        let (base, range_prefix) = parse_cidr(range)?;
        if !(MIN_HOST_PREFIX..=MAX_HOST_PREFIX).contains(&host_prefix) {
            return Err(parse_host_prefix(&host_prefix.to_string())
                .err()
                .unwrap_or_default());
        }
        if range_prefix >= host_prefix {
            return Err(format!(
                "overlay range {base}/{range_prefix} holds no host with /{host_prefix} host subnets: its first /{host_prefix} is never leased, so it must be a /{} or larger",
                host_prefix - 1
            ));
        }
        let shape = Shape {
            base,
            range_prefix,
            host_prefix,
        };
        if host_prefix - range_prefix > 12 {
            return Err(format!(
                "overlay range {base}/{range_prefix} with /{host_prefix} host subnets would hold {} hosts; at most {} (every host is every other's peer): take a /{} or smaller range, or larger host subnets",
                thousands((1u64 << (host_prefix - range_prefix)) - 1),
                thousands(u64::from(MAX_HOSTS)),
                host_prefix - 12
            ));
        }
        Ok(shape)
    }

    /// The range, normalised (`10.42.0.0/16`).
    pub fn range(&self) -> String {
        format!("{}/{}", self.base, self.range_prefix)
    }

    pub fn host_prefix(&self) -> u8 {
        self.host_prefix
    }

    /// How many hosts the range holds.
    pub fn hosts(&self) -> u32 {
        (1u32 << (self.host_prefix - self.range_prefix)) - 1
    }

    /// Container addresses in each host's subnet.
    pub fn addresses_per_host(&self) -> u32 {
        addresses_in(self.host_prefix)
    }

    /// The first host subnet not in `taken`; `None` when every one is taken.
    pub fn allocate(&self, taken: &[String]) -> Option<String> {
        // A set: with thousands of leases a linear `contains` per candidate is quadratic.
        let taken: HashSet<&str> = taken.iter().map(String::as_str).collect();
        let step = 32 - u32::from(self.host_prefix);
        (1..=self.hosts())
            .map(|i| {
                format!(
                    "{}/{}",
                    Ipv4Addr::from(u32::from(self.base) + (i << step)),
                    self.host_prefix
                )
            })
            .find(|s| !taken.contains(s.as_str()))
    }

    /// Whether `subnet` is one of this shape's host subnets (inside the range, of its size).
    pub fn holds(&self, subnet: &str) -> bool {
        parse_cidr(subnet).is_ok_and(|(_, len)| len == self.host_prefix)
            && contains(self.base, self.range_prefix, subnet)
    }
}

/// `4095` → `4,095` (shared with the scheduler's explanations and the CLI's tables).
pub use corral_scheduler::thousands;

/// Whether `subnet` (`10.42.3.0/24`) lies in the range `base/prefix`.
pub fn contains(base: Ipv4Addr, prefix: u8, subnet: &str) -> bool {
    let Ok((ip, len)) = parse_cidr(subnet) else {
        return false;
    };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    len >= prefix && u32::from(ip) & mask == u32::from(base)
}

/// 64 hex digits.
pub fn valid_public_key(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What host `me` should run: every other member with a key and a lease is a peer. `None`
/// until `me` has a lease; an error when the encrypted mode has no key to send.
pub fn config_for<'a>(
    env: &OverlayEnv,
    me: &Member,
    members: impl IntoIterator<Item = &'a Member>,
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
        .into_iter()
        .filter(|m| m.id != me.id)
        .filter_map(Member::peer)
        .collect();
    Ok(Some(OverlayConfig {
        environment: env.name.clone(),
        mode: env.mode,
        cidr: env.cidr.clone(),
        subnet,
        psk,
        psk_generation: env.psk_generation,
        peers,
        version: 0,
    }))
}

impl Member {
    /// The member as others' peer: only with a key and a lease.
    pub fn peer(&self) -> Option<OverlayPeer> {
        Some(OverlayPeer {
            host_id: self.id.clone(),
            name: self.name.clone(),
            public_key: self.public_key.clone()?,
            endpoint: self.endpoint.clone(),
            subnet: self.subnet.clone()?,
        })
    }
}

/// What one connection should be sent to bring its overlay up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// Everything (a new connection, a change of the environment itself, an agent that does
    /// not take deltas, or one too far behind).
    Full(Box<OverlayConfig>),
    /// Only the peers that changed since the version it holds.
    Delta(Box<OverlayDelta>),
}

/// An environment's overlay as its hosts were last told, kept between passes of the sync so
/// that a change costs what changed: which members changed at which version is logged, and a
/// host that holds version `v` is sent the members changed after `v` (one host joining an
/// environment of N sends N deltas of one peer, not N lists of N peers).
#[derive(Debug, Default)]
pub struct EnvView {
    version: u64,
    /// The version of the last change of the environment itself (mode, range, key): a host
    /// holding an earlier one gets a full configuration.
    header_version: u64,
    header: Option<(OverlayEnv, Option<String>)>,
    members: BTreeMap<String, Member>,
    /// Version → the members that changed (joined, moved, left) at it.
    log: BTreeMap<u64, Vec<String>>,
    logged: usize,
    /// Hosts holding an earlier version than this get a full configuration (the log no
    /// longer reaches back that far).
    floor: u64,
}

impl EnvView {
    /// The version hosts are being brought to.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Takes the environment as it now is (the datastore's rows); returns whether anything
    /// changed. Costs O(members), whatever changed.
    pub fn update(
        &mut self,
        env: OverlayEnv,
        psk_hex: Option<String>,
        members: Vec<Member>,
    ) -> bool {
        let header = Some((env, psk_hex));
        let mut changed_header = false;
        if self.header != header {
            self.header = header;
            changed_header = true;
        }
        let mut changed: Vec<String> = Vec::new();
        let mut now: BTreeMap<String, Member> = BTreeMap::new();
        for m in members {
            if self.members.get(&m.id) != Some(&m) {
                changed.push(m.id.clone());
            }
            now.insert(m.id.clone(), m);
        }
        changed.extend(
            self.members
                .keys()
                .filter(|id| !now.contains_key(*id))
                .cloned(),
        );
        self.members = now;
        if !changed_header && changed.is_empty() {
            return false;
        }
        self.version += 1;
        if changed_header {
            self.header_version = self.version;
        }
        if !changed.is_empty() {
            self.logged += changed.len();
            self.log.insert(self.version, changed);
        }
        // The log is kept to about one full configuration's worth of ids: a host further
        // behind costs no more as a full configuration than as a delta.
        let cap = self.members.len().max(64);
        while self.logged > cap {
            let Some((v, ids)) = self.log.pop_first() else {
                break;
            };
            self.logged -= ids.len();
            self.floor = v;
        }
        true
    }

    /// What host `host_id` should be sent, given the version its connection holds (`None`:
    /// nothing yet, on this connection); `None` when it is up to date or has no lease.
    pub fn update_for(
        &self,
        host_id: &str,
        holds: Option<u64>,
        takes_deltas: bool,
    ) -> Result<Option<Update>, PlanError> {
        let Some((env, psk)) = &self.header else {
            return Ok(None);
        };
        let Some(me) = self.members.get(host_id) else {
            return Ok(None);
        };
        if holds == Some(self.version) {
            return Ok(None);
        }
        let full = || -> Result<Option<Update>, PlanError> {
            Ok(
                config_for(env, me, self.members.values(), psk.clone())?.map(|mut c| {
                    c.version = self.version;
                    Update::Full(Box::new(c))
                }),
            )
        };
        let Some(from) = holds.filter(|v| {
            takes_deltas && *v >= self.header_version && *v >= self.floor && *v < self.version
        }) else {
            return full();
        };
        let changed: HashSet<&str> = self
            .log
            .range(from + 1..)
            .flat_map(|(_, ids)| ids.iter().map(String::as_str))
            .collect();
        if changed.contains(host_id) {
            // Its own lease may have changed: start again from the whole.
            return full();
        }
        let mut upsert = Vec::new();
        let mut remove = Vec::new();
        for id in changed {
            match self.members.get(id).and_then(Member::peer) {
                Some(peer) => upsert.push(peer),
                None => remove.push(id.to_owned()),
            }
        }
        upsert.sort_by(|a, b| a.host_id.cmp(&b.host_id));
        remove.sort();
        Ok(Some(Update::Delta(Box::new(OverlayDelta {
            environment: env.name.clone(),
            from,
            to: self.version,
            upsert,
            remove,
        }))))
    }
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

    fn allocate(range: &str, taken: &[String]) -> Option<String> {
        Shape::new(range, 24).ok()?.allocate(taken)
    }

    #[test]
    fn host_subnets_of_other_sizes() {
        let big = Shape::new("10.42.0.0/16", 22).unwrap();
        assert_eq!((big.hosts(), big.addresses_per_host()), (63, 1021));
        assert_eq!(big.allocate(&[]).as_deref(), Some("10.42.4.0/22"));
        let taken = vec!["10.42.4.0/22".to_string()];
        assert_eq!(big.allocate(&taken).as_deref(), Some("10.42.8.0/22"));
        let all: Vec<String> = (1..64).map(|i| format!("10.42.{}.0/22", i * 4)).collect();
        assert_eq!(big.allocate(&all), None);
        assert!(big.holds("10.42.8.0/22"));
        assert!(!big.holds("10.42.8.0/24"));
        assert!(!big.holds("10.43.0.0/22"));
        let small = Shape::new("192.0.2.0/24", 28).unwrap();
        assert_eq!((small.hosts(), small.addresses_per_host()), (15, 13));
        assert_eq!(small.allocate(&[]).as_deref(), Some("192.0.2.16/28"));
        assert_eq!(addresses_in(24), 253);
        assert_eq!(addresses_in(20), 4093);
        assert_eq!(Shape::new("10.0.0.0/8", 20).unwrap().hosts(), 4095);
        assert_eq!(Shape::new("10.42.0.0/12", 24).unwrap().hosts(), 4095);
    }

    #[test]
    fn shapes_that_hold_no_host_or_too_many_are_refused() {
        let e = Shape::new("10.42.0.0/24", 24).unwrap_err();
        assert!(
            e.contains("holds no host") && e.contains("/23 or larger"),
            "{e}"
        );
        let e = Shape::new("10.0.0.0/8", 24).unwrap_err();
        assert!(
            e.contains("65,535 hosts") && e.contains("at most 4,095"),
            "{e}"
        );
        assert!(e.contains("/12 or smaller"), "{e}");
        let e = Shape::new("10.0.0.0/16", 30).unwrap_err();
        assert!(e.contains("between /16") && e.contains("/28 (13)"), "{e}");
        assert_eq!(parse_host_prefix("/22"), Ok(22));
        assert_eq!(parse_host_prefix("20"), Ok(20));
        assert!(parse_host_prefix("/15").unwrap_err().contains("65,533"));
        assert!(
            parse_host_prefix("big")
                .unwrap_err()
                .contains("such as /22")
        );
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

    fn env() -> OverlayEnv {
        OverlayEnv {
            name: "default".into(),
            mode: OverlayMode::Wireguard,
            cidr: "10.42.0.0/16".into(),
            psk_generation: 1,
        }
    }

    fn keyed(i: usize) -> Member {
        Member {
            id: format!("h{i:04}"),
            name: format!("host-{i}"),
            public_key: Some(format!("{:064x}", i + 1)),
            endpoint: Some(format!("192.0.2.{}:51820", i % 250 + 1)),
            subnet: Some(format!("10.42.{}.0/24", i + 1)),
        }
    }

    fn psk() -> Option<String> {
        Some("cd".repeat(32))
    }

    #[test]
    fn a_join_reaches_the_others_as_a_delta_of_one_peer() {
        let mut view = EnvView::default();
        let members: Vec<Member> = (0..200).map(keyed).collect();
        assert!(view.update(env(), psk(), members.clone()));
        // A new connection gets everything.
        let Some(Update::Full(first)) = view.update_for("h0000", None, true).unwrap() else {
            panic!("a full configuration first");
        };
        assert_eq!(first.peers.len(), 199);
        assert_eq!(first.version, view.version());
        let v1 = view.version();
        // Nothing changed: nothing to send, and the view says so.
        assert!(!view.update(env(), psk(), members.clone()));
        assert_eq!(view.update_for("h0000", Some(v1), true), Ok(None));

        // One joins.
        let mut more = members.clone();
        more.push(keyed(200));
        assert!(view.update(env(), psk(), more.clone()));
        let Some(Update::Delta(d)) = view.update_for("h0000", Some(v1), true).unwrap() else {
            panic!("a delta");
        };
        assert_eq!((d.from, d.to), (v1, view.version()));
        assert_eq!(d.upsert.len(), 1);
        assert_eq!(d.upsert[0].host_id, "h0200");
        assert!(d.remove.is_empty());
        let mut held = (*first).clone();
        held.apply_delta(&d).unwrap();
        let Some(Update::Full(now)) = view.update_for("h0000", None, true).unwrap() else {
            panic!("full");
        };
        assert_eq!(
            held, *now,
            "the delta applied equals the full configuration"
        );
        // An agent that does not take deltas gets the whole list.
        assert!(matches!(
            view.update_for("h0000", Some(v1), false),
            Ok(Some(Update::Full(_)))
        ));

        // One leaves, one moves.
        let v2 = view.version();
        let mut later = more.clone();
        later.retain(|m| m.id != "h0007");
        later[3].endpoint = Some("198.51.100.9:51820".into());
        view.update(env(), psk(), later);
        let Some(Update::Delta(d)) = view.update_for("h0000", Some(v2), true).unwrap() else {
            panic!("a delta");
        };
        assert_eq!(d.remove, ["h0007"]);
        assert_eq!(d.upsert.len(), 1);
        assert_eq!(d.upsert[0].endpoint.as_deref(), Some("198.51.100.9:51820"));
        held.apply_delta(&d).unwrap();
        let Some(Update::Full(now)) = view.update_for("h0000", None, true).unwrap() else {
            panic!("full");
        };
        assert_eq!(held, *now);
        // A delta that does not follow what is held is refused.
        assert!(held.apply_delta(&d).is_err());
    }

    #[test]
    fn a_change_of_the_environment_or_a_host_too_far_behind_gets_everything() {
        let mut view = EnvView::default();
        let members: Vec<Member> = (0..10).map(keyed).collect();
        view.update(env(), psk(), members.clone());
        let v1 = view.version();
        let rotated = OverlayEnv {
            psk_generation: 2,
            ..env()
        };
        view.update(rotated.clone(), Some("ef".repeat(32)), members.clone());
        let Some(Update::Full(c)) = view.update_for("h0001", Some(v1), true).unwrap() else {
            panic!("full after a rotation");
        };
        assert_eq!(c.psk_generation, 2);
        // Many changes, one at a time: the log keeps about one configuration's worth, so a
        // host that saw none of them gets a full configuration, a recent one a delta.
        let start = view.version();
        let mut ms = members.clone();
        for round in 0..100 {
            ms[round % 10].endpoint = Some(format!("198.51.100.{round}:51820"));
            view.update(rotated.clone(), Some("ef".repeat(32)), ms.clone());
        }
        assert!(matches!(
            view.update_for("h0001", Some(start), true),
            Ok(Some(Update::Full(_)))
        ));
        assert!(matches!(
            view.update_for("h0001", Some(view.version() - 1), true),
            Ok(Some(Update::Delta(_)))
        ));
        // Its own change: everything again (its lease may be new).
        let v = view.version();
        ms[1].subnet = Some("10.42.99.0/24".into());
        view.update(rotated, Some("ef".repeat(32)), ms);
        assert!(matches!(
            view.update_for("h0001", Some(v), true),
            Ok(Some(Update::Full(_)))
        ));
        // Without a lease, nothing; the encrypted mode without its key, an error.
        let mut bare = EnvView::default();
        let mut m = keyed(0);
        m.subnet = None;
        bare.update(env(), psk(), vec![m.clone()]);
        assert_eq!(bare.update_for("h0000", None, true), Ok(None));
        let mut keyless = EnvView::default();
        keyless.update(env(), None, vec![keyed(0)]);
        assert!(keyless.update_for("h0000", None, true).is_err());
    }
}
