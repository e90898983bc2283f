//! Several servers on one PostgreSQL datastore: the one holding the write lock (the active
//! server) does the work; every other one accepts connections all the same — agents, CLI,
//! browsers — and relays each, whole, to the active server.
//!
//! Why relay rather than let every server write: the server's invariants rest on one writer
//! (registration serialised in one transaction, the audit chain's head, overlay leases chosen
//! one at a time, the reconciler's view of commands in flight). A relayed connection keeps
//! every one of them, and a command for any host reaches it, since every tunnel ends at the
//! active server. When it dies, the relayed connections end with it, the agents dial again —
//! through any server — and reach the next active one.
//!
//! A waiting server terminates TLS with its own certificate (the deployment's CA: the agents'
//! pin holds), opens a TLS connection to the active server's `peer_url` (pinned to the same
//! CA, with the ALPN protocol the client chose), sends one preamble line — the relay secret
//! derived from the master key, and the client's address — and then copies bytes both ways.
//! The active server's [`RelayAcceptor`] reads that line after its TLS handshake: with the
//! right secret, every request of the connection carries [`RelayedFrom`] (the API takes the
//! client's address from it); with a wrong one the connection is closed; anything else is
//! HTTP and goes on untouched.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};

use crate::bootstrap::Follower;
use crate::store::{Membership, ServerRow};

/// What a relayed connection starts with, after TLS.
const MAGIC: &[u8] = b"CORRAL-RELAY/1 ";
/// Longest preamble line: the magic, 64 hex digits, an address.
const MAX_PREAMBLE: usize = 160;
/// How long the active server waits for a connection's first bytes (as for a request's
/// headers, `HEADER_TIMEOUT`).
const FIRST_BYTES_WAIT: Duration = Duration::from_secs(10);
/// How long a waiting server gives a client's TLS handshake, and a dial to the active one.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
const DIAL_WAIT: Duration = Duration::from_secs(3);
/// Most connections one waiting server relays at once (each holds two TLS sessions).
pub const MAX_RELAYED: usize = 20_000;
/// How often a waiting server reads which server is active, and writes its own row.
const LOOK_EVERY: Duration = Duration::from_secs(1);
const ANNOUNCE_EVERY: u32 = 5;
/// An active server's row older than this is not relayed to (it stopped refreshing it).
pub const ACTIVE_FRESH_MS: i64 = 15_000;

/// The client address of a relayed connection, set on each of its requests by
/// [`RelayAcceptor`] (never from anything a client sends).
#[derive(Debug, Clone, Copy)]
pub struct RelayedFrom(pub SocketAddr);

/// The TCP peer of the connection a request came on — for a relayed one the relaying
/// server's side, while `ConnectInfo` holds the client's address: what the connection gate
/// (`state::gate`) knows the connection by. Set by the API's first layer on every request.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionPeer(pub SocketAddr);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The preamble line a waiting server sends for a client at `from`.
pub fn preamble(secret: &[u8; 32], from: SocketAddr) -> Vec<u8> {
    let mut line = MAGIC.to_vec();
    line.extend_from_slice(hex(secret).as_bytes());
    line.push(b' ');
    line.extend_from_slice(from.to_string().as_bytes());
    line.push(b'\n');
    line
}

/// What a connection's first bytes were.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Not a relay preamble: the bytes read go back in front of the stream.
    Plain(Vec<u8>),
    /// A preamble with the right secret: the client's address, and the bytes read after it.
    Relayed(SocketAddr, Vec<u8>),
}

/// Why a preamble was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreambleError {
    #[error("a relayed connection with a wrong secret (a server with another master key?)")]
    WrongSecret,
    #[error("a relay preamble that does not read")]
    Malformed,
}

/// Judges `buf` (what has been read so far): `None` while more bytes are needed.
pub fn judge(buf: &[u8], secret: &[u8; 32]) -> Option<Result<FirstBytes, PreambleError>> {
    let n = buf.len().min(MAGIC.len());
    if buf[..n] != MAGIC[..n] {
        return Some(Ok(FirstBytes::Plain(buf.to_vec())));
    }
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return (buf.len() > MAX_PREAMBLE).then_some(Err(PreambleError::Malformed));
    };
    if end > MAX_PREAMBLE {
        return Some(Err(PreambleError::Malformed));
    }
    let line = std::str::from_utf8(&buf[MAGIC.len()..end]).ok();
    let Some((given, from)) = line.and_then(|l| l.split_once(' ')) else {
        return Some(Err(PreambleError::Malformed));
    };
    if !same(given.as_bytes(), hex(secret).as_bytes()) {
        return Some(Err(PreambleError::WrongSecret));
    }
    let Ok(from) = from.parse::<SocketAddr>() else {
        return Some(Err(PreambleError::Malformed));
    };
    Some(Ok(FirstBytes::Relayed(from, buf[end + 1..].to_vec())))
}

async fn read_first_bytes<S: AsyncRead + Unpin>(
    stream: &mut S,
    secret: &[u8; 32],
) -> io::Result<FirstBytes> {
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    loop {
        if !buf.is_empty() {
            match judge(&buf, secret) {
                Some(Ok(first)) => return Ok(first),
                Some(Err(e)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                None => {}
            }
        }
        let got = stream.read(&mut chunk).await?;
        if got == 0 {
            // Closed before saying anything that reads: HTTP sees the end.
            return Ok(FirstBytes::Plain(buf));
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// A stream with bytes already read put back in front of it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = (self.prefix.len() - self.at).min(buf.remaining());
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The connection's service, setting [`RelayedFrom`] on each request of a relayed one.
#[derive(Clone)]
pub struct Relayed<S> {
    inner: S,
    from: Option<SocketAddr>,
}

impl<S, B> tower_service::Service<axum::http::Request<B>> for Relayed<S>
where
    S: tower_service::Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> S::Future {
        if let Some(from) = self.from {
            req.extensions_mut().insert(RelayedFrom(from));
        }
        self.inner.call(req)
    }
}

/// The active server's acceptor, around the TLS one: reads each connection's first bytes and
/// tells a relayed connection (see the module's documentation) from any other.
#[derive(Clone)]
pub struct RelayAcceptor<A> {
    pub inner: A,
    pub secret: Arc<[u8; 32]>,
}

impl<A, S> axum_server::accept::Accept<TcpStream, S> for RelayAcceptor<A>
where
    A: axum_server::accept::Accept<TcpStream, S>,
    A::Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    A::Service: Send + 'static,
    A::Future: Send + 'static,
{
    type Stream = Rewind<A::Stream>;
    type Service = Relayed<A::Service>;
    type Future = Pin<Box<dyn Future<Output = io::Result<(Self::Stream, Self::Service)>> + Send>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let accepted = self.inner.accept(stream, service);
        let secret = self.secret.clone();
        Box::pin(async move {
            let (mut stream, service) = accepted.await?;
            let first =
                tokio::time::timeout(FIRST_BYTES_WAIT, read_first_bytes(&mut stream, &secret))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "said nothing"))?;
            let first = first.inspect_err(|e| {
                if e.kind() == io::ErrorKind::InvalidData {
                    tracing::warn!(error = %e, "refused a relayed connection");
                }
            })?;
            let (bytes, from) = match first {
                FirstBytes::Plain(bytes) => (bytes, None),
                FirstBytes::Relayed(from, bytes) => (bytes, Some(from)),
            };
            Ok((
                Rewind::new(bytes, stream),
                Relayed {
                    inner: service,
                    from,
                },
            ))
        })
    }
}

/// A waiting server relaying: stops accepting when dropped (connections already relayed run
/// on until either end closes).
pub struct Following {
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for Following {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Accepts on `listener` and relays every connection to the active server, while announcing
/// this server's row and reading which server is active.
pub(crate) fn follow(listener: std::net::TcpListener, parts: Follower) -> io::Result<Following> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let (active_tx, active_rx) = watch::channel(None::<String>);
    let look = tokio::spawn(look_for_active(
        parts.me.clone(),
        parts.membership,
        active_tx,
    ));
    let clients = |alpn: &[u8]| -> io::Result<Arc<rustls::ClientConfig>> {
        let mut c = corral_tls::client_config(parts.checksum).map_err(io::Error::other)?;
        if !alpn.is_empty() {
            c.alpn_protocols = vec![alpn.to_vec()];
        }
        Ok(Arc::new(c))
    };
    let dial = Arc::new(Dial {
        h2: clients(b"h2")?,
        http1: clients(b"http/1.1")?,
        none: clients(b"")?,
        secret: parts.relay_secret,
        own_peer_url: parts.me.peer_url.clone(),
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(parts.tls));
    let accept = tokio::spawn(async move {
        let permits = Arc::new(Semaphore::new(MAX_RELAYED));
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection to relay");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(
                    max = MAX_RELAYED,
                    "relaying as many connections as allowed: closing a new one"
                );
                continue;
            };
            let (acceptor, dial, active) = (acceptor.clone(), dial.clone(), active_rx.clone());
            tokio::spawn(async move {
                if let Err(e) = relay_one(tcp, from, acceptor, &dial, active).await {
                    tracing::debug!(%from, error = %e, "relayed connection ended");
                }
                drop(permit);
            });
        }
    });
    Ok(Following {
        tasks: vec![look.abort_handle(), accept.abort_handle()],
    })
}

/// How a waiting server reaches the active one.
struct Dial {
    h2: Arc<rustls::ClientConfig>,
    http1: Arc<rustls::ClientConfig>,
    none: Arc<rustls::ClientConfig>,
    secret: [u8; 32],
    own_peer_url: String,
}

impl Dial {
    async fn to(
        &self,
        peer_url: &str,
        alpn: Option<&[u8]>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let bad = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("peer URL {peer_url:?}"),
            )
        };
        let url = url::Url::parse(peer_url).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().ok_or_else(bad)?;
        let name = rustls::pki_types::ServerName::try_from(host.clone()).map_err(|_| bad())?;
        let config = match alpn {
            Some(b"h2") => self.h2.clone(),
            Some(b"http/1.1") => self.http1.clone(),
            _ => self.none.clone(),
        };
        let tcp = tokio::time::timeout(DIAL_WAIT, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "dialing the active server"))??;
        let _ = tcp.set_nodelay(true);
        tokio::time::timeout(
            DIAL_WAIT,
            tokio_rustls::TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS with the active server"))?
    }
}

async fn relay_one(
    tcp: TcpStream,
    from: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    dial: &Dial,
    mut active: watch::Receiver<Option<String>>,
) -> io::Result<()> {
    let _ = tcp.set_nodelay(true);
    let mut client = tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake"))??;
    let alpn = client.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    // During a takeover there may be no active server for a moment: wait for one (a little).
    let deadline = tokio::time::Instant::now() + HANDSHAKE_WAIT;
    let (mut upstream, relaying_to) = loop {
        let peer = active.borrow_and_update().clone();
        if let Some(peer) = peer.filter(|p| *p != dial.own_peer_url) {
            match dial.to(&peer, alpn.as_deref()).await {
                Ok(up) => break (up, peer),
                Err(e) => tracing::debug!(%peer, error = %e, "cannot reach the active server"),
            }
        }
        if tokio::time::timeout_at(deadline, active.changed())
            .await
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no active server to relay to",
            ));
        }
    };
    upstream.write_all(&preamble(&dial.secret, from)).await?;
    // Until either end closes — or another server became the active one (this one among
    // them): then the one relayed to was cut off or frozen, and a client still connected
    // to it through here would wait out its own dead-peer timeout before dialing again.
    let superseded = async {
        while active.changed().await.is_ok() {
            if active.borrow().as_deref() != Some(relaying_to.as_str()) {
                return;
            }
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            copied?;
        }
        () = superseded => {
            tracing::debug!(%from, "the active server changed: ending a relayed connection");
        }
    }
    Ok(())
}

/// Reads which server is active (every `LOOK_EVERY`) and writes this one's row (every
/// `ANNOUNCE_EVERY` looks), telling the relay when the active server's `peer_url` changes.
async fn look_for_active(
    mut me: ServerRow,
    membership: Membership,
    active: watch::Sender<Option<String>>,
) {
    let mut tick = 0u32;
    let mut failing = false;
    loop {
        let now = crate::time_fmt::now_unix_millis();
        me.seen_at = now;
        let announced = if tick.is_multiple_of(ANNOUNCE_EVERY) {
            membership.announce(&me).await
        } else {
            Ok(())
        };
        let looked = match announced {
            Ok(()) => membership.active(now - ACTIVE_FRESH_MS).await,
            Err(e) => Err(e),
        };
        match looked {
            Ok(row) => {
                failing = false;
                let peer = row.map(|r| r.peer_url);
                active.send_if_modified(|held| {
                    let changed = *held != peer;
                    if changed {
                        tracing::info!(active = ?peer, "relaying to the active server");
                        *held = peer.clone();
                    }
                    changed
                });
            }
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot read which server is active");
            }
            Err(_) => {}
        }
        tick = tick.wrapping_add(1);
        tokio::time::sleep(LOOK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn a_preamble_reads_back_with_what_follows_it() {
        let from: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let mut bytes = preamble(&SECRET, from);
        assert!(judge(&bytes[..20], &SECRET).is_none(), "needs more");
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            judge(&bytes, &SECRET),
            Some(Ok(FirstBytes::Relayed(
                from,
                b"GET / HTTP/1.1\r\n".to_vec()
            )))
        );
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert!(matches!(
            judge(&preamble(&SECRET, v6), &SECRET),
            Some(Ok(FirstBytes::Relayed(a, _))) if a == v6
        ));
    }

    #[test]
    fn anything_else_is_plain_from_its_first_differing_byte() {
        for first in [&b"GET /healthz"[..], b"PRI * HTTP/2.0", b"CONNECT x", b"C"] {
            let judged = judge(first, &SECRET);
            if first == b"C" {
                assert!(judged.is_none());
            } else {
                assert_eq!(judged, Some(Ok(FirstBytes::Plain(first.to_vec()))));
            }
        }
    }

    #[test]
    fn a_wrong_secret_or_a_bad_line_is_refused() {
        let from: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            judge(&preamble(&[8; 32], from), &SECRET),
            Some(Err(PreambleError::WrongSecret))
        );
        let mut bad = MAGIC.to_vec();
        bad.extend_from_slice(hex(&SECRET).as_bytes());
        bad.extend_from_slice(b" not-an-address\n");
        assert_eq!(judge(&bad, &SECRET), Some(Err(PreambleError::Malformed)));
        let mut long = MAGIC.to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_PREAMBLE));
        assert_eq!(judge(&long, &SECRET), Some(Err(PreambleError::Malformed)));
        assert_eq!(
            judge(b"CORRAL-RELAY/1 x\n", &SECRET),
            Some(Err(PreambleError::Malformed))
        );
    }

    #[tokio::test]
    async fn rewind_gives_back_the_bytes_read_then_the_stream() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello".to_vec(), b);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
