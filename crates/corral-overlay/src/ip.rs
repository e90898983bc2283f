//! The little IPv4 the data plane needs: addresses out of a header, prefixes and their matching.

use std::net::Ipv4Addr;

use crate::OverlayError;

/// Smallest IPv4 header (no options).
pub(crate) const IPV4_HEADER_MIN: usize = 20;

/// An IPv4 prefix such as `10.42.1.0/24`, kept normalised (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    net: u32,
    len: u8,
}

impl Prefix {
    /// A prefix from an address and a length (0–32); host bits are cleared, so
    /// `10.42.1.7/24` is `10.42.1.0/24`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Prefix, OverlayError> {
        if len > 32 {
            return Err(OverlayError::PrefixLength(len));
        }
        Ok(Prefix {
            net: u32::from(addr) & mask(len),
            len,
        })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.net)
    }

    /// The prefix length.
    pub fn len(&self) -> u8 {
        self.len
    }

    /// Whether this is `0.0.0.0/0`'s kind: a prefix of length 0 (it contains every address).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `addr` is inside the prefix.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.len) == self.net
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr(), self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = OverlayError;

    /// Parses `A.B.C.D/N` (a bare address is a `/32`).
    fn from_str(text: &str) -> Result<Prefix, OverlayError> {
        let bad = || OverlayError::Cidr(text.to_string());
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => {
                if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                (addr, len.parse::<u8>().map_err(|_| bad())?)
            }
            None => (text, 32),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        Prefix::new(addr, len).map_err(|_| bad())
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// Source and destination of an IPv4 packet, if `packet` is one (version 4, at least a
/// header long). Anything else — IPv6, truncated, empty — is `None`.
pub(crate) fn ipv4_addrs(packet: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr)> {
    if packet.len() < IPV4_HEADER_MIN || packet[0] >> 4 != 4 {
        return None;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    Some((src, dst))
}

/// Builds a minimal IPv4/UDP packet (header checksum filled in, UDP checksum 0). For tests,
/// examples and soak runs that exercise the router without a TUN device.
pub fn ipv4_udp_packet(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = IPV4_HEADER_MIN + udp_len;
    let total16 = u16::try_from(total).unwrap_or(u16::MAX);
    let udp16 = u16::try_from(udp_len).unwrap_or(u16::MAX);
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0]);
    p.extend_from_slice(&total16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum = checksum(&p[..IPV4_HEADER_MIN]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&src_port.to_be_bytes());
    p.extend_from_slice(&dst_port.to_be_bytes());
    p.extend_from_slice(&udp16.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(payload);
    p
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for pair in header.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP payload of a packet built by [`ipv4_udp_packet`] (or any IPv4/UDP packet without
/// options), if it is one.
pub fn udp_payload(packet: &[u8]) -> Option<&[u8]> {
    ipv4_addrs(packet)?;
    let ihl = usize::from(packet[0] & 0x0f) * 4;
    if packet[9] != 17 || packet.len() < ihl + 8 {
        return None;
    }
    Some(&packet[ihl + 8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_normalise_and_match() {
        let p: Prefix = "10.42.1.7/24".parse().unwrap();
        assert_eq!(p.to_string(), "10.42.1.0/24");
        assert!(p.contains(Ipv4Addr::new(10, 42, 1, 200)));
        assert!(!p.contains(Ipv4Addr::new(10, 42, 2, 1)));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        let host: Prefix = "10.0.0.1".parse().unwrap();
        assert_eq!(host.len(), 32);
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "-r/8",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn headers() {
        let p = ipv4_udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 2),
            1,
            2,
            b"hi",
        );
        assert_eq!(
            ipv4_addrs(&p),
            Some((Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)))
        );
        assert_eq!(checksum(&p[..20]), 0);
        assert_eq!(udp_payload(&p), Some(&b"hi"[..]));
        assert_eq!(ipv4_addrs(&p[..19]), None);
        assert_eq!(ipv4_addrs(&[0x60; 40]), None);
    }
}
