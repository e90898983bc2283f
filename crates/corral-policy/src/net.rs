//! IPv4 networks and the traffic a rule may name: protocols and port ranges.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IPv4 network, `ADDRESS/LEN`, its address the network's first (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    len: u8,
}

impl Cidr {
    /// The network of `addr` with a prefix of `len` bits (host bits cleared).
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Cidr> {
        (len <= 32).then(|| Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// The first address.
    pub fn first(&self) -> Ipv4Addr {
        self.addr
    }

    /// The last address.
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) | !mask(self.len))
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, or one address (`/32`). Host bits must be zero: `10.0.0.1/8` is a typo
    /// more often than a choice, so it is refused rather than silently widened.
    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (
                a,
                l.parse::<u8>()
                    .ok()
                    .filter(|l| *l <= 32)
                    .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to 32"))?,
            ),
            None => (s, 32),
        };
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IPv4 network (e.g. 203.0.113.0/24)"))?;
        let cidr = Cidr::new(addr, len).ok_or_else(|| format!("{s:?}: bad prefix length"))?;
        if cidr.addr != addr {
            return Err(format!("{s:?} has host bits set; the network is {cidr}"));
        }
        Ok(cidr)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A transport protocol a port range belongs to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// Ports of one protocol, `5432/tcp`, `53/udp`, `8000-8100/tcp` (a bare `5432` is TCP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The protocol.
    pub proto: Proto,
    /// First port.
    pub first: u16,
    /// Last port (inclusive; equal to `first` for one port).
    pub last: u16,
}

impl PortRange {
    /// Whether a packet of `proto` to `port` is in the range.
    pub fn contains(&self, proto: Proto, port: u16) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.proto)
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.proto)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<PortRange, String> {
        let bad = || format!("{s:?} is not a port range (5432/tcp, 53/udp, 8000-8100/tcp)");
        let (ports, proto) = match s.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(format!("{s:?}: the protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        let port = |t: &str| t.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("{s:?}: the range runs backwards"));
        }
        Ok(PortRange { proto, first, last })
    }
}

/// A schema of text, for the types that read and write themselves as text.
fn text_schema(
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .description(Some(description))
        .examples([example])
        .into()
}

impl utoipa::PartialSchema for PortRange {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema(
            "Ports of one protocol: PORT[-PORT][/tcp|/udp]",
            "8000-8100/tcp",
        )
    }
}

impl utoipa::ToSchema for PortRange {}

impl utoipa::PartialSchema for Cidr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_schema("An IPv4 network, ADDRESS/LEN", "10.0.0.0/8")
    }
}

impl utoipa::ToSchema for Cidr {}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PortRange, D::Error> {
        // YAML reads `5432` as a number: accept it as written.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u32),
            Text(String),
        }
        let text = match Written::deserialize(d)? {
            Written::Number(n) => n.to_string(),
            Written::Text(t) => t,
        };
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a packet carries, as far as a policy can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Traffic {
    /// TCP or UDP to a port.
    Port(Proto, u16),
    /// Anything else (ICMP, …): only rules without `ports` match it.
    Other,
}

impl fmt::Display for Traffic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Traffic::Port(proto, port) => write!(f, "{port}/{proto}"),
            Traffic::Other => f.write_str("other protocols"),
        }
    }
}

impl FromStr for Traffic {
    type Err = String;

    /// `5432/tcp`, `53/udp`, `5432` (TCP), or `icmp`.
    fn from_str(s: &str) -> Result<Traffic, String> {
        if s == "icmp" {
            return Ok(Traffic::Other);
        }
        let r: PortRange = s.parse()?;
        if r.first != r.last {
            return Err(format!("{s:?}: name one port"));
        }
        Ok(Traffic::Port(r.proto, r.first))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        let c: Cidr = "10.42.0.0/16".parse().unwrap();
        assert!(c.contains("10.42.9.1".parse().unwrap()));
        assert!(!c.contains("10.43.0.1".parse().unwrap()));
        assert_eq!(c.last().to_string(), "10.42.255.255");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().to_string(), "1.2.3.4/32");
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(
            "10.0.0.1/8"
                .parse::<Cidr>()
                .unwrap_err()
                .contains("host bits")
        );
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn ports() {
        let p: PortRange = "8000-8100/udp".parse().unwrap();
        assert!(p.contains(Proto::Udp, 8050));
        assert!(!p.contains(Proto::Tcp, 8050));
        assert_eq!("5432".parse::<PortRange>().unwrap().to_string(), "5432/tcp");
        for bad in ["0/tcp", "70000/tcp", "9-1/tcp", "80/sctp", "x/tcp", ""] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
        assert_eq!("icmp".parse::<Traffic>().unwrap(), Traffic::Other);
        assert!("1-2/tcp".parse::<Traffic>().is_err());
    }
}
