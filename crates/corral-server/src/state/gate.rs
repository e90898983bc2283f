//! The gate in front of the listener: every TCP connection counts as unauthenticated from the
//! moment it is accepted until it presents an API key or an agent's credential. An
//! unauthenticated connection lives at most [`UNAUTHENTICATED_FOR`] (15 s) (a peer that completes
//! the TLS handshake and then sends nothing is closed then: before its first request nothing
//! else would time it out), and at most `cap` of them are held: one more closes the oldest.
//! With the HTTP header timeout for kept-alive connections, a peer can hold neither file
//! descriptors nor a place in line for long, however many connections it opens; agents and
//! people who have authenticated are never counted or closed by the gate.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a connection may stay unauthenticated: longer than the tunnel's own hello
/// deadline (10 s), so an agent that is too slow hears why from the tunnel.
pub const UNAUTHENTICATED_FOR: Duration = Duration::from_secs(15);

/// How often, at most, the gate logs that it closed connections.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One admitted connection, as the gate holds it.
#[derive(Default)]
struct Slot {
    evicted: AtomicBool,
    /// Authenticated: no longer counted, never evicted.
    trusted: AtomicBool,
    /// The task to wake when the connection is evicted while it waits to read.
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Default)]
struct Held {
    next: u64,
    by_addr: HashMap<SocketAddr, (u64, Arc<Slot>)>,
    /// Admission order, oldest first.
    order: BTreeMap<u64, SocketAddr>,
}

/// Counts and bounds the connections that have not authenticated.
pub struct Gate {
    cap: usize,
    held: Mutex<Held>,
    evicted: AtomicU64,
    last_log: Mutex<Option<(Instant, u64)>>,
}

impl Gate {
    pub fn new(cap: usize) -> Gate {
        Gate {
            cap: cap.max(1),
            held: Mutex::new(Held::default()),
            evicted: AtomicU64::new(0),
            last_log: Mutex::new(None),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `addr` was accepted. Closes the oldest unauthenticated ones beyond
    /// the cap.
    fn admit(&self, addr: SocketAddr) -> Arc<Slot> {
        let slot = Arc::new(Slot::default());
        let mut evicted = Vec::new();
        {
            let mut held = self.held();
            let seq = held.next;
            held.next += 1;
            if let Some((old_seq, old)) = held.by_addr.insert(addr, (seq, slot.clone())) {
                // The same address and port again: the earlier connection is gone.
                held.order.remove(&old_seq);
                old.trusted.store(true, Ordering::Release);
            }
            held.order.insert(seq, addr);
            while held.by_addr.len() > self.cap {
                let Some((_, oldest)) = held.order.pop_first() else {
                    break;
                };
                if let Some((_, s)) = held.by_addr.remove(&oldest) {
                    evicted.push((oldest, s));
                }
            }
        }
        for (addr, s) in &evicted {
            s.evict();
            self.log_eviction(*addr);
        }
        slot
    }

    fn log_eviction(&self, addr: SocketAddr) {
        let total = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        let due = last.is_none_or(|(at, _)| at.elapsed() >= LOG_EVERY);
        if due {
            let since = total - last.map_or(0, |(_, n)| n);
            tracing::warn!(
                cap = self.cap,
                closed = since,
                closed_total = total,
                last = %addr,
                "too many connections that have not authenticated: closed the oldest (see corral_connections_evicted_total)"
            );
            *last = Some((Instant::now(), total));
        }
    }

    /// The connection from `addr` authenticated: it is no longer counted or evicted.
    pub fn authenticated(&self, addr: SocketAddr) {
        let mut held = self.held();
        if let Some((seq, slot)) = held.by_addr.remove(&addr) {
            held.order.remove(&seq);
            slot.trusted.store(true, Ordering::Release);
        }
    }

    fn leave(&self, addr: SocketAddr, slot: &Arc<Slot>) {
        let mut held = self.held();
        if let Some((seq, s)) = held.by_addr.get(&addr)
            && Arc::ptr_eq(s, slot)
        {
            let seq = *seq;
            held.by_addr.remove(&addr);
            held.order.remove(&seq);
        }
    }

    /// Connections held now that have not authenticated.
    pub fn unauthenticated(&self) -> usize {
        self.held().by_addr.len()
    }

    /// Connections closed because the cap was reached, since start.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// An `axum_server` acceptor that admits each TCP connection through the gate (before TLS, so
/// half-finished handshakes count too).
#[derive(Clone)]
pub struct GateAcceptor {
    pub gate: Arc<Gate>,
}

impl<S> axum_server::accept::Accept<tokio::net::TcpStream, S> for GateAcceptor {
    type Stream = Gated<tokio::net::TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        // Every message here (a reply, a welcome, a command) is written whole and should leave
        // at once: with Nagle's algorithm a small write that follows another waits for the
        // peer's delayed acknowledgement (40 ms on Linux) — which made every agent's
        // registration and many API replies 40 ms slower than their work. Failing to set it
        // only costs that latency.
        let _ = stream.set_nodelay(true);
        std::future::ready(stream.peer_addr().map(|addr| {
            let slot = self.gate.admit(addr);
            let gated = Gated {
                io: stream,
                slot,
                gate: self.gate.clone(),
                addr,
                deadline: Some(Box::pin(tokio::time::sleep(UNAUTHENTICATED_FOR))),
            };
            (gated, service)
        }))
    }
}

/// A connection admitted by the gate: reads and writes fail once it is evicted or stayed
/// unauthenticated too long.
pub struct Gated<IO> {
    io: IO,
    slot: Arc<Slot>,
    gate: Arc<Gate>,
    addr: SocketAddr,
    /// Until the connection authenticates (then dropped: an agent's tunnel keeps no timer).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Gated<IO> {
    fn check(&self) -> io::Result<()> {
        if self.slot.evicted.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed: too many unauthenticated connections",
            ));
        }
        Ok(())
    }

    /// Past the deadline and still unauthenticated: closed.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.slot.trusted.load(Ordering::Acquire) {
            self.deadline = None;
            return Ok(());
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            self.gate.leave(self.addr, &self.slot);
            self.slot.evicted.store(true, Ordering::Release);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "closed: no authenticated request in time",
            ));
        }
        Ok(())
    }
}

impl<IO> Drop for Gated<IO> {
    fn drop(&mut self) {
        self.gate.leave(self.addr, &self.slot);
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Gated<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        self.check_deadline(cx)?;
        if !self.slot.trusted.load(Ordering::Acquire) {
            // Evicting wakes this task, so a peer that never sends is closed too.
            *self.slot.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
            // Evicted between the check and the registration: not woken, so look again.
            self.check()?;
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Gated<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn the_oldest_unauthenticated_go_first_and_the_authenticated_never() {
        let gate = Gate::new(2);
        let a = gate.admit(addr(1));
        let b = gate.admit(addr(2));
        gate.authenticated(addr(2));
        let c = gate.admit(addr(3));
        assert_eq!(gate.unauthenticated(), 2);
        assert!(!a.evicted.load(Ordering::Acquire));
        let d = gate.admit(addr(4));
        assert!(a.evicted.load(Ordering::Acquire), "oldest evicted");
        assert!(!b.evicted.load(Ordering::Acquire), "authenticated kept");
        assert!(!c.evicted.load(Ordering::Acquire) && !d.evicted.load(Ordering::Acquire));
        assert_eq!(gate.evictions(), 1);
        gate.leave(addr(3), &c);
        assert_eq!(gate.unauthenticated(), 1);
    }
}
