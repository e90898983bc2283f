//! The encryption-only bound of the overlay: how many Gbit/s of inner packets one core can seal
//! (sender's work) and open (receiver's work) through two [`Router`]s, with no sockets, no TUN
//! and no kernel. Any overlay throughput figure is bounded by it; on a machine where sender and
//! receiver share the cores, by the combined figure.
//!
//! ```text
//! cargo run --release -p corral-overlay --example bench_crypto [-- PACKET_BYTES [SECONDS]]
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use corral_overlay::{Out, PeerConfig, Router, ipv4_udp_packet, keypair, opened_len, sealed_len};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_crypto: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let packet_bytes: usize = args
        .next()
        .map(|a| a.parse().map_err(|e| format!("PACKET_BYTES {a:?}: {e}")))
        .transpose()?
        .unwrap_or(1420);
    let seconds: u64 = args
        .next()
        .map(|a| a.parse().map_err(|e| format!("SECONDS {a:?}: {e}")))
        .transpose()?
        .unwrap_or(3);
    if !(40..=65_000).contains(&packet_bytes) {
        return Err("PACKET_BYTES must be 40–65000".into());
    }

    let (a_key, a_pub) = keypair().map_err(|e| e.to_string())?;
    let (b_key, b_pub) = keypair().map_err(|e| e.to_string())?;
    let a_ep: SocketAddr = "192.0.2.1:51820".parse().map_err(|e| format!("{e}"))?;
    let b_ep: SocketAddr = "192.0.2.2:51820".parse().map_err(|e| format!("{e}"))?;
    let psk = Some([7u8; 32]);
    let mut a = Router::new(a_key, psk);
    let mut b = Router::new(b_key, psk);
    let peer = |key, ep, net| PeerConfig {
        public_key: key,
        endpoint: Some(ep),
        allowed: vec![(net, 24)],
    };
    a.set_peers(vec![peer(b_pub, b_ep, Ipv4Addr::new(10, 42, 2, 0))])
        .map_err(|e| e.to_string())?;
    b.set_peers(vec![peer(a_pub, a_ep, Ipv4Addr::new(10, 42, 1, 0))])
        .map_err(|e| e.to_string())?;

    let payload = vec![0x5a; packet_bytes - 28];
    let packet = ipv4_udp_packet(
        Ipv4Addr::new(10, 42, 1, 2),
        Ipv4Addr::new(10, 42, 2, 2),
        40000,
        5201,
        &payload,
    );

    // Handshake: a's first packet starts it; carry the messages until b delivers a packet.
    let mut to_b: Vec<Vec<u8>> = a
        .outbound(&packet)
        .into_iter()
        .filter_map(|o| match o {
            Out::Network(_, d) => Some(d),
            Out::Tun(_) => None,
        })
        .collect();
    for _ in 0..8 {
        let mut to_a = Vec::new();
        for d in to_b.drain(..) {
            for o in b.inbound(a_ep, &d) {
                if let Out::Network(_, d) = o {
                    to_a.push(d);
                }
            }
        }
        for d in to_a {
            for o in a.inbound(b_ep, &d) {
                if let Out::Network(_, d) = o {
                    to_b.push(d);
                }
            }
        }
    }
    let mut sealed = vec![0u8; sealed_len(packet.len())];
    let mut opened = vec![0u8; opened_len(sealed.len())];
    let mut replies = Vec::new();
    let d = a
        .seal(&packet, &mut sealed)
        .ok_or("no session after the handshake")?;
    b.open(a_ep, &sealed[..d.len], &mut opened, &mut replies)
        .ok_or("b did not open a's packet")?;

    let deadline = Duration::from_secs(seconds);
    let (mut seal_time, mut open_time, mut count) = (Duration::ZERO, Duration::ZERO, 0u64);
    let started = Instant::now();
    while started.elapsed() < deadline {
        for _ in 0..1024 {
            let t0 = Instant::now();
            let d = a.seal(&packet, &mut sealed).ok_or("seal failed")?;
            let t1 = Instant::now();
            b.open(a_ep, &sealed[..d.len], &mut opened, &mut replies)
                .ok_or("open failed")?;
            let t2 = Instant::now();
            seal_time += t1 - t0;
            open_time += t2 - t1;
        }
        count += 1024;
    }
    let bits = (count * packet.len() as u64 * 8) as f64;
    let gbps = |t: Duration| bits / t.as_secs_f64() / 1e9;
    println!("packet {} bytes, {} packets", packet.len(), count);
    println!("seal (sender, one core):   {:.2} Gbit/s", gbps(seal_time));
    println!("open (receiver, one core): {:.2} Gbit/s", gbps(open_time));
    println!(
        "seal + open on one core:   {:.2} Gbit/s",
        gbps(seal_time + open_time)
    );
    Ok(())
}
