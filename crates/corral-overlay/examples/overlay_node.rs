//! One overlay host: a TUN device driven by `corral_overlay::driver`, for the network-namespace
//! test (`tests/netns_e2e.rs`) and for trying the overlay by hand. Run it as root, e.g. under
//! `ip netns exec NS`:
//!
//! ```text
//! overlay_node --tun crl0 --listen 198.51.100.1:51820 --private-key-file KEYFILE \
//!     --address 10.42.1.1/24 --route 10.42.2.0/24 \
//!     --peer PUBLIC_HEX@198.51.100.2:51820=10.42.2.0/24 [--psk HEX] [--mtu 1420] [--ready-file F] [--no-offload]
//! ```
//!
//! `--peer` repeats; its ranges are comma-separated and the endpoint is optional
//! (`PUBLIC_HEX=10.42.2.0/24`). `CRLPROBE` datagrams are reported on stderr as
//! `probe from ADDR (N bytes)`. SIGTERM or Ctrl-C stops it; it then prints its counters.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use corral_overlay::driver::{Driver, DriverConfig};
use corral_overlay::{PeerConfig, Prefix, Router, from_hex, to_hex};
use tokio::net::UdpSocket;
use tokio::signal::unix::{SignalKind, signal};

struct Args {
    tun: String,
    listen: SocketAddr,
    private_key_file: String,
    address: Option<Prefix>,
    address_host: Option<std::net::Ipv4Addr>,
    routes: Vec<Prefix>,
    peers: Vec<PeerConfig>,
    psk: Option<[u8; 32]>,
    mtu: u16,
    offload: bool,
    ready_file: Option<String>,
}

fn parse_peer(text: &str) -> Result<PeerConfig, String> {
    let (left, ranges) = text
        .split_once('=')
        .ok_or_else(|| format!("--peer {text:?}: expected KEY[@ENDPOINT]=CIDR[,CIDR]"))?;
    let (key, endpoint) = match left.split_once('@') {
        Some((k, e)) => (
            k,
            Some(
                e.parse::<SocketAddr>()
                    .map_err(|e| format!("--peer endpoint: {e}"))?,
            ),
        ),
        None => (left, None),
    };
    let public_key = from_hex(key).map_err(|e| format!("--peer key: {e}"))?;
    let mut allowed = Vec::new();
    for r in ranges.split(',') {
        let p: Prefix = r.parse().map_err(|e| format!("--peer range: {e}"))?;
        allowed.push((p.addr(), p.len()));
    }
    Ok(PeerConfig {
        public_key,
        endpoint,
        allowed,
    })
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        tun: "corral0".into(),
        listen: SocketAddr::from(([0, 0, 0, 0], corral_overlay::DEFAULT_PORT)),
        private_key_file: String::new(),
        address: None,
        address_host: None,
        routes: Vec::new(),
        peers: Vec::new(),
        psk: None,
        mtu: corral_overlay::DEFAULT_MTU,
        offload: true,
        ready_file: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tun" => args.tun = value()?,
            "--listen" => args.listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--private-key-file" => args.private_key_file = value()?,
            "--address" => {
                let text = value()?;
                let (host, _) = text.split_once('/').ok_or("--address is A.B.C.D/N")?;
                args.address_host = Some(host.parse().map_err(|e| format!("--address: {e}"))?);
                args.address = Some(text.parse().map_err(|e| format!("--address: {e}"))?);
            }
            "--route" => args
                .routes
                .push(value()?.parse().map_err(|e| format!("--route: {e}"))?),
            "--peer" => args.peers.push(parse_peer(&value()?)?),
            "--psk" => args.psk = Some(from_hex(&value()?).map_err(|e| format!("--psk: {e}"))?),
            "--mtu" => args.mtu = value()?.parse().map_err(|e| format!("--mtu: {e}"))?,
            "--ready-file" => args.ready_file = Some(value()?),
            "--no-offload" => args.offload = false,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.private_key_file.is_empty() {
        return Err("--private-key-file is required".into());
    }
    Ok(args)
}

async fn node(args: Args) -> Result<(), String> {
    let key_text = std::fs::read_to_string(&args.private_key_file)
        .map_err(|e| format!("reading {}: {e}", args.private_key_file))?;
    let private = from_hex(&key_text).map_err(|e| format!("{}: {e}", args.private_key_file))?;
    let mut router = Router::new(private, args.psk);
    router.set_peers(args.peers).map_err(|e| e.to_string())?;
    eprintln!("public key {}", to_hex(&router.public_key()));
    let router = Arc::new(Mutex::new(router));
    let socket = Arc::new(
        UdpSocket::bind(args.listen)
            .await
            .map_err(|e| format!("binding {}: {e}", args.listen))?,
    );
    let mut config = DriverConfig::new(
        args.tun,
        socket,
        router,
        Box::new(|datagram: &[u8], from: SocketAddr| {
            eprintln!("probe from {from} ({} bytes)", datagram.len());
        }),
    );
    config.mtu = args.mtu;
    config.offload = args.offload;
    if let (Some(prefix), Some(host)) = (args.address, args.address_host) {
        config.address = Some((host, prefix.len()));
    }
    config.routes = args.routes;
    let driver = Driver::open(config).await.map_err(|e| e.to_string())?;
    let handle = driver.handle();
    eprintln!(
        "TUN {} up, offloads {}",
        driver.tun_name(),
        if driver.offloads() { "on" } else { "off" }
    );
    if let Some(path) = &args.ready_file {
        std::fs::write(path, "ready\n").map_err(|e| format!("writing {path}: {e}"))?;
    }
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let result = driver.run(shutdown).await.map_err(|e| e.to_string());
    eprintln!("counters: {:?}", handle.counters());
    for s in handle.stats() {
        eprintln!(
            "peer {}: endpoint {:?}, last handshake {:?}, tx {} B, rx {} B, handshakes {}",
            to_hex(&s.public_key),
            s.endpoint,
            s.last_handshake,
            s.tx_bytes,
            s.rx_bytes,
            s.handshakes
        );
    }
    result
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("overlay_node: {e}");
            return ExitCode::from(2);
        }
    };
    match node(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("overlay_node: {e}");
            ExitCode::FAILURE
        }
    }
}
