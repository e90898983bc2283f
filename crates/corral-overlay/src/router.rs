//! The sans-IO core: peers, their WireGuard tunnels (`boringtun::noise::Tunn`), routing by
//! allowed ranges, demultiplexing of datagrams. No sockets, no clock reads of its own (boringtun
//! reads its monotonic clock inside `update_timers`, driven by [`Router::tick`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ring::rand::{SecureRandom, SystemRandom};

use crate::OverlayError;
use crate::ip::{Prefix, ipv4_addrs};

/// The first bytes of corral's own reachability probes, which share the overlay socket.
pub const PROBE_MAGIC: &[u8; 8] = b"CRLPROBE";

/// Whether a datagram is one of corral's probes (never WireGuard's: WireGuard messages start
/// with a type byte 1–4 followed by three zero bytes).
pub fn is_probe(datagram: &[u8]) -> bool {
    datagram.starts_with(PROBE_MAGIC)
}

/// Largest inner packet the router encapsulates (an IPv4 packet cannot be longer).
pub const MAX_PACKET: usize = 65535;
/// Room for a packet plus WireGuard's overhead (and never less than a handshake message).
const BUF_LEN: usize = sealed_len(MAX_PACKET);
/// Handshake messages accepted per second (all peers together) before the router asks for
/// cookies, as boringtun's own device does.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Peer indices are 24 bits: boringtun puts a session counter in the low 8 bits.
const INDEX_MASK: u32 = 0x00ff_ffff;
/// Bound on the queue flush after a handshake (boringtun queues at most 256 packets).
const MAX_FLUSH: usize = 512;

/// One peer (another host) as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    /// The peer's X25519 public key.
    pub public_key: [u8; 32],
    /// Where to send to it, if known; learnt (and updated) from its authenticated traffic too.
    pub endpoint: Option<SocketAddr>,
    /// Overlay ranges routed to this peer (and accepted as inner sources from it):
    /// `(address, prefix length)`.
    pub allowed: Vec<(Ipv4Addr, u8)>,
}

/// WireGuard's overhead on a data message: type, receiver index and counter (16 bytes), and
/// the AEAD tag (16). boringtun does not pad.
pub const DATA_OVERHEAD: usize = 32;
/// The longest handshake message (an initiation).
const HANDSHAKE_MAX: usize = 148;

/// Room [`Router::seal`] needs for a packet of `packet_len` bytes.
pub const fn sealed_len(packet_len: usize) -> usize {
    let data = packet_len + DATA_OVERHEAD;
    if data > HANDSHAKE_MAX {
        data
    } else {
        HANDSHAKE_MAX
    }
}

/// Room [`Router::open`] needs for a datagram of `datagram_len` bytes.
pub const fn opened_len(datagram_len: usize) -> usize {
    if datagram_len > HANDSHAKE_MAX {
        datagram_len
    } else {
        HANDSHAKE_MAX
    }
}

/// A datagram [`Router::seal`] wrote at the start of the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Where to send it.
    pub to: SocketAddr,
    /// Its length.
    pub len: usize,
}

/// What the router asks its driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Out {
    /// Send this datagram on the overlay socket.
    Network(SocketAddr, Vec<u8>),
    /// Write this IP packet to the TUN device.
    Tun(Vec<u8>),
}

/// Drops and rejections, for diagnostics. Every counter only grows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets from the TUN that were not IPv4 (or shorter than a header), or IPv6 packets that
    /// arrived inside the tunnel.
    pub not_ipv4: u64,
    /// Packets from the TUN longer than an IPv4 packet can be (or than the buffer offered).
    pub too_long: u64,
    /// Packets from the TUN whose destination is in no peer's allowed ranges.
    pub no_route: u64,
    /// Datagrams the router had to drop because the peer's endpoint is not known yet.
    pub no_endpoint: u64,
    /// Datagrams that are not WireGuard messages at all (wrong type, wrong length, too long).
    pub garbage: u64,
    /// Well-formed messages for no configured peer: a handshake from an unknown key, or a
    /// receiver index that belongs to no peer (a removed peer, a session from before a PSK
    /// rotation, or a guess).
    pub unknown_peer: u64,
    /// Messages that failed authentication or replay checks (bad MAC, bad AEAD tag, replayed
    /// counter, stale handshake, wrong PSK…).
    pub rejected: u64,
    /// Decrypted packets whose inner source is outside the sending peer's allowed ranges.
    pub spoofed: u64,
    /// Cookie replies sent because handshakes arrived faster than the rate limit.
    pub cookies_sent: u64,
    /// `CRLPROBE` datagrams handed to [`Router::inbound`] (the driver passes them to its callback
    /// before they get here; the router ignores them).
    pub probes: u64,
}

/// Per-peer diagnostics.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerStats {
    pub public_key: [u8; 32],
    /// Where the router currently sends to this peer.
    pub endpoint: Option<SocketAddr>,
    pub allowed: Vec<Prefix>,
    /// Age of the current session's handshake (`None`: no session). Measured on boringtun's
    /// clock at the last [`Router::tick`], so it is as fresh as the ticks are frequent.
    pub last_handshake: Option<Duration>,
    /// Inner bytes sent and received by the current tunnel (reset by a PSK rotation).
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// Handshakes completed with this peer (either side initiating).
    pub handshakes: u64,
    /// Round-trip time of the last handshake this side initiated, in milliseconds.
    pub rtt_ms: Option<u32>,
}

struct Peer {
    public_key: [u8; 32],
    configured_endpoint: Option<SocketAddr>,
    endpoint: Option<SocketAddr>,
    allowed: Vec<Prefix>,
    index: u32,
    tunn: Tunn,
    handshakes: u64,
}

impl Peer {
    fn allows(&self, src: Ipv4Addr) -> bool {
        self.allowed.iter().any(|p| p.contains(src))
    }
}

/// WireGuard for all of a host's peers, without I/O.
///
/// Feed it packets from the TUN ([`outbound`](Router::outbound)), datagrams from the overlay
/// socket ([`inbound`](Router::inbound)) and a tick every 100–250 ms ([`tick`](Router::tick));
/// carry out the [`Out`]s it returns.
pub struct Router {
    private: StaticSecret,
    public: PublicKey,
    psk: Option<[u8; 32]>,
    peers: HashMap<[u8; 32], Peer>,
    /// Peer index (the high 24 bits of a receiver index) → public key.
    by_index: HashMap<u32, [u8; 32]>,
    /// Allowed ranges, longest prefix first.
    routes: Vec<(Prefix, [u8; 32])>,
    /// Checks MAC1 and rate-limits handshake initiations before the router spends a
    /// Diffie-Hellman on learning who sent them.
    limiter: Arc<RateLimiter>,
    rng: SystemRandom,
    next_index: u32,
    counters: Counters,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("public_key", &crate::keys::to_hex(self.public.as_bytes()))
            .field("psk", &self.psk.map(|_| "set"))
            .field("peers", &self.peers.len())
            .field("counters", &self.counters)
            .finish()
    }
}

/// boringtun's constructor (0.7: infallible; 0.6.0 returned a `Result`).
fn new_tunn(private: &StaticSecret, peer: &[u8; 32], psk: Option<[u8; 32]>, index: u32) -> Tunn {
    Tunn::new(
        private.clone(),
        PublicKey::from(*peer),
        psk,
        None,
        index,
        None,
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Init,
    Response,
    Cookie,
    Data,
}

impl Router {
    /// A router for the host whose X25519 private key is `private_key`, with the environment's
    /// pre-shared key if it has one.
    pub fn new(private_key: [u8; 32], psk: Option<[u8; 32]>) -> Router {
        let private = StaticSecret::from(private_key);
        let public = PublicKey::from(&private);
        let rng = SystemRandom::new();
        let mut seed = [0u8; 4];
        // A failure leaves the seed at zero: indices are then sequential, which costs nothing
        // but predictability (they are not secrets).
        let _ = rng.fill(&mut seed);
        Router {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            private,
            public,
            psk,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            routes: Vec::new(),
            rng,
            next_index: u32::from_le_bytes(seed),
            counters: Counters::default(),
            buf: vec![0u8; BUF_LEN],
        }
    }

    /// This host's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public.to_bytes()
    }

    /// A fresh 24-bit peer index, distinct from every index in use.
    fn allocate_index(&mut self) -> u32 {
        loop {
            let mut bytes = [0u8; 4];
            let candidate = if self.rng.fill(&mut bytes).is_ok() {
                u32::from_le_bytes(bytes)
            } else {
                self.next_index = self.next_index.wrapping_add(1);
                self.next_index
            } & INDEX_MASK;
            if candidate != 0 && !self.by_index.contains_key(&candidate) {
                return candidate;
            }
        }
    }

    /// Replaces the peer set: adds new peers, updates the endpoint and allowed ranges of known
    /// ones (their sessions carry on), and removes the others — a removed peer's sessions are
    /// dropped at once and its datagrams are ignored from then on.
    ///
    /// A configured endpoint replaces the current one only when the configuration changes it
    /// (so an endpoint learnt by roaming survives a repeat of the same configuration).
    ///
    /// Refused as a whole (nothing changes) if a key repeats, a peer has this host's own key,
    /// a prefix length is over 32, or two peers claim the same range.
    pub fn set_peers(&mut self, peers: Vec<PeerConfig>) -> Result<(), OverlayError> {
        let mut seen = HashMap::new();
        let mut claimed: HashMap<Prefix, [u8; 32]> = HashMap::new();
        let mut parsed = Vec::with_capacity(peers.len());
        for config in peers {
            if config.public_key == self.public.to_bytes() {
                return Err(OverlayError::OwnKey);
            }
            if seen.insert(config.public_key, ()).is_some() {
                return Err(OverlayError::DuplicatePeer(crate::keys::to_hex(
                    &config.public_key,
                )));
            }
            let mut allowed = Vec::with_capacity(config.allowed.len());
            for (addr, len) in &config.allowed {
                let prefix = Prefix::new(*addr, *len)?;
                if let Some(other) = claimed.insert(prefix, config.public_key)
                    && other != config.public_key
                {
                    return Err(OverlayError::OverlappingRange(prefix.to_string()));
                }
                if !allowed.contains(&prefix) {
                    allowed.push(prefix);
                }
            }
            parsed.push((config, allowed));
        }

        let keep: HashMap<[u8; 32], ()> = parsed.iter().map(|(c, _)| (c.public_key, ())).collect();
        let removed: Vec<[u8; 32]> = self
            .peers
            .keys()
            .filter(|k| !keep.contains_key(*k))
            .copied()
            .collect();
        for key in removed {
            if let Some(peer) = self.peers.remove(&key) {
                self.by_index.remove(&peer.index);
                tracing::debug!(peer = %crate::keys::to_hex(&key), "overlay peer removed");
            }
        }

        for (config, allowed) in parsed {
            if let Some(peer) = self.peers.get_mut(&config.public_key) {
                if config.endpoint != peer.configured_endpoint {
                    if config.endpoint.is_some() {
                        peer.endpoint = config.endpoint;
                    }
                    peer.configured_endpoint = config.endpoint;
                }
                peer.allowed = allowed;
                continue;
            }
            let index = self.allocate_index();
            let tunn = new_tunn(&self.private, &config.public_key, self.psk, index);
            self.by_index.insert(index, config.public_key);
            tracing::debug!(peer = %crate::keys::to_hex(&config.public_key), index, "overlay peer added");
            self.peers.insert(
                config.public_key,
                Peer {
                    public_key: config.public_key,
                    configured_endpoint: config.endpoint,
                    endpoint: config.endpoint,
                    allowed,
                    index,
                    tunn,
                    handshakes: 0,
                },
            );
        }

        self.routes = self
            .peers
            .values()
            .flat_map(|p| p.allowed.iter().map(|r| (*r, p.public_key)))
            .collect();
        self.routes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Ok(())
    }

    /// Rotates the pre-shared key. Each peer's tunnel is rebuilt with the new key (its old
    /// sessions are dropped) and a handshake is started at once, so traffic resumes after one
    /// handshake. While the other side still has the old key the handshake fails and boringtun
    /// retries it every 5 s, and the other side initiates too once it rotates: the pair recovers
    /// by itself. Setting the key it already has changes nothing.
    pub fn set_psk(&mut self, psk: Option<[u8; 32]>) -> Vec<Out> {
        let mut out = Vec::new();
        if psk == self.psk {
            return out;
        }
        self.psk = psk;
        let keys: Vec<[u8; 32]> = self.peers.keys().copied().collect();
        for key in keys {
            let index = self.allocate_index();
            let Some(peer) = self.peers.get_mut(&key) else {
                continue;
            };
            self.by_index.remove(&peer.index);
            self.by_index.insert(index, key);
            peer.index = index;
            peer.tunn = new_tunn(&self.private, &key, psk, index);
            match peer.tunn.format_handshake_initiation(&mut self.buf, false) {
                TunnResult::WriteToNetwork(d) => match peer.endpoint {
                    Some(ep) => out.push(Out::Network(ep, d.to_vec())),
                    None => self.counters.no_endpoint += 1,
                },
                TunnResult::Err(e) => tracing::debug!(?e, "handshake after PSK rotation"),
                _ => {}
            }
        }
        out
    }

    /// An IP packet read from the TUN device: encrypted to the peer whose allowed range holds
    /// its destination (longest prefix), or dropped and counted. Allocates; the driver uses
    /// [`seal`](Router::seal).
    pub fn outbound(&mut self, packet: &[u8]) -> Vec<Out> {
        let mut buf = std::mem::take(&mut self.buf);
        let out = self
            .seal(packet, &mut buf)
            .map(|d| Out::Network(d.to, buf[..d.len].to_vec()))
            .into_iter()
            .collect();
        self.buf = buf;
        out
    }

    /// [`outbound`](Router::outbound) into the caller's buffer: the datagram to send is
    /// `dst[..len]` (a data message, or a handshake initiation while the packet waits for a
    /// session). `dst` must hold [`sealed_len`]`(packet.len())` bytes; a shorter one drops the
    /// packet (counted as `too_long`).
    pub fn seal(&mut self, packet: &[u8], dst: &mut [u8]) -> Option<Datagram> {
        let Some((_, dst_ip)) = ipv4_addrs(packet) else {
            self.counters.not_ipv4 += 1;
            return None;
        };
        if packet.len() > MAX_PACKET || dst.len() < sealed_len(packet.len()) {
            self.counters.too_long += 1;
            return None;
        }
        let Some(key) = self
            .routes
            .iter()
            .find(|(prefix, _)| prefix.contains(dst_ip))
            .map(|(_, key)| *key)
        else {
            self.counters.no_route += 1;
            return None;
        };
        let Some(peer) = self.peers.get_mut(&key) else {
            self.counters.no_route += 1;
            return None;
        };
        match peer.tunn.encapsulate(packet, dst) {
            TunnResult::WriteToNetwork(d) => match peer.endpoint {
                Some(to) => Some(Datagram { to, len: d.len() }),
                None => {
                    self.counters.no_endpoint += 1;
                    None
                }
            },
            TunnResult::Err(e) => {
                tracing::debug!(?e, "encapsulate");
                None
            }
            // Queued until a handshake completes.
            _ => None,
        }
    }

    /// A datagram received on the overlay socket from `from`. Returns packets for the TUN
    /// (decrypted, and only if their source is inside the sender's allowed ranges) and
    /// datagrams to send (handshake responses, packets queued during a handshake, cookies).
    /// Anything malformed, unauthenticated or unknown is counted and otherwise ignored.
    /// Allocates; the driver uses [`open`](Router::open).
    pub fn inbound(&mut self, from: SocketAddr, datagram: &[u8]) -> Vec<Out> {
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut self.buf);
        if let Some(packet) = self.open(from, datagram, &mut buf, &mut out) {
            out.push(Out::Tun(buf[packet].to_vec()));
        }
        self.buf = buf;
        out
    }

    /// [`inbound`](Router::inbound) into the caller's buffer: returns where in `dst` the
    /// decrypted IP packet for the TUN is; datagrams to send (rare: handshakes, cookies, the
    /// queue flushed after a handshake) are appended to `replies`. `dst` must be at least
    /// [`opened_len`]`(datagram.len())` bytes; a longer datagram is counted as `garbage`.
    pub fn open(
        &mut self,
        from: SocketAddr,
        datagram: &[u8],
        dst: &mut [u8],
        replies: &mut Vec<Out>,
    ) -> Option<Range<usize>> {
        if is_probe(datagram) {
            self.counters.probes += 1;
            return None;
        }
        if datagram.len() > MAX_PACKET + DATA_OVERHEAD || dst.len() < opened_len(datagram.len()) {
            self.counters.garbage += 1;
            return None;
        }
        let Ok(packet) = Tunn::parse_incoming_packet(datagram) else {
            self.counters.garbage += 1;
            return None;
        };
        let (kind, key) = match &packet {
            Packet::HandshakeInit(init) => {
                // MAC1 (keyed by our public key) and the rate limit first: only then spend a
                // Diffie-Hellman to learn the initiator's static key.
                match self.limiter.verify_packet(Some(from.ip()), datagram, dst) {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(cookie)) => {
                        self.counters.cookies_sent += 1;
                        replies.push(Out::Network(from, cookie.to_vec()));
                        return None;
                    }
                    Err(_) => {
                        self.counters.rejected += 1;
                        return None;
                    }
                }
                match parse_handshake_anon(&self.private, &self.public, init) {
                    Ok(half) => (Kind::Init, Some(half.peer_static_public)),
                    Err(_) => {
                        self.counters.rejected += 1;
                        return None;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (Kind::Response, self.key_of(p.receiver_idx)),
            Packet::PacketCookieReply(p) => (Kind::Cookie, self.key_of(p.receiver_idx)),
            Packet::PacketData(p) => (Kind::Data, self.key_of(p.receiver_idx)),
        };
        let Some(peer) = key.and_then(|k| self.peers.get_mut(&k)) else {
            self.counters.unknown_peer += 1;
            return None;
        };

        let mut authenticated = false;
        let mut to_tun = None;
        let base = dst.as_ptr() as usize;
        match peer.tunn.decapsulate(Some(from.ip()), datagram, dst) {
            TunnResult::Done => authenticated = kind == Kind::Data,
            TunnResult::Err(e) => {
                self.counters.rejected += 1;
                tracing::trace!(?e, %from, "overlay datagram rejected");
            }
            TunnResult::WriteToNetwork(d) => {
                // Type 3 is a cookie reply: the answer of boringtun's per-peer rate limiter to
                // an unauthenticated handshake; it says nothing about who sent it.
                if d.first() == Some(&3) {
                    self.counters.cookies_sent += 1;
                    replies.push(Out::Network(from, d.to_vec()));
                    return None;
                }
                authenticated = true;
                if matches!(kind, Kind::Init | Kind::Response) {
                    peer.handshakes += 1;
                }
                replies.push(Out::Network(from, d.to_vec()));
                // Packets queued while the handshake was under way.
                for _ in 0..MAX_FLUSH {
                    match peer.tunn.decapsulate(None, &[], dst) {
                        TunnResult::WriteToNetwork(d) => {
                            replies.push(Out::Network(from, d.to_vec()))
                        }
                        _ => break,
                    }
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                authenticated = true;
                if peer.allows(src) {
                    // boringtun decrypts in place at the start of `dst`; the range is computed
                    // from the slice it returns all the same.
                    let start = (packet.as_ptr() as usize).saturating_sub(base);
                    to_tun = Some(start..start + packet.len());
                } else {
                    self.counters.spoofed += 1;
                    tracing::debug!(%src, "overlay packet from outside the peer's ranges dropped");
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                authenticated = true;
                self.counters.not_ipv4 += 1;
            }
        }
        if authenticated && peer.endpoint != Some(from) {
            tracing::debug!(peer = %crate::keys::to_hex(&peer.public_key), %from, "overlay peer endpoint");
            peer.endpoint = Some(from);
        }
        to_tun
    }

    fn key_of(&self, receiver_index: u32) -> Option<[u8; 32]> {
        self.by_index.get(&(receiver_index >> 8)).copied()
    }

    /// Drives every tunnel's timers (handshake retries, rekeys, keepalives, expiry). Call every
    /// 100–250 ms.
    pub fn tick(&mut self) -> Vec<Out> {
        let mut out = Vec::new();
        self.limiter.reset_count();
        for peer in self.peers.values_mut() {
            match peer.tunn.update_timers(&mut self.buf) {
                TunnResult::WriteToNetwork(d) => match peer.endpoint {
                    Some(ep) => out.push(Out::Network(ep, d.to_vec())),
                    None => self.counters.no_endpoint += 1,
                },
                // An idle tunnel whose keys aged out: the next packet starts a handshake.
                TunnResult::Err(WireGuardError::ConnectionExpired) => {}
                TunnResult::Err(e) => tracing::debug!(?e, "overlay timers"),
                _ => {}
            }
        }
        out
    }

    /// Drop and rejection counters.
    pub fn counters(&self) -> Counters {
        self.counters.clone()
    }

    /// Per-peer diagnostics, ordered by public key.
    pub fn stats(&self) -> Vec<PeerStats> {
        let mut stats: Vec<PeerStats> = self
            .peers
            .values()
            .map(|p| {
                let (last_handshake, tx, rx, _loss, rtt) = p.tunn.stats();
                PeerStats {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    allowed: p.allowed.clone(),
                    last_handshake,
                    tx_bytes: tx as u64,
                    rx_bytes: rx as u64,
                    handshakes: p.handshakes,
                    rtt_ms: rtt,
                }
            })
            .collect();
        stats.sort_by_key(|a| a.public_key);
        stats
    }
}

#[cfg(test)]
mod tests;
