//! The I/O shell around [`Router`]: a TUN device (tun-rs, tokio) with the kernel's offloads,
//! the overlay UDP socket with segmentation offloads (quinn-udp), and a ticker, as three tasks.
//! `CRLPROBE` datagrams go to a callback and never reach the router.
//!
//! ```text
//!   TUN ──64 KiB TSO read──▶ split ──▶ Router::seal ×N ──▶ one UDP GSO send per peer run
//!   UDP GRO/recvmmsg ──▶ CRLPROBE? ──yes──▶ on_other(datagram, from)
//!                           └──no──▶ Router::open ×N ──▶ coalesce (GRO) ──▶ TUN writes
//!   every 100 ms ──▶ Router::tick ──▶ socket
//! ```
//!
//! Why batches: the cost of a packet through a userspace tunnel is mostly per-packet kernel
//! crossings, not the cipher (see `examples/bench_crypto.rs`). With `IFF_VNET_HDR` and TSO on the
//! TUN device the kernel hands over whole TCP send bursts (up to 64 KiB) in one read; with UDP
//! GSO the sealed datagrams to one peer leave in one `sendmsg`; with UDP GRO they arrive in one
//! `recvmmsg`; coalescing rebuilds large TCP segments before the TUN write. The router's mutex
//! is taken once per batch, not per packet. Where the kernel lacks an offload the same loops run
//! one packet at a time.
//!
//! Routes and addresses that tun-rs does not manage go through iproute2's `ip`
//! ([`route_replace`], [`route_del`], [`link_up`]).

use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::router::{
    Counters, Out, PeerConfig, PeerStats, Router, is_probe, opened_len, sealed_len,
};
use crate::{DEFAULT_MTU, OverlayError, Prefix};

/// Callback for datagrams on the overlay socket that are not WireGuard's (`CRLPROBE`…).
pub type OnOther = Box<dyn Fn(&[u8], SocketAddr) + Send + Sync>;

/// Packets taken from one TUN read (a 64 KiB TSO burst split at the MTU is at most 47).
const TUN_BATCH: usize = IDEAL_BATCH_SIZE;
/// Receive buffers per `recvmmsg`; each holds one GRO train of up to 64 KiB.
const RECV_MESSAGES: usize = 8;
/// Room for one GRO train (UDP datagrams coalesced by the kernel) or one TSO burst.
const TRAIN_LEN: usize = 65_536;
/// Largest UDP GSO send: the payload of one IPv4 UDP datagram.
const GSO_MAX_BYTES: usize = 65_000;

/// How often the driver ticks the router by default.
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);

/// Everything the driver needs.
pub struct DriverConfig {
    /// Name of the TUN device to create (at most 15 bytes), e.g. `corral0`.
    pub tun_name: String,
    /// The TUN device's MTU ([`DEFAULT_MTU`], 1420, unless the underlay needs less).
    pub mtu: u16,
    /// An address for the TUN device (`10.42.1.1/24`), set by tun-rs; `None`: no address.
    pub address: Option<(Ipv4Addr, u8)>,
    /// Ranges routed into the TUN device once it is up (`ip route replace … dev TUN`).
    pub routes: Vec<Prefix>,
    /// The overlay socket (the agent's, port 51820 by default), shared with whoever else sends
    /// on it (probes).
    pub socket: Arc<UdpSocket>,
    /// The router; [`OverlayHandle`] changes its peers and PSK while the driver runs.
    pub router: Arc<Mutex<Router>>,
    /// Called with every `CRLPROBE` datagram and its sender.
    pub on_other: OnOther,
    /// Router tick period (100–250 ms).
    pub tick: Duration,
    /// Ask the kernel for the TUN offloads (TSO bursts in, coalesced segments out); `false`
    /// moves one packet per TUN read and write (as on a kernel that refuses them).
    pub offload: bool,
}

impl DriverConfig {
    /// A configuration with the default MTU and tick, no address and no routes.
    pub fn new(
        tun_name: impl Into<String>,
        socket: Arc<UdpSocket>,
        router: Arc<Mutex<Router>>,
        on_other: OnOther,
    ) -> DriverConfig {
        DriverConfig {
            tun_name: tun_name.into(),
            mtu: DEFAULT_MTU,
            address: None,
            routes: Vec::new(),
            socket,
            router,
            on_other,
            tick: DEFAULT_TICK,
            offload: true,
        }
    }
}

/// The driver's errors, each saying what to check.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(
        "cannot create TUN device {name:?}: {source} (needs /dev/net/tun and CAP_NET_ADMIN, and no other device of that name)"
    )]
    CreateTun { name: String, source: io::Error },
    #[error("TUN device {name}: {source}")]
    Tun { name: String, source: io::Error },
    #[error("overlay UDP socket: {0}")]
    Socket(io::Error),
    #[error("an overlay task ended: {0}")]
    TaskEnded(String),
    #[error("{0:?} is not a usable interface name (1–15 bytes, no '/', spaces or leading '-')")]
    DeviceName(String),
    #[error("`{command}` could not be started: {source} (is iproute2 installed and `ip` on PATH?)")]
    IpSpawn { command: String, source: io::Error },
    #[error("`{command}` failed ({status}): {stderr} (does the process have CAP_NET_ADMIN?)")]
    IpFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(transparent)]
    Overlay(#[from] OverlayError),
}

/// A handle to change the running overlay: peers, PSK, diagnostics. Cheap to clone.
#[derive(Clone)]
pub struct OverlayHandle {
    router: Arc<Mutex<Router>>,
    socket: Arc<UdpSocket>,
}

impl std::fmt::Debug for OverlayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlayHandle").finish_non_exhaustive()
    }
}

fn lock(router: &Mutex<Router>) -> MutexGuard<'_, Router> {
    router.lock().unwrap_or_else(|p| p.into_inner())
}

impl OverlayHandle {
    /// A handle on `router`; datagrams it causes (handshakes after a PSK rotation) go out on
    /// `socket`.
    pub fn new(router: Arc<Mutex<Router>>, socket: Arc<UdpSocket>) -> OverlayHandle {
        OverlayHandle { router, socket }
    }

    /// Replaces the peer set (see [`Router::set_peers`]).
    pub fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<(), OverlayError> {
        lock(&self.router).set_peers(peers)
    }

    /// Rotates the pre-shared key and sends the handshakes that follow (see
    /// [`Router::set_psk`]).
    pub async fn set_psk(&self, psk: Option<[u8; 32]>) {
        let outs = lock(&self.router).set_psk(psk);
        for out in outs {
            if let Out::Network(to, d) = out
                && let Err(e) = self.socket.send_to(&d, to).await
            {
                tracing::debug!(%to, error = %e, "overlay send");
            }
        }
    }

    /// Per-peer diagnostics.
    pub fn stats(&self) -> Vec<PeerStats> {
        lock(&self.router).stats()
    }

    /// Drop and rejection counters.
    pub fn counters(&self) -> Counters {
        lock(&self.router).counters()
    }
}

/// A TUN device ready to carry the overlay.
pub struct Driver {
    tun: AsyncDevice,
    name: String,
    mtu: u16,
    socket: Arc<UdpSocket>,
    router: Arc<Mutex<Router>>,
    on_other: OnOther,
    tick: Duration,
}

impl Driver {
    /// Creates and brings up the TUN device, sets its address and MTU, and installs the
    /// configured routes. Must run inside a tokio runtime.
    pub async fn open(config: DriverConfig) -> Result<Driver, DriverError> {
        check_device_name(&config.tun_name)?;
        if let Some((_, len)) = config.address
            && len > 32
        {
            return Err(OverlayError::PrefixLength(len).into());
        }
        let build = |offload: bool| {
            let mut builder = DeviceBuilder::new()
                .name(config.tun_name.clone())
                .mtu(config.mtu)
                .offload(offload)
                .enable(true);
            if let Some((addr, len)) = config.address {
                builder = builder.ipv4(addr, len, None);
            }
            builder.build_async()
        };
        // A kernel that refuses the TUN offloads still gets an overlay, one packet at a time.
        let tun = match build(config.offload) {
            Ok(tun) => tun,
            Err(e) if config.offload => {
                tracing::warn!(tun = %config.tun_name, error = %e, "cannot create the TUN device with offloads; trying without");
                build(false).map_err(|source| DriverError::CreateTun {
                    name: config.tun_name.clone(),
                    source,
                })?
            }
            Err(source) => {
                return Err(DriverError::CreateTun {
                    name: config.tun_name.clone(),
                    source,
                });
            }
        };
        let name = tun.name().unwrap_or_else(|_| config.tun_name.clone());
        // tun-rs brings the link up; make sure of it (idempotent).
        link_up(&name).await?;
        for route in &config.routes {
            route_replace(&name, &route.to_string()).await?;
        }
        tracing::info!(
            tun = %name,
            mtu = config.mtu,
            offloads = tun.tcp_gso(),
            "overlay TUN device up"
        );
        Ok(Driver {
            tun,
            name,
            mtu: config.mtu,
            socket: config.socket,
            router: config.router,
            on_other: config.on_other,
            tick: config.tick,
        })
    }

    /// Whether the kernel accepted the TUN offloads (TSO bursts in, coalesced segments out).
    pub fn offloads(&self) -> bool {
        self.tun.tcp_gso()
    }

    /// The TUN device's name.
    pub fn tun_name(&self) -> &str {
        &self.name
    }

    /// A handle to change peers and the PSK while the driver runs.
    pub fn handle(&self) -> OverlayHandle {
        OverlayHandle::new(self.router.clone(), self.socket.clone())
    }

    /// Moves packets until `shutdown` completes (then returns `Ok`) or the TUN device fails.
    /// The device is removed when the driver stops (or, if this future is dropped, as soon as
    /// the runtime drops its aborted tasks).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DriverError> {
        let udp =
            Arc::new(UdpSocketState::new((&*self.socket).into()).map_err(DriverError::Socket)?);
        size_socket_buffers(&self.socket);
        tracing::debug!(
            gso_segments = udp.max_gso_segments(),
            gro_segments = udp.gro_segments(),
            "overlay socket offloads"
        );
        let tun = Arc::new(self.tun);
        let outbound = Outbound {
            tun: tun.clone(),
            name: self.name.clone(),
            socket: self.socket.clone(),
            udp: udp.clone(),
            router: self.router.clone(),
            packet_room: usize::from(self.mtu) + 128,
        };
        let inbound = Inbound {
            tun,
            name: self.name.clone(),
            socket: self.socket.clone(),
            udp,
            router: self.router.clone(),
            on_other: self.on_other,
        };
        let mut tasks = Tasks(vec![
            tokio::spawn(outbound.run()),
            tokio::spawn(inbound.run()),
            tokio::spawn(timers(self.router, self.socket, self.tick)),
        ]);
        tokio::pin!(shutdown);
        let result = tokio::select! {
            _ = &mut shutdown => Ok(()),
            r = tasks.first_to_end() => r,
        };
        tasks.stop().await;
        result
    }
}

/// Socket buffers for the overlay: a receiver that decrypts in bursts needs room for a few
/// milliseconds of line rate, or the kernel drops whole GRO trains (`UdpRcvbufErrors`) and TCP
/// inside the tunnel backs off. The default (208 KiB) lost 1 packet in 6 at 1 Gbit/s.
const SOCKET_BUFFER: usize = 8 << 20;

/// Sets the socket's buffers to [`SOCKET_BUFFER`]: past `net.core.[rw]mem_max` where the
/// process may (CAP_NET_ADMIN), else as far as the limits allow.
fn size_socket_buffers(socket: &UdpSocket) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(socket, SOCKET_BUFFER).is_err()
        && let Err(e) = sockopt::set_socket_recv_buffer_size(socket, SOCKET_BUFFER)
    {
        tracing::debug!(error = %e, "overlay socket receive buffer");
    }
    if sockopt::set_socket_send_buffer_size_force(socket, SOCKET_BUFFER).is_err()
        && let Err(e) = sockopt::set_socket_send_buffer_size(socket, SOCKET_BUFFER)
    {
        tracing::debug!(error = %e, "overlay socket send buffer");
    }
}

/// The driver's tasks, aborted when dropped (so a dropped [`Driver::run`] leaves none behind).
struct Tasks(Vec<JoinHandle<Result<(), DriverError>>>);

impl Tasks {
    /// The result of whichever task ends first (they only end on a fatal error). That task
    /// leaves the set: a finished `JoinHandle` must not be awaited again.
    async fn first_to_end(&mut self) -> Result<(), DriverError> {
        let (index, ended) = std::future::poll_fn(|cx| {
            self.0
                .iter_mut()
                .enumerate()
                .find_map(|(i, task)| match std::pin::Pin::new(task).poll(cx) {
                    std::task::Poll::Ready(r) => Some((i, r)),
                    std::task::Poll::Pending => None,
                })
                .map_or(std::task::Poll::Pending, std::task::Poll::Ready)
        })
        .await;
        self.0.swap_remove(index);
        ended.unwrap_or_else(|e| Err(DriverError::TaskEnded(e.to_string())))
    }

    /// Aborts every task and waits until they are gone (and with them the TUN device).
    async fn stop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
        for task in self.0.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// A run of sealed datagrams to one peer laid out back to back, all `segment` bytes long but
/// possibly the last: one UDP GSO send.
struct Run {
    to: SocketAddr,
    start: usize,
    end: usize,
    segment: usize,
    count: usize,
    /// A shorter datagram ended it; nothing more may join.
    closed: bool,
}

/// TUN → router → UDP.
struct Outbound {
    tun: Arc<AsyncDevice>,
    name: String,
    socket: Arc<UdpSocket>,
    udp: Arc<UdpSocketState>,
    router: Arc<Mutex<Router>>,
    /// Room for one packet after segmentation (the MTU, plus slack).
    packet_room: usize,
}

impl Outbound {
    async fn run(self) -> Result<(), DriverError> {
        let mut burst = vec![0u8; VIRTIO_NET_HDR_LEN + TRAIN_LEN];
        let mut packets = vec![vec![0u8; self.packet_room]; TUN_BATCH];
        let mut sizes = vec![0usize; TUN_BATCH];
        let slot = sealed_len(self.packet_room);
        let mut sealed = vec![0u8; slot * TUN_BATCH];
        let mut runs: Vec<Run> = Vec::with_capacity(TUN_BATCH);
        loop {
            let n = match self
                .tun
                .recv_multiple(&mut burst, &mut packets, &mut sizes, 0)
                .await
            {
                Ok(n) => n,
                // tun-rs's own complaints about one burst (a packet larger than the buffers, a
                // malformed offload header) drop that burst; errors from the device end the
                // driver.
                Err(e) if e.raw_os_error().is_none() => {
                    tracing::debug!(tun = %self.name, error = %e, "TUN burst dropped");
                    continue;
                }
                Err(source) => {
                    return Err(DriverError::Tun {
                        name: self.name.clone(),
                        source,
                    });
                }
            };
            runs.clear();
            let max_segments = self.udp.max_gso_segments().max(1);
            {
                let mut router = lock(&self.router);
                let mut cursor = 0;
                for (packet, &size) in packets.iter().zip(&sizes).take(n) {
                    let Some(packet) = packet.get(..size) else {
                        continue;
                    };
                    let Some(out) = sealed.get_mut(cursor..) else {
                        break;
                    };
                    let Some(d) = router.seal(packet, out) else {
                        continue;
                    };
                    let joins = runs.last().is_some_and(|run| {
                        !run.closed
                            && run.to == d.to
                            && run.end == cursor
                            && d.len <= run.segment
                            && run.count < max_segments
                            && run.end - run.start + d.len <= GSO_MAX_BYTES
                    });
                    match runs.last_mut() {
                        Some(run) if joins => {
                            run.end += d.len;
                            run.count += 1;
                            run.closed = d.len < run.segment;
                        }
                        _ => runs.push(Run {
                            to: d.to,
                            start: cursor,
                            end: cursor + d.len,
                            segment: d.len,
                            count: 1,
                            closed: false,
                        }),
                    }
                    cursor += d.len;
                }
            }
            for run in &runs {
                let transmit = Transmit {
                    destination: run.to,
                    ecn: None,
                    contents: &sealed[run.start..run.end],
                    segment_size: (run.count > 1).then_some(run.segment),
                    src_ip: None,
                };
                send(&self.socket, &self.udp, &transmit).await;
            }
        }
    }
}

/// Sends one (possibly segmented) transmit; a failure is logged and the datagrams are lost,
/// as on any network.
async fn send(socket: &UdpSocket, udp: &UdpSocketState, transmit: &Transmit<'_>) {
    loop {
        if let Err(e) = socket.writable().await {
            tracing::debug!(error = %e, "overlay socket");
            return;
        }
        match socket.try_io(Interest::WRITABLE, || udp.try_send(socket.into(), transmit)) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            // A device that cannot segment (quinn-udp then turns GSO off for the socket):
            // send this run's datagrams one by one instead of losing them.
            Err(e) if transmit.segment_size.is_some() && udp.max_gso_segments() == 1 => {
                tracing::debug!(error = %e, "UDP GSO refused; sending datagrams singly");
                let size = transmit.segment_size.unwrap_or(transmit.contents.len());
                for datagram in transmit.contents.chunks(size.max(1)) {
                    let single = Transmit {
                        contents: datagram,
                        segment_size: None,
                        ..*transmit
                    };
                    Box::pin(send(socket, udp, &single)).await;
                }
                return;
            }
            Err(e) => {
                tracing::debug!(to = %transmit.destination, error = %e, "overlay send");
                return;
            }
        }
    }
}

/// UDP → router → TUN.
struct Inbound {
    tun: Arc<AsyncDevice>,
    name: String,
    socket: Arc<UdpSocket>,
    udp: Arc<UdpSocketState>,
    router: Arc<Mutex<Router>>,
    on_other: OnOther,
}

impl Inbound {
    async fn run(self) -> Result<(), DriverError> {
        let mut trains = vec![vec![0u8; TRAIN_LEN]; RECV_MESSAGES];
        let mut metas = vec![RecvMeta::default(); RECV_MESSAGES];
        // Decrypted packets, each behind room for the virtio header; reused from batch to batch.
        let mut to_tun: Vec<Vec<u8>> = Vec::with_capacity(TUN_BATCH);
        let mut gro = GROTable::default();
        let mut replies: Vec<Out> = Vec::new();
        loop {
            if let Err(e) = self.socket.readable().await {
                tracing::debug!(error = %e, "overlay socket");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let received = {
                let mut slices: Vec<IoSliceMut<'_>> =
                    trains.iter_mut().map(|t| IoSliceMut::new(t)).collect();
                self.socket.try_io(Interest::READABLE, || {
                    self.udp
                        .recv((&*self.socket).into(), &mut slices, &mut metas)
                })
            };
            let n = match received {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    tracing::debug!(error = %e, "overlay socket receive");
                    continue;
                }
            };
            let mut staged = 0;
            {
                let mut router = lock(&self.router);
                for (train, meta) in trains.iter().zip(&metas).take(n) {
                    let Some(train) = train.get(..meta.len) else {
                        continue;
                    };
                    let stride = if meta.stride == 0 {
                        meta.len
                    } else {
                        meta.stride
                    };
                    for datagram in train.chunks(stride.max(1)) {
                        if is_probe(datagram) {
                            (self.on_other)(datagram, meta.addr);
                            continue;
                        }
                        if staged == to_tun.len() {
                            // Coalescing appends to the first packet of a flow in place, and
                            // only if its buffer has the capacity.
                            to_tun.push(Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + TRAIN_LEN));
                        }
                        let buf = &mut to_tun[staged];
                        buf.resize(VIRTIO_NET_HDR_LEN + opened_len(datagram.len()), 0);
                        let body = &mut buf[VIRTIO_NET_HDR_LEN..];
                        if let Some(packet) = router.open(meta.addr, datagram, body, &mut replies) {
                            let len = packet.len();
                            body.copy_within(packet, 0);
                            buf.truncate(VIRTIO_NET_HDR_LEN + len);
                            staged += 1;
                        }
                    }
                }
            }
            if staged > 0
                && let Err(e) = self
                    .tun
                    .send_multiple(&mut gro, &mut to_tun[..staged], VIRTIO_NET_HDR_LEN)
                    .await
            {
                tracing::debug!(tun = %self.name, error = %e, "TUN write");
            }
            for reply in replies.drain(..) {
                if let Out::Network(to, d) = reply
                    && let Err(e) = self.socket.send_to(&d, to).await
                {
                    tracing::debug!(%to, error = %e, "overlay send");
                }
            }
        }
    }
}

/// Drives the router's timers: handshake retries, rekeys, keepalives.
async fn timers(
    router: Arc<Mutex<Router>>,
    socket: Arc<UdpSocket>,
    period: Duration,
) -> Result<(), DriverError> {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let outs = lock(&router).tick();
        for out in outs {
            if let Out::Network(to, d) = out
                && let Err(e) = socket.send_to(&d, to).await
            {
                tracing::debug!(%to, error = %e, "overlay send");
            }
        }
    }
}

/// Creates the TUN device and runs the driver until `shutdown` completes.
pub async fn run(
    config: DriverConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DriverError> {
    Driver::open(config).await?.run(shutdown).await
}

fn check_device_name(dev: &str) -> Result<(), DriverError> {
    let ok = !dev.is_empty()
        && dev.len() <= 15
        && !dev.starts_with('-')
        && dev
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':');
    if ok {
        Ok(())
    } else {
        Err(DriverError::DeviceName(dev.to_string()))
    }
}

/// Runs `ip ARGS…` (iproute2), with an error that names the command and its stderr.
pub async fn ip(args: &[&str]) -> Result<(), DriverError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| DriverError::IpSpawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DriverError::IpFailed {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Routes `cidr` (e.g. `10.42.2.0/24`) into `dev`: `ip route replace CIDR dev DEV`.
pub async fn route_replace(dev: &str, cidr: &str) -> Result<(), DriverError> {
    check_device_name(dev)?;
    let prefix: Prefix = cidr.parse()?;
    ip(&["route", "replace", &prefix.to_string(), "dev", dev]).await
}

/// Removes the route of `cidr` through `dev`: `ip route del CIDR dev DEV`.
pub async fn route_del(dev: &str, cidr: &str) -> Result<(), DriverError> {
    check_device_name(dev)?;
    let prefix: Prefix = cidr.parse()?;
    ip(&["route", "del", &prefix.to_string(), "dev", dev]).await
}

/// Brings `dev` up: `ip link set dev DEV up`.
pub async fn link_up(dev: &str) -> Result<(), DriverError> {
    check_device_name(dev)?;
    ip(&["link", "set", "dev", dev, "up"]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names() {
        for good in ["corral0", "wg-1", "a"] {
            assert!(check_device_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", "a/b", "a b", "sixteen-chars-xx", "a:1"] {
            assert!(check_device_name(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn route_helpers_refuse_bad_input_before_running_ip() {
        assert!(matches!(
            route_replace("corral0", "10.42.0.0/33").await,
            Err(DriverError::Overlay(_))
        ));
        assert!(matches!(
            route_del("-f", "10.42.0.0/16").await,
            Err(DriverError::DeviceName(_))
        ));
    }

    #[tokio::test]
    async fn the_first_task_to_fail_ends_the_driver_and_the_rest_are_stopped() {
        let mut tasks = Tasks(vec![
            tokio::spawn(std::future::pending()),
            tokio::spawn(async { Err(DriverError::DeviceName("x".into())) }),
            tokio::spawn(std::future::pending()),
        ]);
        let ended = tasks.first_to_end().await;
        assert!(
            matches!(ended, Err(DriverError::DeviceName(_))),
            "{ended:?}"
        );
        // Stopping awaits only the tasks still running (awaiting a finished one would panic).
        tasks.stop().await;
        assert!(tasks.0.is_empty());
    }

    #[tokio::test]
    async fn ip_failures_say_what_failed() {
        // A device that does not exist: `ip` runs and fails (or is missing); either way the
        // error names the command.
        let err = link_up("corral-nodev9").await.unwrap_err().to_string();
        assert!(err.contains("ip link set dev corral-nodev9 up"), "{err}");
    }
}
