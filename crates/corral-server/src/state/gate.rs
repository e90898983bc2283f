//! The gate in front of the listener: every TCP connection counts as unauthenticated from the
//! moment it is accepted until it presents an API key or an agent's credential. An
//! unauthenticated connection lives at most [`UNAUTHENTICATED_FOR`] (15 s) (a peer that completes
//! the TLS handshake and then sends nothing is closed then: before its first request nothing
//! else would time it out), and at most `cap` of them are held: one more closes the oldest.
//! With the HTTP header timeout for kept-alive connections, a peer can hold neither file
//! descriptors nor a place in line for long, however many connections it opens; agents and
//! people who have authenticated are never counted or closed by the gate.
//!
//! Which one goes when the cap is reached: the oldest that finished its TLS handshake and has
//! asked for nothing since (what a flood of idle connections holds); else, among those still
//! at work, the oldest once it has had its grace — [`HANDSHAKE_GRACE`] for a TLS handshake,
//! [`TUNNEL_GRACE`] for an agent's tunnel between its upgrade request and its admission —
//! else none: the newcomer waits in line, before its handshake (an open socket and nothing
//! more), for a place to come free — at most [`WAIT_FOR_ROOM`], and at most four times the
//! cap of them wait — and is shed (closed, costing nothing) when the line is full or its wait
//! is over. A fleet of agents that all reconnect at once after a server restart fills the cap
//! with connections at work: closing the oldest of them (the one nearest to finishing) for every
//! newcomer let almost none finish — first for handshakes, then, once those were kept, for
//! tunnels that had finished theirs and waited for their admission — while shedding the
//! newcomers lets every admitted one finish. Shed at once, though, a newcomer's agent backs
//! off and its delay doubles each time; the few shed again and again were the last to return
//! (seconds after everyone else). Waiting in line, it is let in as soon as one finishes: the
//! kernel's accept queue, kept in order and bounded, in front of the gate.

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

/// How long a connection still in its TLS handshake is safe from eviction (a handshake takes
/// milliseconds; a thousand at once on two cores, about a second).
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(3);

/// How long an agent's tunnel is safe from eviction between its upgrade request and its
/// admission: the tunnel's own hello deadline (10 s). In a reconnect storm admissions queue
/// for the datastore; one closed there has done all its work for nothing.
pub const TUNNEL_GRACE: Duration = Duration::from_secs(10);

/// How long a newcomer waits for a place before it is shed.
pub const WAIT_FOR_ROOM: Duration = HANDSHAKE_GRACE;

/// How many newcomers may wait for a place, per place under the cap.
const WAITING_PER_PLACE: usize = 4;

/// How often, at most, the gate logs that it closed connections.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// One admitted connection, as the gate holds it.
struct Slot {
    admitted: Instant,
    /// Its TLS handshake is done (at once for plain HTTP).
    handshaken: AtomicBool,
    /// When it asked for an agent's tunnel, in milliseconds since `admitted` plus one (0: it
    /// has not): from then on it is at work, not idle.
    tunnel_asked: AtomicU64,
    evicted: AtomicBool,
    /// Authenticated: no longer counted, never evicted.
    trusted: AtomicBool,
    /// The task to wake when the connection is evicted while it waits to read.
    waker: Mutex<Option<Waker>>,
}

impl Slot {
    fn new(handshaken: bool) -> Slot {
        Slot {
            admitted: Instant::now(),
            handshaken: AtomicBool::new(handshaken),
            tunnel_asked: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            trusted: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    /// Finished its handshake and asked for nothing since: what an idle flood holds.
    fn idle(&self) -> bool {
        self.handshaken.load(Ordering::Acquire) && self.tunnel_asked.load(Ordering::Acquire) == 0
    }

    /// At work (in its handshake, or a tunnel awaiting admission) for longer than its grace.
    fn past_grace(&self, now: Instant) -> bool {
        let age = now.saturating_duration_since(self.admitted);
        match self.tunnel_asked.load(Ordering::Acquire) {
            0 => age >= HANDSHAKE_GRACE,
            asked => age.saturating_sub(Duration::from_millis(asked - 1)) >= TUNNEL_GRACE,
        }
    }

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
    shed: AtomicU64,
    /// Newcomers waiting for a place now.
    waiting: std::sync::atomic::AtomicUsize,
    /// A place came free (one waiter is woken for each).
    freed: tokio::sync::Notify,
    last_log: Mutex<Option<(Instant, u64)>>,
}

/// One newcomer's place in line: counted while it waits.
struct InLine<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    pub fn new(cap: usize) -> Gate {
        Gate {
            cap: cap.max(1),
            held: Mutex::new(Held::default()),
            evicted: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            freed: tokio::sync::Notify::new(),
            last_log: Mutex::new(None),
        }
    }

    fn held(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection from `addr` was accepted (`handshaken`: it has no TLS handshake to do): it
    /// is admitted, or waits in line for a place (see the module's notes), or is shed (`None`).
    async fn enter(&self, addr: SocketAddr, handshaken: bool) -> Option<Arc<Slot>> {
        // Nobody waiting: straight in if there is room. Otherwise to the back of the line.
        if self.waiting.load(Ordering::Acquire) == 0
            && let Some(slot) = self.try_admit(addr, handshaken)
        {
            return Some(slot);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.cap * WAITING_PER_PLACE {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.shed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let _in_line = InLine(&self.waiting);
        let deadline = tokio::time::Instant::now() + WAIT_FOR_ROOM;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking, so a place freed in between is not missed.
            freed.as_mut().enable();
            if let Some(slot) = self.try_admit(addr, handshaken) {
                return Some(slot);
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        // The wait is over: by now the handshakes that filled the gate may be past their grace.
        self.admit(addr, handshaken)
    }

    /// Like [`Gate::enter`] without waiting: `None` (counted as shed) when there is no room.
    fn admit(&self, addr: SocketAddr, handshaken: bool) -> Option<Arc<Slot>> {
        let slot = self.try_admit(addr, handshaken);
        if slot.is_none() {
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
        slot
    }

    /// Admits a connection from `addr`. At the cap, closes one unauthenticated connection to
    /// make room, or admits none (`None`) when every one held is at work within its grace.
    fn try_admit(&self, addr: SocketAddr, handshaken: bool) -> Option<Arc<Slot>> {
        let slot = Arc::new(Slot::new(handshaken));
        let mut evicted = Vec::new();
        {
            let mut held = self.held();
            if let Some((old_seq, old)) = held.by_addr.remove(&addr) {
                // The same address and port again: the earlier connection is gone.
                held.order.remove(&old_seq);
                old.trusted.store(true, Ordering::Release);
            }
            let now = Instant::now();
            while held.by_addr.len() >= self.cap {
                let first = |pick: &dyn Fn(&Slot) -> bool| {
                    held.order
                        .iter()
                        .find(|(_, a)| held.by_addr.get(*a).is_some_and(|(_, s)| pick(s)))
                        .map(|(seq, a)| (*seq, *a))
                };
                let victim = first(&Slot::idle).or_else(|| first(&|s| s.past_grace(now)));
                let (seq, victim) = victim?;
                held.order.remove(&seq);
                if let Some((_, s)) = held.by_addr.remove(&victim) {
                    evicted.push((victim, s));
                }
            }
            let seq = held.next;
            held.next += 1;
            held.by_addr.insert(addr, (seq, slot.clone()));
            held.order.insert(seq, addr);
        }
        for (addr, s) in &evicted {
            s.evict();
            self.log_eviction(*addr);
        }
        Some(slot)
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

    /// The connection from `addr` asked for an agent's tunnel: it is at work, no longer idle,
    /// until its admission (or [`TUNNEL_GRACE`]).
    pub fn tunnel_asked(&self, addr: SocketAddr) {
        let held = self.held();
        if let Some((_, slot)) = held.by_addr.get(&addr) {
            let since = slot.admitted.elapsed().as_millis() as u64;
            slot.tunnel_asked.store(since + 1, Ordering::Release);
        }
    }

    /// The connection from `addr` authenticated: it is no longer counted or evicted.
    pub fn authenticated(&self, addr: SocketAddr) {
        let mut held = self.held();
        if let Some((seq, slot)) = held.by_addr.remove(&addr) {
            held.order.remove(&seq);
            slot.trusted.store(true, Ordering::Release);
            self.freed.notify_one();
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
            self.freed.notify_one();
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

    /// Newcomers waiting for a place now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Connections refused before their handshake because the cap was full of work in
    /// progress and the line full or their wait over, since start.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }
}

/// An `axum_server` acceptor that admits each TCP connection through the gate (before TLS, so
/// half-finished handshakes count too). With `tls`, [`Handshaken`] must wrap the TLS acceptor
/// around it, to say when each handshake is done.
#[derive(Clone)]
pub struct GateAcceptor {
    pub gate: Arc<Gate>,
    pub tls: bool,
}

impl<S: Send + 'static> axum_server::accept::Accept<tokio::net::TcpStream, S> for GateAcceptor {
    type Stream = Gated<tokio::net::TcpStream>;
    type Service = S;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, S)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        // Every message here (a reply, a welcome, a command) is written whole and should leave
        // at once: with Nagle's algorithm a small write that follows another waits for the
        // peer's delayed acknowledgement (40 ms on Linux) — which made every agent's
        // registration and many API replies 40 ms slower than their work. Failing to set it
        // only costs that latency.
        let _ = stream.set_nodelay(true);
        let gate = self.gate.clone();
        let handshaken = !self.tls;
        Box::pin(async move {
            let addr = stream.peer_addr()?;
            let Some(slot) = gate.enter(addr, handshaken).await else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "shed: the gate is full of connections at work and of newcomers waiting",
                ));
            };
            let gated = Gated {
                io: stream,
                slot,
                gate,
                addr,
                deadline: Some(Box::pin(tokio::time::sleep(UNAUTHENTICATED_FOR))),
            };
            Ok((gated, service))
        })
    }
}

/// Wraps the TLS acceptor around a [`GateAcceptor`]: marks each connection's slot once its
/// handshake is done, so that the gate closes idle connections before handshakes in progress.
#[derive(Clone)]
pub struct Handshaken<A> {
    pub inner: A,
}

type TlsGated = tokio_rustls::server::TlsStream<Gated<tokio::net::TcpStream>>;

impl<A, S> axum_server::accept::Accept<tokio::net::TcpStream, S> for Handshaken<A>
where
    A: axum_server::accept::Accept<tokio::net::TcpStream, S, Stream = TlsGated>,
    A::Future: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = TlsGated;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(TlsGated, A::Service)>> + Send>>;

    fn accept(&self, stream: tokio::net::TcpStream, service: S) -> Self::Future {
        let handshake = self.inner.accept(stream, service);
        Box::pin(async move {
            let (stream, service) = handshake.await?;
            stream
                .get_ref()
                .0
                .slot
                .handshaken
                .store(true, Ordering::Release);
            Ok((stream, service))
        })
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
        let a = gate.admit(addr(1), true).unwrap();
        let b = gate.admit(addr(2), true).unwrap();
        gate.authenticated(addr(2));
        let c = gate.admit(addr(3), true).unwrap();
        assert_eq!(gate.unauthenticated(), 2);
        assert!(!a.evicted.load(Ordering::Acquire));
        let d = gate.admit(addr(4), true).unwrap();
        assert!(a.evicted.load(Ordering::Acquire), "oldest evicted");
        assert!(!b.evicted.load(Ordering::Acquire), "authenticated kept");
        assert!(!c.evicted.load(Ordering::Acquire) && !d.evicted.load(Ordering::Acquire));
        assert_eq!(gate.evictions(), 1);
        gate.leave(addr(3), &c);
        assert_eq!(gate.unauthenticated(), 1);
    }

    #[test]
    fn idle_connections_go_before_handshakes_and_young_handshakes_shed_the_newcomer() {
        let gate = Gate::new(3);
        let h1 = gate.admit(addr(1), false).unwrap();
        let idle = gate.admit(addr(2), false).unwrap();
        idle.handshaken.store(true, Ordering::Release);
        let h3 = gate.admit(addr(3), false).unwrap();
        // At the cap: the idle one goes, though it is not the oldest.
        let h4 = gate.admit(addr(4), false).unwrap();
        assert!(idle.evicted.load(Ordering::Acquire));
        assert!(!h1.evicted.load(Ordering::Acquire));
        // Only young handshakes left: the newcomer is shed, nobody is closed.
        assert!(gate.admit(addr(5), false).is_none());
        assert_eq!(gate.shed(), 1);
        assert_eq!(gate.evictions(), 1);
        assert!(
            [&h1, &h3, &h4]
                .iter()
                .all(|s| !s.evicted.load(Ordering::Acquire))
        );
        assert_eq!(gate.unauthenticated(), 3);
    }

    #[test]
    fn a_tunnel_awaiting_admission_is_at_work_not_idle() {
        let gate = Gate::new(2);
        let tunnel = gate.admit(addr(1), true).unwrap();
        gate.tunnel_asked(addr(1));
        let idle = gate.admit(addr(2), true).unwrap();
        // The idle one goes, though the tunnel is older and has finished its handshake too.
        let _third = gate.admit(addr(3), true).unwrap();
        assert!(idle.evicted.load(Ordering::Acquire));
        assert!(!tunnel.evicted.load(Ordering::Acquire));
        // Only work in progress left, all within its grace: the newcomer is shed.
        gate.tunnel_asked(addr(3));
        assert!(gate.admit(addr(4), true).is_none());
        assert!(!tunnel.evicted.load(Ordering::Acquire));
        // Past its grace (the tunnel's hello deadline), the oldest at work goes.
        let later = Instant::now() + TUNNEL_GRACE;
        assert!(tunnel.past_grace(later) && !tunnel.past_grace(Instant::now()));
    }

    #[tokio::test]
    async fn a_newcomer_waits_in_line_for_a_place_and_is_shed_when_the_line_is_full_or_its_wait_over()
     {
        let gate = Arc::new(Gate::new(1));
        let first = gate.enter(addr(1), false).await.unwrap();
        // The gate holds one handshake, young: the next ones wait.
        let waiters: Vec<_> = (2..=5)
            .map(|port| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.enter(addr(port), false).await })
            })
            .collect();
        while gate.waiting() < 4 {
            tokio::task::yield_now().await;
        }
        // The line (four per place) is full: one more is shed at once.
        assert!(gate.enter(addr(6), false).await.is_none());
        assert_eq!(gate.shed(), 1);
        // A place comes free: the first in line takes it.
        gate.leave(addr(1), &first);
        let (done, _, rest) = futures_util::future::select_all(waiters).await;
        let second = done.unwrap().unwrap();
        assert_eq!(gate.unauthenticated(), 1);
        assert_eq!(gate.evictions(), 0);
        // It asks for a tunnel at once (so it is within its grace for longer than the wait).
        second.tunnel_asked.store(1, Ordering::Release);
        // The others wait out WAIT_FOR_ROOM, then are shed: the one held is within its grace.
        let started = Instant::now();
        for waiter in rest {
            assert!(waiter.await.unwrap().is_none());
        }
        assert!(started.elapsed() + Duration::from_millis(100) >= WAIT_FOR_ROOM);
        assert_eq!(gate.shed(), 4);
        assert_eq!(gate.waiting(), 0);
        assert!(!second.evicted.load(Ordering::Acquire));
    }
}
