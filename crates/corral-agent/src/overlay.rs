//! The agent's overlay socket: one UDP socket on the overlay port (51820 by default), the only
//! port an agent listens on. Today it answers the server-coordinated reachability probes of
//! `corral doctor`; the encrypted overlay's datagrams share it, told apart by their first bytes.
//!
//! A probe is `CRLPROBE` followed by a 16-byte nonce chosen by the server and sent to both ends
//! over their tunnels. Anything else arriving here is ignored, so a flood of garbage changes
//! nothing but the counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

pub const DEFAULT_PORT: u16 = 51820;
const MAGIC: &[u8; 8] = b"CRLPROBE";
const PROBE_LEN: usize = MAGIC.len() + 16;
/// The overlay MTU's default and bounds (`corral agent --overlay-mtu`).
pub use corral_overlay::{DEFAULT_MTU, MAX_MTU, MIN_MTU};

/// Probes remembered (so one that arrives before the server's "expect" still counts).
const REMEMBER: usize = 1024;
const REMEMBER_FOR: Duration = Duration::from_secs(30);

pub struct Overlay {
    socket: Arc<UdpSocket>,
    seen: Mutex<HashMap<[u8; 16], Instant>>,
    arrived: Notify,
    /// The probe-only receive loop, while the encrypted overlay's driver does not own the
    /// socket's receive side.
    receiver: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Parses the 32-hex-digit nonce of a probe command.
pub fn parse_nonce(text: &str) -> Result<[u8; 16], String> {
    if text.len() != 32 || !text.is_ascii() {
        return Err("a probe nonce is 32 hex digits".into());
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16)
            .map_err(|_| "a probe nonce is 32 hex digits".to_string())?;
    }
    Ok(out)
}

impl Overlay {
    /// Binds the overlay port on all addresses (port 0: any free port, for tests).
    pub async fn bind(port: u16) -> std::io::Result<Arc<Overlay>> {
        let socket = Arc::new(UdpSocket::bind(("0.0.0.0", port)).await?);
        let overlay = Arc::new(Overlay {
            socket,
            seen: Mutex::new(HashMap::new()),
            arrived: Notify::new(),
            receiver: Mutex::new(None),
        });
        overlay.receive_probes();
        Ok(overlay)
    }

    /// (Re)starts the probe-only receive loop.
    pub fn receive_probes(self: &Arc<Self>) {
        let mut receiver = self.receiver.lock().unwrap_or_else(|p| p.into_inner());
        if receiver.as_ref().is_none_or(|h| h.is_finished()) {
            *receiver = Some(tokio::spawn(receive_loop(self.clone())));
        }
    }

    /// Hands the socket's receive side to the encrypted overlay's driver, which passes probes
    /// back through [`Overlay::record`].
    pub fn take_socket(&self) -> Arc<UdpSocket> {
        if let Some(h) = self
            .receiver
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            h.abort();
        }
        self.socket.clone()
    }

    pub fn port(&self) -> Option<u16> {
        self.socket.local_addr().ok().map(|a| a.port())
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Instant>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a probe datagram (anything else is ignored).
    pub fn record(&self, datagram: &[u8]) {
        if datagram.len() != PROBE_LEN || &datagram[..MAGIC.len()] != MAGIC {
            return;
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&datagram[MAGIC.len()..]);
        let now = Instant::now();
        let mut seen = self.seen();
        seen.retain(|_, at| now.duration_since(*at) < REMEMBER_FOR);
        if seen.len() < REMEMBER {
            seen.insert(nonce, now);
        }
        drop(seen);
        self.arrived.notify_waiters();
    }

    /// Whether a probe with `nonce` arrives within `window` (or arrived recently).
    pub async fn expect(&self, nonce: [u8; 16], window: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            let notified = self.arrived.notified();
            if self.seen().remove(&nonce).is_some() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.seen().remove(&nonce).is_some();
            }
        }
    }

    /// Sends probes with `nonce` to `peer`, a few times over `window` (UDP may drop one).
    pub async fn send(
        &self,
        nonce: [u8; 16],
        peer: SocketAddr,
        window: Duration,
    ) -> Result<u32, String> {
        let mut datagram = Vec::with_capacity(PROBE_LEN);
        datagram.extend_from_slice(MAGIC);
        datagram.extend_from_slice(&nonce);
        let count = 5u32;
        let gap = window / count;
        let mut sent = 0;
        let mut last_error = None;
        for i in 0..count {
            match self.socket.send_to(&datagram, peer).await {
                Ok(_) => sent += 1,
                Err(e) => last_error = Some(e.to_string()),
            }
            if i + 1 < count {
                tokio::time::sleep(gap).await;
            }
        }
        match (sent, last_error) {
            (0, Some(e)) => Err(format!("cannot send to {peer}: {e}")),
            _ => Ok(sent),
        }
    }
}

async fn receive_loop(overlay: Arc<Overlay>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match overlay.socket.recv_from(&mut buf).await {
            // The encrypted overlay's driver turns UDP GRO on for this socket, and it stays on
            // after the driver stops: probes that arrive together can come as one train.
            Ok((n, _from)) => buf[..n]
                .chunks(PROBE_LEN)
                .for_each(|probe| overlay.record(probe)),
            Err(e) => {
                // ICMP errors from earlier sends surface here on Linux; keep serving.
                tracing::debug!(error = %e, "overlay socket receive error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_arrive_and_garbage_does_not_count() {
        let a = Overlay::bind(0).await.unwrap();
        let b = Overlay::bind(0).await.unwrap();
        let to_b: SocketAddr = format!("127.0.0.1:{}", b.port().unwrap()).parse().unwrap();
        let nonce = [7u8; 16];
        // Garbage and a wrong nonce first.
        let junk = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for _ in 0..100 {
            junk.send_to(b"CRLPROBE-not-a-valid-probe", to_b)
                .await
                .unwrap();
        }
        a.send([8u8; 16], to_b, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(!b.expect(nonce, Duration::from_millis(200)).await);
        // Sent before the expectation: still counts.
        a.send(nonce, to_b, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(b.expect(nonce, Duration::from_secs(2)).await);
        assert!(parse_nonce(&"ab".repeat(16)).is_ok());
        assert!(parse_nonce("xyz").is_err());
    }
}
