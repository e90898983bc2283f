//! Addresses, CIDR blocks, protocols and port ranges: the small value types every other module
//! uses. Parsing is strict: a CIDR with host bits set (`10.0.0.1/8`) is refused, never silently
//! widened or narrowed, because either guess could open more than the user meant.

use std::cmp::Ordering;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// IP address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Longest prefix length of the family (32 or 128).
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Why a CIDR string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The address part does not parse as IPv4 or IPv6.
    #[error("`{0}` is not an IPv4 or IPv6 address or CIDR block")]
    BadAddress(String),
    /// The prefix is not a number or is longer than the family allows.
    #[error("`{value}`: prefix length must be 0..={max}")]
    BadPrefix {
        /// The whole input.
        value: String,
        /// 32 or 128.
        max: u8,
    },
    /// Host bits are set below the prefix, e.g. `10.0.0.1/8`. Refused, not normalised: the
    /// user may have meant the network or the single address.
    #[error(
        "`{value}` has host bits set: refused rather than guessed; write `{network}` for the whole \
         network or `{single}` for the single address"
    )]
    HostBitsSet {
        /// The input.
        value: String,
        /// The network the prefix describes.
        network: String,
        /// The single address as a host route.
        single: String,
    },
    /// An IPv4-mapped IPv6 address such as `::ffff:10.0.0.1`: firewalls match these as IPv6,
    /// which is almost never what was meant.
    #[error("`{value}` is an IPv4-mapped IPv6 address; write the IPv4 form `{v4}` instead")]
    V4Mapped {
        /// The input.
        value: String,
        /// The IPv4 form.
        v4: String,
    },
}

/// A CIDR block (network address + prefix length) with no host bits set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

fn to_u128(addr: &IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(*a)),
        IpAddr::V6(a) => u128::from(*a),
    }
}

fn mask(family: Family, prefix: u8) -> u128 {
    let bits = u32::from(family.max_prefix());
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return 0;
    }
    let full: u128 = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let host = if bits - prefix >= 128 {
        u128::MAX
    } else {
        (1u128 << (bits - prefix)) - 1
    };
    full & !host
}

fn from_u128(family: Family, v: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(v).unwrap_or(0))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

impl Cidr {
    /// Builds a CIDR block; refuses host bits and over-long prefixes.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let family = Family::of(&addr);
        let shown = format!("{addr}/{prefix}");
        if prefix > family.max_prefix() {
            return Err(CidrError::BadPrefix {
                value: shown,
                max: family.max_prefix(),
            });
        }
        if let IpAddr::V6(v6) = addr
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Err(CidrError::V4Mapped {
                value: shown,
                v4: v4.to_string(),
            });
        }
        let raw = to_u128(&addr);
        let net = raw & mask(family, prefix);
        if net != raw {
            return Err(CidrError::HostBitsSet {
                value: shown,
                network: format!("{}/{prefix}", from_u128(family, net)),
                single: format!("{addr}/{}", family.max_prefix()),
            });
        }
        Ok(Cidr { addr, prefix })
    }

    /// The block holding exactly one address (/32 or /128).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: Family::of(&addr).max_prefix(),
        }
    }

    /// `0.0.0.0/0`.
    pub fn any_v4() -> Cidr {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            prefix: 0,
        }
    }

    /// `::/0`.
    pub fn any_v6() -> Cidr {
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            prefix: 0,
        }
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The address family.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// True for `0.0.0.0/0` and `::/0`.
    pub fn is_any(&self) -> bool {
        self.prefix == 0
    }

    /// True when the block holds exactly one address.
    pub fn is_single(&self) -> bool {
        self.prefix == self.family().max_prefix()
    }

    /// True when every address of `other` is inside `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        if self.family() != other.family() || other.prefix < self.prefix {
            return false;
        }
        let m = mask(self.family(), self.prefix);
        to_u128(&other.addr) & m == to_u128(&self.addr)
    }

    /// True when the two blocks share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// Always `addr/prefix`, also for single addresses (`10.0.0.1/32`).
    pub fn to_cidr_string(&self) -> String {
        format!("{}/{}", self.addr, self.prefix)
    }
}

impl PartialOrd for Cidr {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cidr {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.family(), to_u128(&self.addr), self.prefix).cmp(&(
            other.family(),
            to_u128(&other.addr),
            other.prefix,
        ))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (taken as /32 or /128).
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let t = s.trim();
        let (a, p) = match t.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (t, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| CidrError::BadAddress(s.to_string()))?;
        let max = Family::of(&addr).max_prefix();
        let prefix = match p {
            None => max,
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(CidrError::BadPrefix {
                        value: s.to_string(),
                        max,
                    });
                }
                p.parse::<u8>().map_err(|_| CidrError::BadPrefix {
                    value: s.to_string(),
                    max,
                })?
            }
        };
        Cidr::new(addr, prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Sorts, removes duplicates and removes blocks contained in another block of the list.
/// Returns the minimal list and the `(dropped, kept_because_of)` pairs.
pub fn minimize(cidrs: &[Cidr]) -> (Vec<Cidr>, Vec<(Cidr, Cidr)>) {
    let mut sorted: Vec<Cidr> = cidrs.to_vec();
    // Wider blocks first so that they absorb the narrower ones.
    sorted.sort_by_key(|c| (c.family(), c.prefix, *c));
    let mut kept: Vec<Cidr> = Vec::new();
    let mut dropped = Vec::new();
    for c in sorted {
        match kept.iter().find(|k| k.contains(&c)) {
            Some(k) => dropped.push((c, *k)),
            None => kept.push(c),
        }
    }
    kept.sort();
    (kept, dropped)
}

/// Transport protocol of a flow.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (ICMPv6 for IPv6 peers).
    Icmp,
}

impl Protocol {
    /// `tcp`, `udp` or `icmp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range; a single port has `from == to`.
///
/// Serialized as a number (`80`) for a single port and as a string (`"30000-30010"`) for a
/// range; both forms are accepted on input (also `"80"`). Port 0 and reversed ranges are
/// refused by [`PortRange::new`] and by deserialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    from: u16,
    to: u16,
}

/// Why a port or port range was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// Port 0 cannot be published or matched.
    #[error("port 0 is not a usable port")]
    Zero,
    /// `from` is above `to`.
    #[error("port range {from}-{to} is reversed; write {to}-{from}")]
    Reversed {
        /// Lower bound given.
        from: u16,
        /// Upper bound given.
        to: u16,
    },
    /// Not a number or a `from-to` range of numbers in 1..=65535.
    #[error("`{0}` is not a port (1-65535) or a port range like 30000-30010")]
    Syntax(String),
}

impl PortRange {
    /// A checked range.
    pub fn new(from: u16, to: u16) -> Result<PortRange, PortError> {
        if from == 0 || to == 0 {
            return Err(PortError::Zero);
        }
        if from > to {
            return Err(PortError::Reversed { from, to });
        }
        Ok(PortRange { from, to })
    }

    /// A single port; port 0 is refused.
    pub fn single(port: u16) -> Result<PortRange, PortError> {
        PortRange::new(port, port)
    }

    /// First port.
    pub fn from(&self) -> u16 {
        self.from
    }

    /// Last port.
    pub fn to(&self) -> u16 {
        self.to
    }

    /// True when the range holds one port.
    pub fn is_single(&self) -> bool {
        self.from == self.to
    }

    /// True when `port` is inside the range.
    pub fn contains(&self, port: u16) -> bool {
        self.from <= port && port <= self.to
    }

    /// True when the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.from <= other.to && other.from <= self.to
    }

    /// Renders with a custom separator (`-` for people, `:` for iptables/ufw).
    pub fn display_with(&self, sep: &str) -> String {
        if self.is_single() {
            self.from.to_string()
        } else {
            format!("{}{sep}{}", self.from, self.to)
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display_with("-"))
    }
}

impl FromStr for PortRange {
    type Err = PortError;

    fn from_str(s: &str) -> Result<PortRange, PortError> {
        let t = s.trim();
        let num = |x: &str| -> Result<u16, PortError> {
            let x = x.trim();
            if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PortError::Syntax(s.to_string()));
            }
            x.parse::<u16>()
                .map_err(|_| PortError::Syntax(s.to_string()))
        };
        match t.split_once('-') {
            Some((a, b)) => PortRange::new(num(a)?, num(b)?),
            None => PortRange::single(num(t)?),
        }
    }
}

// A number for one port, text (`30000-30010`) for a range, as it is written.
impl utoipa::PartialSchema for PortRange {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(65535)),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .examples(["30000-30010"]),
            )
            .description(Some("One port, or a range FIRST-LAST"))
            .into()
    }
}

impl utoipa::ToSchema for PortRange {}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_single() {
            s.serialize_u16(self.from)
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => {
                let p = u16::try_from(n).map_err(|_| {
                    serde::de::Error::custom(PortError::Syntax(n.to_string()).to_string())
                })?;
                PortRange::single(p).map_err(serde::de::Error::custom)
            }
            Raw::Str(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        match s.parse() {
            Ok(c) => c,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn parses_and_displays() {
        assert_eq!(c("10.0.0.0/8").to_string(), "10.0.0.0/8");
        assert_eq!(c("10.0.0.1").to_string(), "10.0.0.1/32");
        assert_eq!(c("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(c("2001:db8::1").prefix(), 128);
        assert!(c("0.0.0.0/0").is_any());
        assert!(c("::/0").is_any());
    }

    #[test]
    fn refuses_host_bits_and_says_both_fixes() {
        let e = "10.0.0.1/8".parse::<Cidr>().err();
        let Some(CidrError::HostBitsSet {
            network, single, ..
        }) = e
        else {
            panic!("expected HostBitsSet, got {e:?}");
        };
        assert_eq!(network, "10.0.0.0/8");
        assert_eq!(single, "10.0.0.1/32");
        let msg = "2001:db8::1/64"
            .parse::<Cidr>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("2001:db8::/64"), "{msg}");
    }

    #[test]
    fn refuses_bad_prefix_address_and_mapped() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::BadPrefix { max: 32, .. })
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::BadPrefix { .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::BadPrefix { max: 128, .. })
        ));
        assert!(matches!(
            "example.com".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "::ffff:10.0.0.1".parse::<Cidr>(),
            Err(CidrError::V4Mapped { .. })
        ));
    }

    #[test]
    fn containment_and_minimize() {
        assert!(c("10.0.0.0/8").contains(&c("10.1.0.0/16")));
        assert!(!c("10.1.0.0/16").contains(&c("10.0.0.0/8")));
        assert!(!c("10.0.0.0/8").contains(&c("::/0")));
        assert!(c("0.0.0.0/0").contains(&c("192.0.2.1")));
        let (kept, dropped) = minimize(&[
            c("10.1.0.0/16"),
            c("10.0.0.0/8"),
            c("192.0.2.0/24"),
            c("10.0.0.0/8"),
            c("2001:db8::/32"),
        ]);
        assert_eq!(
            kept,
            vec![c("10.0.0.0/8"), c("192.0.2.0/24"), c("2001:db8::/32")]
        );
        assert_eq!(dropped.len(), 2);
    }

    #[test]
    fn ports() {
        let p: PortRange = match "30000-30010".parse() {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(p.to_string(), "30000-30010");
        assert_eq!(p.display_with(":"), "30000:30010");
        assert!(p.contains(30005));
        assert!(matches!("0".parse::<PortRange>(), Err(PortError::Zero)));
        assert!(matches!(
            "10-5".parse::<PortRange>(),
            Err(PortError::Reversed { .. })
        ));
        assert!(matches!(
            "70000".parse::<PortRange>(),
            Err(PortError::Syntax(_))
        ));
        assert!(matches!(
            "http".parse::<PortRange>(),
            Err(PortError::Syntax(_))
        ));
        let j: Result<PortRange, _> = serde_json::from_str("80");
        assert!(matches!(j, Ok(p) if p.is_single() && p.from() == 80));
        let j: Result<PortRange, _> = serde_json::from_str("\"30000-30010\"");
        assert!(j.is_ok());
        let j: Result<PortRange, _> = serde_json::from_str("65536");
        assert!(j.is_err());
    }

    proptest::proptest! {
        #[test]
        fn cidr_roundtrip_v4(a in proptest::prelude::any::<u32>(), p in 0u8..=32) {
            let net = u32::try_from(u128::from(a) & mask(Family::V4, p)).unwrap_or(0);
            let cidr = Cidr::new(IpAddr::V4(Ipv4Addr::from(net)), p);
            proptest::prop_assert!(cidr.is_ok());
            if let Ok(cidr) = cidr {
                let back: Result<Cidr, _> = cidr.to_string().parse();
                proptest::prop_assert_eq!(back, Ok(cidr));
            }
        }

        #[test]
        fn cidr_parse_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<Cidr>();
            let _ = s.parse::<PortRange>();
        }
    }
}
