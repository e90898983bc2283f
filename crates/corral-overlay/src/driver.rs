//! The I/O shell around [`Router`]: a TUN device (tun-rs, tokio), the overlay UDP socket and a
//! ticker, in one task. `CRLPROBE` datagrams go to a callback and never reach the router.
//!
//! ```text
//!   TUN ──packet──▶ Router::outbound ──datagram──▶ socket
//!   socket ──datagram──▶ CRLPROBE? ──yes──▶ on_other(datagram, from)
//!                            └──no──▶ Router::inbound ──▶ TUN / socket
//!   every 100 ms ──▶ Router::tick ──▶ socket
//! ```
//!
//! Routes and addresses that tun-rs does not manage go through iproute2's `ip`
//! ([`route_replace`], [`route_del`], [`link_up`]).

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::process::Command;
use tun_rs::{AsyncDevice, DeviceBuilder};

use crate::router::{Counters, Out, PeerConfig, PeerStats, Router, is_probe};
use crate::{DEFAULT_MTU, OverlayError, Prefix};

/// Callback for datagrams on the overlay socket that are not WireGuard's (`CRLPROBE`…).
pub type OnOther = Box<dyn Fn(&[u8], SocketAddr) + Send + Sync>;

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
        let mut builder = DeviceBuilder::new()
            .name(config.tun_name.clone())
            .mtu(config.mtu)
            .enable(true);
        if let Some((addr, len)) = config.address {
            if len > 32 {
                return Err(OverlayError::PrefixLength(len).into());
            }
            builder = builder.ipv4(addr, len, None);
        }
        let tun = builder
            .build_async()
            .map_err(|source| DriverError::CreateTun {
                name: config.tun_name.clone(),
                source,
            })?;
        let name = tun.name().unwrap_or_else(|_| config.tun_name.clone());
        // tun-rs brings the link up; make sure of it (idempotent).
        link_up(&name).await?;
        for route in &config.routes {
            route_replace(&name, &route.to_string()).await?;
        }
        tracing::info!(tun = %name, mtu = config.mtu, "overlay TUN device up");
        Ok(Driver {
            tun,
            name,
            socket: config.socket,
            router: config.router,
            on_other: config.on_other,
            tick: config.tick,
        })
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
    /// The device is removed when the driver is dropped.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), DriverError> {
        let mut tun_buf = vec![0u8; 65536];
        let mut udp_buf = vec![0u8; 65536];
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let outs = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                read = self.tun.recv(&mut tun_buf) => {
                    let n = read.map_err(|source| DriverError::Tun { name: self.name.clone(), source })?;
                    lock(&self.router).outbound(&tun_buf[..n])
                }
                received = self.socket.recv_from(&mut udp_buf) => match received {
                    Ok((n, from)) => {
                        let datagram = &udp_buf[..n];
                        if is_probe(datagram) {
                            (self.on_other)(datagram, from);
                            continue;
                        }
                        lock(&self.router).inbound(from, datagram)
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "overlay socket receive");
                        continue;
                    }
                },
                _ = ticker.tick() => lock(&self.router).tick(),
            };
            self.emit(outs).await;
        }
    }

    async fn emit(&self, outs: Vec<Out>) {
        for out in outs {
            match out {
                Out::Network(to, d) => {
                    if let Err(e) = self.socket.send_to(&d, to).await {
                        tracing::debug!(%to, error = %e, "overlay send");
                    }
                }
                Out::Tun(p) => {
                    if let Err(e) = self.tun.send(&p).await {
                        tracing::debug!(tun = %self.name, error = %e, "TUN write");
                    }
                }
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
    async fn ip_failures_say_what_failed() {
        // A device that does not exist: `ip` runs and fails (or is missing); either way the
        // error names the command.
        let err = link_up("corral-nodev9").await.unwrap_err().to_string();
        assert!(err.contains("ip link set dev corral-nodev9 up"), "{err}");
    }
}
