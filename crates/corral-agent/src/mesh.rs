//! The agent's side of the overlay: its key pair, the configuration the server sends, and the
//! data plane ([`corral_overlay`]) that carries it.
//!
//! - The X25519 key pair is generated here on first start and kept in `STATE_DIR/overlay.key`
//!   (0600). Only the public key is sent, in the hello.
//! - Each configuration from the server is saved to `STATE_DIR/overlay.json` (0600: it holds
//!   the environment's pre-shared key) before it is applied, and applied again when the agent
//!   starts, so a restarted agent brings its tunnels back from its own state without the
//!   server re-keying anything (and even while the server is away).
//! - Applying (`wireguard` mode): IPv4 forwarding on; the host's overlay network (a Docker
//!   bridge on the host's lease, `corral`) exists; the TUN device `corral0` carries the whole
//!   overlay range (the host's own /24 stays on the bridge, a more specific route); the
//!   userspace WireGuard driver owns the overlay socket's receive side (probes still reach
//!   `doctor`); peers and the pre-shared key follow every new configuration.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use corral_overlay::driver::{Driver, DriverConfig, OverlayHandle};
use corral_overlay::{PeerConfig, Prefix, Router};
use corral_proto::{OverlayConfig, OverlayMode};

use crate::docker::{Engine, OverlayNet};
use crate::doctor::{OverlayView, TunnelView};
use crate::overlay::Overlay;

/// The overlay's TUN device.
pub const TUN: &str = "corral0";
const KEY_FILE: &str = "overlay.key";
const CONFIG_FILE: &str = "overlay.json";

struct Running {
    handle: OverlayHandle,
    task: tokio::task::JoinHandle<()>,
    cidr: String,
    psk: Option<[u8; 32]>,
}

pub struct Mesh {
    /// MTU of the TUN device and of the overlay network (`--overlay-mtu`).
    mtu: u16,
    dir: PathBuf,
    private: [u8; 32],
    public_hex: String,
    socket: Option<Arc<Overlay>>,
    engine: Arc<Engine>,
    running: tokio::sync::Mutex<Option<Running>>,
    /// The environment's service names, as the server last sent them.
    names: tokio::sync::watch::Sender<crate::dns::Names>,
    /// The DNS responder on the overlay bridge's address, once it runs.
    dns: tokio::sync::Mutex<Option<(Ipv4Addr, tokio::task::JoinHandle<()>)>>,
    /// The configuration last applied, or why the last attempt failed (for `corral doctor`).
    applied: std::sync::Mutex<Applied>,
    /// The network policy's rules on this host.
    policy: Arc<crate::netpolicy::Enforcer>,
    /// What the encrypted overlay carried and refused since the agent started.
    totals: std::sync::Mutex<Totals>,
}

/// The overlay's figures added up since the agent started: the router's per-peer counters
/// restart with each session (and a peer's with the peer), its drop counters with the router;
/// each snapshot adds what grew since the one before.
#[derive(Debug, Default)]
pub struct Totals {
    /// Per peer key: (tx bytes, rx bytes, handshakes) at the last snapshot.
    peers: std::collections::HashMap<[u8; 32], (u64, u64, u64)>,
    /// The router's drop counters at the last snapshot.
    counters: corral_overlay::Counters,
    stats: corral_proto::OverlayStats,
}

/// What a counter that may have restarted grew by since it read `before`.
fn grown(before: u64, now: u64) -> u64 {
    if now >= before { now - before } else { now }
}

impl Totals {
    /// Adds a snapshot of the router: its peers' figures and its drop counters.
    pub fn add(
        &mut self,
        peers: &[corral_overlay::PeerStats],
        counters: &corral_overlay::Counters,
    ) -> corral_proto::OverlayStats {
        let mut now = std::collections::HashMap::with_capacity(peers.len());
        for p in peers {
            let (tx, rx, hs) = self.peers.get(&p.public_key).copied().unwrap_or_default();
            self.stats.tx_bytes += grown(tx, p.tx_bytes);
            self.stats.rx_bytes += grown(rx, p.rx_bytes);
            self.stats.handshakes += grown(hs, p.handshakes);
            now.insert(p.public_key, (p.tx_bytes, p.rx_bytes, p.handshakes));
        }
        self.peers = now;
        let before = &self.counters;
        self.stats.rejected += grown(before.rejected, counters.rejected);
        self.stats.unknown_peer += grown(before.unknown_peer, counters.unknown_peer);
        self.stats.garbage += grown(before.garbage, counters.garbage);
        self.stats.spoofed += grown(before.spoofed, counters.spoofed);
        self.counters = counters.clone();
        self.stats.peers = u32::try_from(peers.len()).unwrap_or(u32::MAX);
        self.stats.sessions =
            u32::try_from(peers.iter().filter(|p| p.last_handshake.is_some()).count())
                .unwrap_or(u32::MAX);
        self.stats
    }
}

/// The outcome of the latest configuration attempt.
#[derive(Default)]
struct Applied {
    config: Option<OverlayConfig>,
    error: Option<String>,
}

fn psk_of(cfg: &OverlayConfig) -> Result<Option<[u8; 32]>, String> {
    cfg.psk
        .as_deref()
        .map(|p| corral_overlay::from_hex(p).map_err(|e| format!("pre-shared key: {e}")))
        .transpose()
}

/// VXLAN devices (one per peer, point to point) start with this.
const VXLAN_PREFIX: &str = "corralvx";
/// VXLAN's UDP port.
pub const VXLAN_PORT: u16 = 4789;

/// The position of a host subnet in the overlay range, counted in subnets of its size
/// (`10.42.3.0/24` in `10.42.0.0/16` → 3, `10.42.8.0/22` → 2). Every subnet of an
/// environment has the same size, and a range holds at most 4,095 of them.
fn index_in(range: Prefix, subnet: Prefix) -> u32 {
    let offset = u32::from(subnet.addr()).wrapping_sub(u32::from(range.addr()));
    offset
        .checked_shr(32 - u32::from(subnet.len()))
        .unwrap_or(0)
}

/// The VXLAN network identifier of the link between two hosts: the same at both ends, and
/// different for every pair (ranges up to 4,096 host subnets).
pub fn pair_vni(a: u32, b: u32) -> Option<u32> {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    (hi < 4096 && lo != hi).then(|| 1 + lo * 4096 + hi)
}

async fn ip_cmd(args: &[&str]) -> Result<(), String> {
    corral_overlay::driver::ip(args)
        .await
        .map_err(|e| e.to_string())
}

/// Removes corral's VXLAN devices except `keep`.
async fn remove_vxlan_devices(keep: &[String]) {
    let Ok(out) = tokio::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "vxlan"])
        .output()
        .await
    else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line
            .split(": ")
            .nth(1)
            .map(|n| n.split('@').next().unwrap_or(n))
        else {
            continue;
        };
        if name.starts_with(VXLAN_PREFIX) && !keep.iter().any(|k| k == name) {
            let _ = ip_cmd(&["link", "del", name]).await;
        }
    }
}

/// The unencrypted mode: one point-to-point VXLAN device per peer (UDP 4789 to the peer's
/// address), proxy ARP on it so the peer answers for its containers, and a route to the peer's
/// /24 through it.
async fn sync_vxlan(cfg: &OverlayConfig, range: Prefix, own: Prefix) -> Result<(), String> {
    let me = index_in(range, own);
    let mut keep = Vec::new();
    for peer in &cfg.peers {
        let (Ok(subnet), Some(endpoint)) = (
            peer.subnet.parse::<Prefix>(),
            peer.endpoint
                .as_deref()
                .and_then(|e| e.parse::<SocketAddr>().ok()),
        ) else {
            continue;
        };
        let other = index_in(range, subnet);
        let Some(vni) = pair_vni(me, other) else {
            tracing::warn!(peer = %peer.name, "no VXLAN id for this pair of hosts (range too large)");
            continue;
        };
        let dev = format!("{VXLAN_PREFIX}{other}");
        let remote = endpoint.ip().to_string();
        // Recreated each time: cheap, and picks up a moved peer.
        let _ = ip_cmd(&["link", "del", &dev]).await;
        ip_cmd(&[
            "link",
            "add",
            &dev,
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "remote",
            &remote,
            "dstport",
            &VXLAN_PORT.to_string(),
        ])
        .await?;
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/proxy_arp"), "1");
        ip_cmd(&["link", "set", &dev, "up"]).await?;
        ip_cmd(&["route", "replace", &subnet.to_string(), "dev", &dev]).await?;
        keep.push(dev);
    }
    remove_vxlan_devices(&keep).await;
    tracing::info!(peers = keep.len(), "overlay up (vxlan, unencrypted)");
    Ok(())
}

/// The iptables rules a Docker engine with its own firewall (`--iptables`, the default) needs
/// for the overlay: new connections from the TUN device (or the VXLAN devices) to the overlay
/// bridge are accepted
/// (Docker's FORWARD chain admits only published ports), and what leaves the overlay range is
/// masqueraded (the overlay network is created without Docker's masquerading, which would
/// also rewrite overlay traffic). Without Docker's chains (`--iptables=false`) nothing is
/// needed and nothing is done.
pub fn docker_firewall_rules(subnet: &str, cidr: &str) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        s(&[
            "-t",
            "filter",
            "DOCKER-USER",
            "-i",
            TUN,
            "-o",
            crate::docker::OVERLAY_BRIDGE,
            "-j",
            "ACCEPT",
        ]),
        s(&[
            "-t",
            "filter",
            "DOCKER-USER",
            "-i",
            "corralvx+",
            "-o",
            crate::docker::OVERLAY_BRIDGE,
            "-j",
            "ACCEPT",
        ]),
        s(&[
            "-t",
            "nat",
            "POSTROUTING",
            "-s",
            subnet,
            "!",
            "-d",
            cidr,
            "!",
            "-o",
            crate::docker::OVERLAY_BRIDGE,
            "-j",
            "MASQUERADE",
        ]),
    ]
}

async fn iptables(args: &[String]) -> bool {
    tokio::process::Command::new("iptables")
        .args(args)
        .output()
        .await
        .is_ok_and(|o| o.status.success())
}

async fn docker_firewall(subnet: &str, cidr: &str) {
    if !iptables(&[
        "-t".into(),
        "filter".into(),
        "-n".into(),
        "-L".into(),
        "DOCKER-USER".into(),
    ])
    .await
    {
        return;
    }
    for rule in docker_firewall_rules(subnet, cidr) {
        // rule = [-t, TABLE, CHAIN, match…]: check (-C) first, insert (-I) if missing.
        let (table, rest) = rule.split_at(2);
        let (chain, spec) = rest.split_at(1);
        let with = |op: &str| {
            let mut v = table.to_vec();
            v.push(op.into());
            v.extend_from_slice(chain);
            v.extend_from_slice(spec);
            v
        };
        if !iptables(&with("-C")).await && !iptables(&with("-I")).await {
            tracing::warn!(rule = %rule.join(" "), "cannot add an iptables rule the overlay needs next to Docker's");
        }
    }
}

/// The bridge address of a host's lease: its first address (`10.42.3.0/24` → `10.42.3.1`).
pub fn gateway_of(subnet: &str) -> Result<(Prefix, Ipv4Addr), String> {
    let prefix: Prefix = subnet
        .parse()
        .map_err(|e| format!("overlay subnet {subnet:?}: {e}"))?;
    let gateway = Ipv4Addr::from(u32::from(prefix.addr()).wrapping_add(1));
    Ok((prefix, gateway))
}

/// Peers as the router wants them; a peer whose key or subnet does not parse is left out
/// (and said so), never crashed on.
pub fn peers_of(cfg: &OverlayConfig) -> Vec<PeerConfig> {
    cfg.peers
        .iter()
        .filter_map(|p| {
            let key = corral_overlay::from_hex(&p.public_key);
            let subnet = p.subnet.parse::<Prefix>();
            match (key, subnet) {
                (Ok(public_key), Ok(subnet)) => Some(PeerConfig {
                    public_key,
                    endpoint: p
                        .endpoint
                        .as_deref()
                        .and_then(|e| e.parse::<SocketAddr>().ok()),
                    allowed: vec![(subnet.addr(), subnet.len())],
                }),
                _ => {
                    tracing::warn!(peer = %p.name, "ignoring an overlay peer with a malformed key or subnet");
                    None
                }
            }
        })
        .collect()
}

impl Mesh {
    /// Loads the key pair from the state dir, making it on first start.
    pub fn load_or_create(
        dir: &Path,
        socket: Option<Arc<Overlay>>,
        engine: Arc<Engine>,
        mtu: u16,
    ) -> Result<Mesh, String> {
        let path = dir.join(KEY_FILE);
        let private = match std::fs::read_to_string(&path) {
            Ok(text) => corral_overlay::from_hex(text.trim()).map_err(|e| {
                format!("{}: {e} (delete it to make a new key pair)", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (private, _) = corral_overlay::keypair().map_err(|e| e.to_string())?;
                corral_tls::files::write_private(
                    &path,
                    corral_overlay::to_hex(&private).as_bytes(),
                )
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                private
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Mesh {
            mtu,
            dir: dir.to_owned(),
            public_hex: corral_overlay::to_hex(&corral_overlay::public_key(&private)),
            private,
            socket,
            engine: engine.clone(),
            running: tokio::sync::Mutex::new(None),
            names: tokio::sync::watch::Sender::new(crate::dns::Names::default()),
            dns: tokio::sync::Mutex::new(None),
            applied: std::sync::Mutex::new(Applied::default()),
            totals: std::sync::Mutex::new(Totals::default()),
            policy: crate::netpolicy::Enforcer::new(dir, engine.clone()),
        })
    }

    /// A new name table from the server.
    pub fn set_names(&self, table: corral_proto::NameTable) {
        self.names.send_replace(crate::dns::Names::new(&table));
        self.policy.set_names(table);
    }

    /// A network policy from the server.
    pub fn set_policy(&self, policy: corral_proto::NetworkPolicy) {
        self.policy.set_policy(policy);
    }

    /// The network policy's enforcer (for `corral doctor`).
    pub fn policy(&self) -> &crate::netpolicy::Enforcer {
        &self.policy
    }

    /// Runs the DNS responder on the overlay bridge's address (and only there), forwarding
    /// other names to the host's resolvers.
    async fn ensure_dns(&self, gateway: Ipv4Addr) {
        let mut dns = self.dns.lock().await;
        if let Some((addr, task)) = dns.as_ref()
            && *addr == gateway
            && !task.is_finished()
        {
            return;
        }
        if let Some((_, task)) = dns.take() {
            task.abort();
        }
        let upstream = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| crate::dns::upstream_from_resolv_conf(&t))
            .unwrap_or_default();
        let names = self.names.subscribe();
        let task = tokio::spawn(async move {
            if let Err(e) = crate::dns::serve(gateway, names, upstream).await {
                tracing::error!(address = %gateway, error = %e, "the DNS responder cannot run; containers resolve no service names");
            }
        });
        tracing::info!(address = %gateway, "DNS responder for service names");
        *dns = Some((gateway, task));
    }

    pub fn public_key_hex(&self) -> String {
        self.public_hex.clone()
    }

    /// Applies the configuration saved by the previous run, if any.
    pub async fn restore(self: &Arc<Self>) {
        self.policy.restore().await;
        let path = self.dir.join(CONFIG_FILE);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return;
        };
        match serde_json::from_str::<OverlayConfig>(&text) {
            Ok(cfg) => {
                tracing::info!(subnet = %cfg.subnet, peers = cfg.peers.len(), "restoring the overlay from the last configuration");
                self.clone().apply_in_background(cfg);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable saved overlay configuration")
            }
        }
    }

    /// Saves and applies a configuration from the server.
    pub async fn apply(self: &Arc<Self>, cfg: OverlayConfig) {
        self.policy.set_range(&cfg.cidr);
        let path = self.dir.join(CONFIG_FILE);
        match serde_json::to_vec(&cfg) {
            Ok(bytes) => {
                if let Err(e) = corral_tls::files::write_private(&path, &bytes) {
                    tracing::warn!(path = %path.display(), error = %e, "cannot save the overlay configuration");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the overlay configuration"),
        }
        self.clone().apply_in_background(cfg);
    }

    /// Configures in a task of its own (Docker or the TUN device may take a moment), retrying
    /// every 5 s while something it needs (Docker) is missing.
    fn apply_in_background(self: Arc<Self>, cfg: OverlayConfig) {
        tokio::spawn(async move {
            loop {
                let outcome = self.configure(&cfg).await;
                {
                    let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
                    match &outcome {
                        Ok(()) => {
                            applied.config = Some(cfg.clone());
                            applied.error = None;
                        }
                        Err(e) => applied.error = Some(e.clone()),
                    }
                }
                match outcome {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot set up the overlay; retrying in 5 s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        // A newer configuration supersedes this one.
                        if self.saved_generation_differs(&cfg) {
                            return;
                        }
                    }
                }
            }
        });
    }

    fn saved_generation_differs(&self, cfg: &OverlayConfig) -> bool {
        std::fs::read_to_string(self.dir.join(CONFIG_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<OverlayConfig>(&t).ok())
            .is_some_and(|saved| saved != *cfg)
    }

    async fn configure(&self, cfg: &OverlayConfig) -> Result<(), String> {
        let (subnet, gateway) = gateway_of(&cfg.subnet)?;
        let cidr: Prefix = cfg
            .cidr
            .parse()
            .map_err(|e| format!("overlay range {:?}: {e}", cfg.cidr))?;
        let psk = psk_of(cfg)?;
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            tracing::warn!(error = %e, "cannot turn on IPv4 forwarding; containers of other hosts will not be reachable");
        }
        self.engine
            .ensure_overlay_network(&OverlayNet {
                subnet: subnet.to_string(),
                gateway: gateway.to_string(),
                mtu: self.mtu,
            })
            .await?;
        docker_firewall(&subnet.to_string(), &cfg.cidr).await;
        self.ensure_dns(gateway).await;
        let mut running = self.running.lock().await;
        if cfg.mode == OverlayMode::Vxlan {
            if let Some(r) = running.take() {
                // Leaving the encrypted mode: the TUN device goes with its driver.
                r.task.abort();
                if let Some(socket) = &self.socket {
                    socket.receive_probes();
                }
            }
            return sync_vxlan(cfg, cidr, subnet).await;
        }
        remove_vxlan_devices(&[]).await;
        let restart = running.as_ref().is_some_and(|r| r.task.is_finished());
        if restart {
            *running = None;
        }
        match running.as_mut() {
            None => {
                let Some(socket) = &self.socket else {
                    return Err("the agent has no overlay socket (see its log)".into());
                };
                let router = Arc::new(std::sync::Mutex::new(Router::new(self.private, psk)));
                let probes = socket.clone();
                let mut config = DriverConfig::new(
                    TUN,
                    socket.take_socket(),
                    router,
                    Box::new(move |datagram, _from| probes.record(datagram)),
                );
                config.routes = vec![cidr];
                config.mtu = self.mtu;
                let driver = match Driver::open(config).await {
                    Ok(d) => d,
                    Err(e) => {
                        socket.receive_probes();
                        return Err(e.to_string());
                    }
                };
                let handle = driver.handle();
                handle.set_peers(peers_of(cfg)).map_err(|e| e.to_string())?;
                let probes = socket.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = driver.run(std::future::pending()).await {
                        tracing::error!(error = %e, "the overlay data plane stopped");
                    }
                    probes.receive_probes();
                });
                tracing::info!(
                    subnet = %cfg.subnet,
                    peers = cfg.peers.len(),
                    generation = cfg.psk_generation,
                    "overlay up"
                );
                *running = Some(Running {
                    handle,
                    task,
                    cidr: cfg.cidr.clone(),
                    psk,
                });
            }
            Some(r) => {
                if r.psk != psk {
                    r.handle.set_psk(psk).await;
                    r.psk = psk;
                    tracing::info!(
                        generation = cfg.psk_generation,
                        "overlay pre-shared key rotated"
                    );
                }
                r.handle
                    .set_peers(peers_of(cfg))
                    .map_err(|e| e.to_string())?;
                if r.cidr != cfg.cidr {
                    let _ = corral_overlay::driver::route_del(TUN, &r.cidr).await;
                    corral_overlay::driver::route_replace(TUN, &cfg.cidr)
                        .await
                        .map_err(|e| e.to_string())?;
                    r.cidr = cfg.cidr.clone();
                }
                tracing::debug!(peers = cfg.peers.len(), "overlay peers updated");
            }
        }
        Ok(())
    }

    /// The encrypted overlay's figures since the agent started, while it runs (`None` off the
    /// overlay, with VXLAN, or while it is not running).
    pub async fn stats(&self) -> Option<corral_proto::OverlayStats> {
        let running = self.running.lock().await;
        let r = running.as_ref().filter(|r| !r.task.is_finished())?;
        let (peers, counters) = (r.handle.stats(), r.handle.counters());
        drop(running);
        Some(
            self.totals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&peers, &counters),
        )
    }

    /// What `corral doctor` reports about this host's overlay.
    pub async fn view(&self) -> OverlayView {
        let (config, error) = {
            let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
            (applied.config.clone(), applied.error.clone())
        };
        if let Some(error) = error {
            return OverlayView::Failed(error);
        }
        let Some(config) = config else {
            return OverlayView::Waiting;
        };
        if config.mode == OverlayMode::Vxlan {
            return OverlayView::Vxlan {
                peers: config.peers.len(),
            };
        }
        let running = self.running.lock().await;
        let Some(r) = running.as_ref().filter(|r| !r.task.is_finished()) else {
            return OverlayView::Stopped;
        };
        let stats = r.handle.stats();
        let tunnels = config
            .peers
            .iter()
            .map(|p| TunnelView {
                name: p.name.clone(),
                subnet: p.subnet.clone(),
                stats: stats
                    .iter()
                    .find(|s| corral_overlay::to_hex(&s.public_key) == p.public_key)
                    .cloned(),
            })
            .collect();
        OverlayView::Encrypted {
            tunnels,
            counters: r.handle.counters(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(key: u8, tx: u64, rx: u64, handshakes: u64, up: bool) -> corral_overlay::PeerStats {
        corral_overlay::PeerStats {
            public_key: [key; 32],
            endpoint: None,
            allowed: Vec::new(),
            last_handshake: up.then_some(Duration::from_secs(1)),
            tx_bytes: tx,
            rx_bytes: rx,
            handshakes,
            rtt_ms: None,
        }
    }

    #[test]
    fn overlay_totals_only_grow_across_sessions_peers_and_routers() {
        let mut totals = Totals::default();
        let counters = |rejected, garbage| corral_overlay::Counters {
            rejected,
            garbage,
            ..Default::default()
        };
        let s = totals.add(
            &[peer(1, 100, 50, 1, true), peer(2, 0, 0, 0, false)],
            &counters(3, 7),
        );
        assert_eq!((s.tx_bytes, s.rx_bytes, s.handshakes), (100, 50, 1));
        assert_eq!((s.peers, s.sessions, s.rejected, s.garbage), (2, 1, 3, 7));
        // Peer 1's session restarted (its counters went back), peer 2 came up.
        let s = totals.add(
            &[peer(1, 30, 20, 1, true), peer(2, 10, 10, 1, true)],
            &counters(4, 7),
        );
        assert_eq!((s.tx_bytes, s.rx_bytes, s.handshakes), (140, 80, 2));
        assert_eq!((s.sessions, s.rejected), (2, 4));
        // Peer 2 left and came back; the router restarted (its drop counters from zero).
        let s = totals.add(&[peer(1, 35, 20, 1, true)], &counters(1, 0));
        assert_eq!((s.tx_bytes, s.peers, s.rejected, s.garbage), (145, 1, 5, 7));
        let s = totals.add(
            &[peer(1, 35, 20, 1, true), peer(2, 5, 0, 1, true)],
            &counters(1, 0),
        );
        assert_eq!((s.tx_bytes, s.handshakes), (150, 3));
    }
    use corral_proto::OverlayPeer;

    #[test]
    fn peers_and_gateways_come_from_the_configuration() {
        let (subnet, gw) = gateway_of("10.42.3.0/24").unwrap();
        assert_eq!(subnet.to_string(), "10.42.3.0/24");
        assert_eq!(gw, Ipv4Addr::new(10, 42, 3, 1));
        assert!(gateway_of("nonsense").is_err());
        let cfg = OverlayConfig {
            environment: "default".into(),
            mode: OverlayMode::Wireguard,
            cidr: "10.42.0.0/16".into(),
            subnet: "10.42.1.0/24".into(),
            psk: Some("ab".repeat(32)),
            psk_generation: 1,
            version: 1,
            peers: vec![
                OverlayPeer {
                    host_id: "h2".into(),
                    name: "h2".into(),
                    public_key: "cd".repeat(32),
                    endpoint: Some("192.0.2.12:51820".into()),
                    subnet: "10.42.2.0/24".into(),
                },
                OverlayPeer {
                    host_id: "bad".into(),
                    name: "bad".into(),
                    public_key: "zz".into(),
                    endpoint: None,
                    subnet: "10.42.3.0/24".into(),
                },
            ],
        };
        let peers = peers_of(&cfg);
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].endpoint, Some("192.0.2.12:51820".parse().unwrap()));
        assert_eq!(peers[0].allowed, vec![(Ipv4Addr::new(10, 42, 2, 0), 24)]);
        assert_eq!(psk_of(&cfg).unwrap(), Some([0xab; 32]));
    }

    #[test]
    fn vxlan_ids_are_the_same_at_both_ends_and_differ_between_pairs() {
        assert_eq!(pair_vni(1, 2), pair_vni(2, 1));
        assert_ne!(pair_vni(1, 2), pair_vni(1, 3));
        assert_ne!(pair_vni(1, 2), pair_vni(2, 3));
        assert_eq!(pair_vni(3, 3), None);
        assert_eq!(pair_vni(1, 4096), None);
        assert!(pair_vni(4094, 4095).is_some_and(|v| v < 1 << 24));
        let range: Prefix = "10.42.0.0/16".parse().unwrap();
        assert_eq!(index_in(range, "10.42.3.0/24".parse().unwrap()), 3);
        assert_eq!(index_in(range, "10.42.8.0/22".parse().unwrap()), 2);
        assert_eq!(index_in(range, "10.42.0.48/28".parse().unwrap()), 3);
    }
}
