//! The agent's DNS responder: service discovery on the overlay.
//!
//! Stack containers use their host's overlay bridge address (e.g. `10.42.3.1`) as their DNS
//! server; Docker's embedded resolver forwards to it from the container's own address. The
//! responder answers, from the name table the server pushes:
//!
//! - `SERVICE.STACK`, where `STACK` is a stack in the table: the service's ready replicas'
//!   addresses, on every host;
//! - `SERVICE`: the same in the asker's own stack (the stack whose replicas include the
//!   query's source address); a bare name is never forwarded;
//!
//! and relays everything else to the host's resolvers.
//!
//! [`answer`] is the pure part (bytes in, decision out); [`serve`] / [`serve_on`] the socket
//! part. The DNS wire format (RFC 1035) is hand-rolled for this narrow job: one question,
//! class IN, A records.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use corral_proto::NameTable;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};

/// Largest query considered; longer datagrams are dropped.
pub const MAX_QUERY: usize = 4096;
/// Our answers fit the classic UDP payload limit (no EDNS, no truncation bit: with more ready
/// addresses than fit, a rotating window of them is returned).
const MAX_REPLY: usize = 512;
/// TTL of our A records: replicas come and go, so askers re-ask soon.
pub const TTL_SECS: u32 = 5;
/// How long one upstream resolver gets to answer a forwarded query.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Forwarded queries in flight at once; queries beyond are dropped (the asker retries).
pub const MAX_FORWARDS: usize = 64;
/// glibc reads at most this many `nameserver` lines.
const MAX_NAMESERVERS: usize = 3;

const HEADER: usize = 12;
const QR: u16 = 0x8000;
const OPCODE: u16 = 0x7800;
const AA: u16 = 0x0400;
const RD: u16 = 0x0100;
const RA: u16 = 0x0080;

const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;
const NOTIMP: u16 = 4;
const REFUSED: u16 = 5;

const TYPE_A: u16 = 1;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const CLASS_ANY: u16 = 255;

/// The name table in lookup form: names lowercased, addresses deduplicated and sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// stack → service → ready addresses.
    stacks: HashMap<Vec<u8>, HashMap<Vec<u8>, Vec<Ipv4Addr>>>,
    /// replica address → its stack; `None` when several stacks claim the address (a stale
    /// table during a redeploy): such an asker belongs to no stack rather than the wrong one.
    member_of: HashMap<Ipv4Addr, Option<Vec<u8>>>,
}

impl Names {
    pub fn new(table: &NameTable) -> Names {
        let mut names = Names::default();
        for s in &table.services {
            let stack = s.stack.to_ascii_lowercase().into_bytes();
            let service = s.service.to_ascii_lowercase().into_bytes();
            let ready = names
                .stacks
                .entry(stack.clone())
                .or_default()
                .entry(service)
                .or_default();
            ready.extend_from_slice(&s.ready);
            ready.sort_unstable();
            ready.dedup();
            for &member in &s.members {
                names
                    .member_of
                    .entry(member)
                    .and_modify(|claimed| {
                        if claimed.as_ref() != Some(&stack) {
                            *claimed = None;
                        }
                    })
                    .or_insert_with(|| Some(stack.clone()));
            }
        }
        names
    }

    fn stack_of(&self, asker: Ipv4Addr) -> Option<&[u8]> {
        self.member_of.get(&asker)?.as_deref()
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// A full DNS response to send back.
    Answer(Vec<u8>),
    /// Not ours: ask the host's resolvers.
    Forward,
    /// Unparseable (or not a query): send nothing.
    Drop,
}

/// The question section of a query, borrowed from it.
struct Question<'a> {
    /// The name, type and class as they arrived (echoed byte for byte: some resolvers check
    /// the case of the echoed name).
    raw: &'a [u8],
    /// The first two labels, and how many there are.
    labels: [&'a [u8]; 2],
    count: usize,
    qtype: u16,
    qclass: u16,
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let pair = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([pair[0], pair[1]]))
}

/// Parses one question at the start of `b` (right after the header). `None` when it is
/// malformed: a compression pointer or extended label type, a name over 255 bytes, or bytes
/// missing.
fn parse_question(b: &[u8]) -> Option<Question<'_>> {
    let mut pos = 0usize;
    let mut labels: [&[u8]; 2] = [&[], &[]];
    let mut count = 0usize;
    loop {
        let len = usize::from(*b.get(pos)?);
        if len == 0 {
            pos += 1;
            break;
        }
        // 0b11: a compression pointer; 0b01 / 0b10: extended label types. A label's length
        // is therefore at most 63.
        if len & 0xC0 != 0 {
            return None;
        }
        let label = b.get(pos + 1..pos + 1 + len)?;
        if let Some(slot) = labels.get_mut(count) {
            *slot = label;
        }
        count += 1;
        pos += 1 + len;
        // The name, with the root label still to come, must stay within 255 bytes.
        if pos >= 255 {
            return None;
        }
    }
    let qtype = be16(b, pos)?;
    let qclass = be16(b, pos + 2)?;
    Some(Question {
        raw: b.get(..pos + 4)?,
        labels,
        count,
        qtype,
        qclass,
    })
}

/// The response header's flags: QR, the query's opcode and RD, RA, and `aa` / `rcode`.
fn reply_flags(query_flags: u16, aa: bool, rcode: u16) -> u16 {
    let aa = if aa { AA } else { 0 };
    QR | (query_flags & OPCODE) | aa | (query_flags & RD) | RA | rcode
}

/// A response with no question section (the question could not be parsed).
fn header_only(id: u16, query_flags: u16, rcode: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&reply_flags(query_flags, false, rcode).to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    out
}

/// A response echoing the question, with A records for `addrs` (as many as fit in 512 bytes,
/// starting at a position that rotates with the query id to spread the load).
fn respond(
    id: u16,
    query_flags: u16,
    aa: bool,
    rcode: u16,
    q: &Question<'_>,
    addrs: &[Ipv4Addr],
) -> Vec<u8> {
    const RECORD: usize = 16;
    let room = MAX_REPLY.saturating_sub(HEADER + q.raw.len()) / RECORD;
    let n = addrs.len().min(room);
    let start = if addrs.is_empty() {
        0
    } else {
        usize::from(id) % addrs.len()
    };
    let mut out = Vec::with_capacity(HEADER + q.raw.len() + n * RECORD);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&reply_flags(query_flags, aa, rcode).to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(q.raw);
    for addr in addrs.iter().cycle().skip(start).take(n) {
        // The owner name is a pointer to the question's name, right after the header.
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&TYPE_A.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&addr.octets());
    }
    out
}

/// Decides what to do with one datagram `query` received from `from`, given the name table.
/// Never panics, whatever the bytes.
pub fn answer(query: &[u8], from: Ipv4Addr, table: &Names) -> Reply {
    if query.len() > MAX_QUERY {
        return Reply::Drop;
    }
    let (Some(id), Some(flags), Some(qdcount)) = (be16(query, 0), be16(query, 2), be16(query, 4))
    else {
        return Reply::Drop;
    };
    if query.len() < HEADER || flags & QR != 0 {
        // Too short for a header, or a response: answering responses could loop.
        return Reply::Drop;
    }
    if flags & OPCODE != 0 {
        return Reply::Answer(header_only(id, flags, NOTIMP));
    }
    if qdcount != 1 {
        return Reply::Answer(header_only(id, flags, FORMERR));
    }
    let Some(q) = query.get(HEADER..).and_then(parse_question) else {
        return Reply::Answer(header_only(id, flags, FORMERR));
    };
    let stack: &[u8] = match q.count {
        // A bare service name: in the asker's stack, and never forwarded.
        1 => match table.stack_of(from) {
            Some(stack) => stack,
            None => return Reply::Answer(respond(id, flags, true, NXDOMAIN, &q, &[])),
        },
        2 if table.stacks.contains_key(&q.labels[1].to_ascii_lowercase()) => q.labels[1],
        _ => return Reply::Forward,
    };
    if q.qclass != CLASS_IN && q.qclass != CLASS_ANY {
        return Reply::Answer(respond(id, flags, false, REFUSED, &q, &[]));
    }
    let ready = table
        .stacks
        .get(&stack.to_ascii_lowercase())
        .and_then(|services| services.get(&q.labels[0].to_ascii_lowercase()));
    match ready {
        None => Reply::Answer(respond(id, flags, true, NXDOMAIN, &q, &[])),
        Some(addrs) if q.qtype == TYPE_A || q.qtype == TYPE_ANY => {
            Reply::Answer(respond(id, flags, true, NOERROR, &q, addrs))
        }
        // The name exists, with no record of this type (AAAA included): NODATA.
        Some(_) => Reply::Answer(respond(id, flags, true, NOERROR, &q, &[])),
    }
}

/// A SERVFAIL response to `query`, echoing its question (`None` if it does not parse).
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let id = be16(query, 0)?;
    let flags = be16(query, 2)?;
    let q = query.get(HEADER..).and_then(parse_question)?;
    Some(respond(id, flags, false, SERVFAIL, &q, &[]))
}

/// The host's resolvers from the text of `/etc/resolv.conf`: its `nameserver` lines, port 53,
/// IPv4 or IPv6 (a numeric `%scope` is kept, a named one skipped), at most three (as glibc),
/// without duplicates or unspecified addresses. Loopback resolvers (e.g. systemd-resolved's
/// `127.0.0.53`) are kept: the agent runs in the host's network namespace.
pub fn upstream_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(word) = words.next() else { continue };
        let addr = match word.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, 53),
            Err(_) => {
                let Some((ip, scope)) = word.split_once('%') else {
                    continue;
                };
                match (ip.parse::<Ipv6Addr>(), scope.parse::<u32>()) {
                    (Ok(ip), Ok(scope)) => SocketAddr::V6(SocketAddrV6::new(ip, 53, 0, scope)),
                    _ => continue,
                }
            }
        };
        if addr.ip().is_unspecified() || out.contains(&addr) {
            continue;
        }
        out.push(addr);
        if out.len() == MAX_NAMESERVERS {
            break;
        }
    }
    out
}

/// Binds UDP `bind:53` (a specific address, never the unspecified one: the responder is for
/// the overlay bridge only) and serves it; see [`serve_on`].
pub async fn serve(
    bind: Ipv4Addr,
    names: watch::Receiver<Names>,
    upstream: Vec<SocketAddr>,
) -> io::Result<()> {
    if bind.is_unspecified() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the DNS responder binds a specific address, not 0.0.0.0",
        ));
    }
    let socket = UdpSocket::bind(SocketAddrV4::new(bind, 53)).await?;
    serve_on(socket, names, upstream).await
}

/// Serves DNS on an already bound UDP socket until the task is dropped: answers from the
/// current table in `names`, and relays other queries to the first of `upstream` that answers
/// within [`FORWARD_TIMEOUT`] (its response unchanged), or SERVFAIL when none does. At most
/// [`MAX_FORWARDS`] forwards are in flight; queries beyond are dropped. An upstream equal to
/// the socket's own address is ignored (it would loop). Returns only on a setup error.
pub async fn serve_on(
    socket: UdpSocket,
    names: watch::Receiver<Names>,
    upstream: Vec<SocketAddr>,
) -> io::Result<()> {
    let local = socket.local_addr()?;
    if local.ip().is_unspecified() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the DNS responder serves a specific address, not the unspecified one",
        ));
    }
    let upstream: Arc<[SocketAddr]> = upstream
        .into_iter()
        .filter(|u| {
            let ours = *u == local;
            if ours {
                tracing::warn!(%u, "ignoring the DNS responder's own address as an upstream");
            }
            !ours
        })
        .collect();
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    // One byte more than the largest query, to tell an oversized datagram from a full one.
    let mut buf = vec![0u8; MAX_QUERY + 1];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some(query) = buf.get(..n) else { continue };
        let from = match peer.ip() {
            IpAddr::V4(a) => a,
            IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
        };
        let reply = answer(query, from, &names.borrow());
        match reply {
            Reply::Answer(bytes) => send(&socket, &bytes, peer).await,
            Reply::Drop => {}
            Reply::Forward if upstream.is_empty() => {
                if let Some(bytes) = servfail(query) {
                    send(&socket, &bytes, peer).await;
                }
            }
            Reply::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "too many DNS forwards in flight; dropping a query");
                    continue;
                };
                let query = query.to_vec();
                let socket = socket.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = match forward(&query, &upstream, FORWARD_TIMEOUT).await {
                        Some(r) => Some(r),
                        None => servfail(&query),
                    };
                    if let Some(bytes) = reply {
                        send(&socket, &bytes, peer).await;
                    }
                });
            }
        }
    }
}

async fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer).await {
        tracing::debug!(%peer, error = %e, "cannot send a DNS response");
    }
}

/// The response of the first upstream that answers within `wait` each, in order.
async fn forward(query: &[u8], upstream: &[SocketAddr], wait: Duration) -> Option<Vec<u8>> {
    for &server in upstream {
        match tokio::time::timeout(wait, ask(query, server)).await {
            Ok(Ok(response)) => return Some(response),
            Ok(Err(e)) => tracing::debug!(%server, error = %e, "DNS upstream failed"),
            Err(_) => tracing::debug!(%server, "DNS upstream timed out"),
        }
    }
    None
}

/// Sends `query` to `server` from a fresh ephemeral port, connected so that only `server` can
/// answer, and waits for a response carrying the query's id.
async fn ask(query: &[u8], server: SocketAddr) -> io::Result<Vec<u8>> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let id = query.get(..2);
    let mut buf = vec![0u8; 65_535];
    loop {
        let n = socket.recv(&mut buf).await?;
        let response = buf.get(..n).unwrap_or_default();
        let is_response = be16(response, 2).is_some_and(|f| f & QR != 0);
        if n >= HEADER && response.get(..2) == id && is_response {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use corral_proto::ServiceAddresses;

    const A: u16 = 1;
    const AAAA: u16 = 28;
    const MX: u16 = 15;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn svc(stack: &str, service: &str, ready: &[&str], members: &[&str]) -> ServiceAddresses {
        ServiceAddresses {
            stack: stack.into(),
            service: service.into(),
            ready: ready.iter().map(|a| ip(a)).collect(),
            members: members.iter().map(|a| ip(a)).collect(),
            labels: Default::default(),
        }
    }

    /// shop: web (2 ready of 3), db (none ready); blog: web (1 ready).
    fn table() -> Names {
        Names::new(&NameTable {
            services: vec![
                svc(
                    "shop",
                    "web",
                    &["10.42.1.2", "10.42.2.2"],
                    &["10.42.1.2", "10.42.2.2", "10.42.3.2"],
                ),
                svc("shop", "db", &[], &["10.42.1.3"]),
                svc("Blog", "Web", &["10.42.5.9"], &["10.42.5.9"]),
            ],
        })
    }

    fn wire_name(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for label in name
            .trim_end_matches('.')
            .split('.')
            .filter(|l| !l.is_empty())
        {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
        out
    }

    fn query_with(
        id: u16,
        flags: u16,
        qdcount: u16,
        name: &str,
        qtype: u16,
        qclass: u16,
    ) -> Vec<u8> {
        let mut q = Vec::new();
        q.extend_from_slice(&id.to_be_bytes());
        q.extend_from_slice(&flags.to_be_bytes());
        q.extend_from_slice(&qdcount.to_be_bytes());
        q.extend_from_slice(&[0; 6]);
        q.extend_from_slice(&wire_name(name));
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&qclass.to_be_bytes());
        q
    }

    /// A standard query, recursion desired.
    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        query_with(id, RD, 1, name, qtype, CLASS_IN)
    }

    #[derive(Debug)]
    struct Parsed {
        id: u16,
        flags: u16,
        counts: [u16; 4],
        question: Vec<u8>,
        answers: Vec<Ipv4Addr>,
    }

    impl Parsed {
        fn rcode(&self) -> u16 {
            self.flags & 0xF
        }
    }

    /// Parses one of our responses back, checking every record's fixed fields.
    fn parse(bytes: &[u8]) -> Parsed {
        let id = be16(bytes, 0).unwrap();
        let flags = be16(bytes, 2).unwrap();
        let counts = [4, 6, 8, 10].map(|at| be16(bytes, at).unwrap());
        let mut pos = HEADER;
        let mut question = Vec::new();
        if counts[0] == 1 {
            let q = parse_question(&bytes[HEADER..]).unwrap();
            question = q.raw.to_vec();
            pos += q.raw.len();
        }
        let mut answers = Vec::new();
        for _ in 0..counts[1] {
            let rr = &bytes[pos..pos + 16];
            assert_eq!(&rr[..2], &[0xC0, 0x0C], "owner name points to the question");
            assert_eq!(be16(rr, 2), Some(A));
            assert_eq!(be16(rr, 4), Some(CLASS_IN));
            assert_eq!(u32::from_be_bytes([rr[6], rr[7], rr[8], rr[9]]), TTL_SECS);
            assert_eq!(be16(rr, 10), Some(4));
            answers.push(Ipv4Addr::new(rr[12], rr[13], rr[14], rr[15]));
            pos += 16;
        }
        assert_eq!(pos, bytes.len(), "no trailing bytes");
        Parsed {
            id,
            flags,
            counts,
            question,
            answers,
        }
    }

    fn answered(r: Reply) -> Parsed {
        match r {
            Reply::Answer(bytes) => parse(&bytes),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        v.sort();
        v
    }

    const OUTSIDER: Ipv4Addr = Ipv4Addr::new(10, 42, 9, 9);

    #[test]
    fn qualified_name_answers_with_ready_addresses() {
        let q = query(0xBEEF, "web.shop", A);
        let p = answered(answer(&q, OUTSIDER, &table()));
        assert_eq!(p.id, 0xBEEF);
        assert_eq!(p.rcode(), NOERROR);
        assert_ne!(p.flags & QR, 0);
        assert_ne!(p.flags & AA, 0);
        assert_ne!(p.flags & RD, 0, "RD copied");
        assert_ne!(p.flags & RA, 0);
        assert_eq!(p.flags & OPCODE, 0);
        assert_eq!(p.counts, [1, 2, 0, 0]);
        assert_eq!(p.question, q[HEADER..]);
        assert_eq!(
            sorted(p.answers),
            vec![ip("10.42.1.2"), ip("10.42.2.2")],
            "ready replicas only, not 10.42.3.2"
        );
    }

    #[test]
    fn rd_clear_is_copied() {
        let q = query_with(1, 0, 1, "web.shop", A, CLASS_IN);
        let p = answered(answer(&q, OUTSIDER, &table()));
        assert_eq!(p.flags & RD, 0);
        assert_ne!(p.flags & RA, 0);
    }

    #[test]
    fn names_are_case_insensitive_and_echoed_verbatim() {
        for name in ["WEB.Shop", "web.shop.", "Web.SHOP.", "web.blog", "WEB.BLOG"] {
            let q = query(7, name, A);
            let p = answered(answer(&q, OUTSIDER, &table()));
            assert_eq!(p.rcode(), NOERROR, "{name}");
            assert!(!p.answers.is_empty(), "{name}");
            assert_eq!(
                p.question,
                q[HEADER..],
                "{name}: question echoed byte for byte"
            );
        }
        let p = answered(answer(&query(7, "web.blog", A), OUTSIDER, &table()));
        assert_eq!(p.answers, vec![ip("10.42.5.9")]);
    }

    #[test]
    fn unknown_service_in_known_stack_is_nxdomain() {
        for qtype in [A, AAAA] {
            let p = answered(answer(&query(2, "cache.shop", qtype), OUTSIDER, &table()));
            assert_eq!(p.rcode(), NXDOMAIN);
            assert_ne!(p.flags & AA, 0);
            assert_eq!(p.counts, [1, 0, 0, 0]);
        }
    }

    #[test]
    fn other_types_of_an_existing_name_are_nodata() {
        for qtype in [AAAA, MX, 16] {
            let p = answered(answer(&query(3, "web.shop", qtype), OUTSIDER, &table()));
            assert_eq!(p.rcode(), NOERROR);
            assert_ne!(p.flags & AA, 0);
            assert_eq!(p.counts, [1, 0, 0, 0]);
        }
    }

    #[test]
    fn any_type_is_answered_like_a() {
        let p = answered(answer(&query(3, "web.shop", TYPE_ANY), OUTSIDER, &table()));
        assert_eq!(p.rcode(), NOERROR);
        assert_eq!(p.answers.len(), 2);
    }

    #[test]
    fn service_without_ready_replicas_is_empty_noerror() {
        let p = answered(answer(&query(4, "db.shop", A), OUTSIDER, &table()));
        assert_eq!(p.rcode(), NOERROR);
        assert_eq!(p.counts, [1, 0, 0, 0]);
    }

    #[test]
    fn bare_name_resolves_in_the_askers_stack() {
        // A replica of shop, even one not ready, asks for `web` and `db`.
        let asker = ip("10.42.3.2");
        let p = answered(answer(&query(5, "web", A), asker, &table()));
        assert_eq!(p.rcode(), NOERROR);
        assert_eq!(sorted(p.answers), vec![ip("10.42.1.2"), ip("10.42.2.2")]);
        let p = answered(answer(&query(5, "DB.", A), ip("10.42.1.2"), &table()));
        assert_eq!(p.rcode(), NOERROR);
        assert_eq!(p.counts, [1, 0, 0, 0]);
        // A replica of blog gets blog's web.
        let p = answered(answer(&query(5, "web", A), ip("10.42.5.9"), &table()));
        assert_eq!(p.answers, vec![ip("10.42.5.9")]);
        // AAAA for an existing bare name: NODATA.
        let p = answered(answer(&query(5, "web", AAAA), asker, &table()));
        assert_eq!((p.rcode(), p.counts), (NOERROR, [1, 0, 0, 0]));
    }

    #[test]
    fn bare_name_outside_any_stack_or_missing_is_nxdomain_never_forwarded() {
        let p = answered(answer(&query(6, "web", A), OUTSIDER, &table()));
        assert_eq!(p.rcode(), NXDOMAIN);
        // blog has no db.
        let p = answered(answer(&query(6, "db", A), ip("10.42.5.9"), &table()));
        assert_eq!(p.rcode(), NXDOMAIN);
        // A stack's name alone is not a service.
        let p = answered(answer(&query(6, "shop", A), ip("10.42.1.2"), &table()));
        assert_eq!(p.rcode(), NXDOMAIN);
        // Even with an empty table.
        let p = answered(answer(
            &query(6, "localhost", A),
            OUTSIDER,
            &Names::default(),
        ));
        assert_eq!(p.rcode(), NXDOMAIN);
    }

    #[test]
    fn an_address_claimed_by_two_stacks_belongs_to_none() {
        let names = Names::new(&NameTable {
            services: vec![
                svc("a", "web", &["10.0.0.1"], &["10.0.0.1"]),
                svc("b", "web", &["10.0.0.2"], &["10.0.0.1", "10.0.0.2"]),
                svc("b", "db", &[], &["10.0.0.2"]),
            ],
        });
        let p = answered(answer(&query(1, "web", A), ip("10.0.0.1"), &names));
        assert_eq!(p.rcode(), NXDOMAIN);
        // Two services of one stack claiming an address is fine.
        let p = answered(answer(&query(1, "web", A), ip("10.0.0.2"), &names));
        assert_eq!(p.answers, vec![ip("10.0.0.2")]);
    }

    #[test]
    fn everything_else_is_forwarded() {
        for name in [
            "example.com",
            "web.nostack",
            "web.shop.corral",
            "a.b.c.d",
            ".",
            "shop.com",
        ] {
            assert_eq!(
                answer(&query(8, name, A), ip("10.42.1.2"), &table()),
                Reply::Forward,
                "{name}"
            );
        }
    }

    #[test]
    fn other_classes_of_our_names_are_refused_others_forwarded() {
        let q = query_with(9, RD, 1, "web.shop", A, 3);
        let p = answered(answer(&q, OUTSIDER, &table()));
        assert_eq!(p.rcode(), REFUSED);
        assert_eq!(p.flags & AA, 0);
        let q = query_with(9, RD, 1, "version.bind", 16, 3);
        assert_eq!(answer(&q, OUTSIDER, &table()), Reply::Forward);
    }

    #[test]
    fn wrong_question_count_is_formerr() {
        for qdcount in [0, 2, 0xFFFF] {
            let q = query_with(10, RD, qdcount, "web.shop", A, CLASS_IN);
            let p = answered(answer(&q, OUTSIDER, &table()));
            assert_eq!(p.id, 10);
            assert_eq!(p.rcode(), FORMERR);
            assert_eq!(p.counts, [0, 0, 0, 0]);
            assert_ne!(p.flags & QR, 0);
        }
    }

    #[test]
    fn other_opcodes_are_not_implemented() {
        let q = query_with(11, 2 << 11 | RD, 1, "web.shop", A, CLASS_IN);
        let p = answered(answer(&q, OUTSIDER, &table()));
        assert_eq!(p.rcode(), NOTIMP);
        assert_eq!(p.flags & OPCODE, 2 << 11, "opcode copied");
    }

    #[test]
    fn malformed_questions_are_formerr() {
        let base = query(12, "web.shop", A);
        // A compression pointer in the question.
        let mut q = base[..HEADER].to_vec();
        q.extend_from_slice(&[3, b'w', b'e', b'b', 0xC0, 0x0C, 0, 1, 0, 1]);
        assert_eq!(answered(answer(&q, OUTSIDER, &table())).rcode(), FORMERR);
        // Extended label types (0b01, 0b10).
        for first in [0x41u8, 0x80] {
            let mut q = base[..HEADER].to_vec();
            q.extend_from_slice(&[first, 0, 0, 1, 0, 1]);
            assert_eq!(answered(answer(&q, OUTSIDER, &table())).rcode(), FORMERR);
        }
        // A name over 255 bytes (five labels of 63).
        let long = vec!["a".repeat(63); 5].join(".");
        let q = query(12, &long, A);
        assert_eq!(answered(answer(&q, OUTSIDER, &table())).rcode(), FORMERR);
        // Exactly 255 bytes is fine (forwarded: it has many labels).
        let name = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        let q = query(12, &name, A);
        assert_eq!(wire_name(&name).len(), 255);
        assert_eq!(answer(&q, OUTSIDER, &table()), Reply::Forward);
        // Every truncation of a valid query after the header.
        for cut in HEADER..base.len() {
            let p = answered(answer(&base[..cut], OUTSIDER, &table()));
            assert_eq!(p.rcode(), FORMERR, "cut at {cut}");
            assert_eq!(p.id, 12);
        }
    }

    #[test]
    fn additional_records_are_ignored() {
        let mut q = query(13, "web.shop", A);
        q[11] = 1; // ARCOUNT 1: an EDNS OPT record.
        q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
        let p = answered(answer(&q, OUTSIDER, &table()));
        assert_eq!(p.rcode(), NOERROR);
        assert_eq!(p.counts, [1, 2, 0, 0]);
        assert_eq!(p.question, q[HEADER..q.len() - 11]);
    }

    #[test]
    fn short_responses_and_oversized_datagrams_are_dropped() {
        let t = table();
        for len in 0..HEADER {
            assert_eq!(answer(&vec![0; len], OUTSIDER, &t), Reply::Drop);
        }
        let mut response = query(14, "web.shop", A);
        response[2] |= 0x80;
        assert_eq!(answer(&response, OUTSIDER, &t), Reply::Drop);
        let mut big = query(14, "web.shop", A);
        big.resize(MAX_QUERY + 1, 0);
        assert_eq!(answer(&big, OUTSIDER, &t), Reply::Drop);
        big.truncate(MAX_QUERY);
        assert!(matches!(answer(&big, OUTSIDER, &t), Reply::Answer(_)));
    }

    #[test]
    fn many_addresses_fit_in_512_bytes_and_rotate() {
        let ready: Vec<String> = (1..=100).map(|i| format!("10.42.0.{i}")).collect();
        let ready: Vec<&str> = ready.iter().map(String::as_str).collect();
        let names = Names::new(&NameTable {
            services: vec![svc("s", "big", &ready, &[])],
        });
        let mut firsts = std::collections::HashSet::new();
        for id in 0..10 {
            let Reply::Answer(bytes) = answer(&query(id, "big.s", A), OUTSIDER, &names) else {
                panic!("expected an answer");
            };
            assert!(bytes.len() <= 512);
            let p = parse(&bytes);
            assert_eq!(p.flags & 0x0200, 0, "no truncation bit");
            assert!(p.answers.len() >= 15);
            let unique: std::collections::HashSet<_> = p.answers.iter().collect();
            assert_eq!(unique.len(), p.answers.len());
            firsts.insert(p.answers[0]);
        }
        assert_eq!(firsts.len(), 10, "the window rotates with the id");
    }

    #[test]
    fn duplicate_entries_are_merged() {
        let names = Names::new(&NameTable {
            services: vec![
                svc("s", "web", &["10.0.0.2", "10.0.0.1"], &[]),
                svc("S", "WEB", &["10.0.0.1", "10.0.0.3"], &[]),
            ],
        });
        let p = answered(answer(&query(0, "web.s", A), OUTSIDER, &names));
        assert_eq!(
            p.answers,
            vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3")]
        );
    }

    /// xorshift64*: a deterministic source of garbage.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn garbage_never_panics_and_answers_stay_well_formed() {
        let t = table();
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let seeds = [
            query(1, "web.shop", A),
            query(2, "web", A),
            query(3, "example.com", AAAA),
        ];
        let check = |bytes: &[u8], from: Ipv4Addr| {
            if let Reply::Answer(r) = answer(bytes, from, &t) {
                assert!(r.len() >= HEADER && r.len() <= MAX_REPLY);
                assert_eq!(r[..2], bytes[..2], "same id");
                assert_ne!(r[2] & 0x80, 0, "a response");
            }
        };
        for round in 0..20_000 {
            let from = if round % 2 == 0 {
                ip("10.42.1.2")
            } else {
                OUTSIDER
            };
            // Random bytes of random length, mostly short, sometimes oversized.
            let len = match rng.below(10) {
                0 => rng.below(MAX_QUERY + 100),
                _ => rng.below(300),
            };
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if bytes.len() >= 6 && rng.below(2) == 0 {
                // A plausible header, to reach the question parser.
                bytes[2] &= 0x07;
                bytes[4] = 0;
                bytes[5] = 1;
            }
            check(&bytes, from);
            // Mutations of valid queries: flipped bytes, truncations, extensions.
            let mut m = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(4) {
                let at = rng.below(m.len());
                m[at] = rng.next() as u8;
            }
            match rng.below(3) {
                0 => m.truncate(rng.below(m.len() + 1)),
                1 => m.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
                _ => {}
            }
            check(&m, from);
        }
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "\
# Generated by NetworkManager
search example.com
nameserver 127.0.0.53
; nameserver 9.9.9.9
  nameserver   1.1.1.1   # trailing words ignored
nameserver 1.1.1.1
nameserver 0.0.0.0
nameserver not-an-address
nameserver
options edns0 trust-ad
nameserver 2606:4700:4700::1111
nameserver 8.8.8.8
";
        assert_eq!(
            upstream_from_resolv_conf(text),
            vec![
                "127.0.0.53:53".parse::<SocketAddr>().unwrap(),
                "1.1.1.1:53".parse().unwrap(),
                "[2606:4700:4700::1111]:53".parse().unwrap(),
            ],
            "at most three, in order, deduplicated, loopback kept"
        );
        let scoped = upstream_from_resolv_conf("nameserver fe80::1%2\nnameserver fe80::2%eth0\n");
        assert_eq!(
            scoped,
            vec![SocketAddr::V6(SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                53,
                0,
                2
            ))]
        );
        assert!(upstream_from_resolv_conf("").is_empty());
    }

    // --- the socket part ---

    async fn local_socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Starts a responder on 127.0.0.1 whose table makes 127.0.0.1 a replica of `shop`.
    async fn start(upstream: Vec<SocketAddr>) -> (SocketAddr, watch::Sender<Names>) {
        let socket = local_socket().await;
        let addr = socket.local_addr().unwrap();
        let (tx, rx) = watch::channel(Names::new(&NameTable {
            services: vec![svc("shop", "web", &["10.42.1.2"], &["127.0.0.1"])],
        }));
        tokio::spawn(serve_on(socket, rx, upstream));
        (addr, tx)
    }

    async fn ask_server(client: &UdpSocket, server: SocketAddr, q: &[u8]) -> Vec<u8> {
        client.send_to(q, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("a response")
            .unwrap();
        assert_eq!(from, server);
        buf.truncate(n);
        buf
    }

    /// An upstream that answers every query with its id, QR set and a marker payload.
    async fn fake_upstream(
        marker: &'static [u8],
    ) -> (SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let socket = local_socket().await;
        let addr = socket.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            while let Ok(Ok((n, peer))) =
                tokio::time::timeout(Duration::from_secs(3), socket.recv_from(&mut buf)).await
            {
                seen.push(buf[..n].to_vec());
                let mut r = buf[..n].to_vec();
                r[2] |= 0x80;
                r.extend_from_slice(marker);
                socket.send_to(&r, peer).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn serves_answers_from_the_current_table() {
        let (server, names) = start(vec![]).await;
        let client = local_socket().await;
        // The client (127.0.0.1) is a replica of shop: the bare name works.
        let p = parse(&ask_server(&client, server, &query(21, "web", A)).await);
        assert_eq!((p.id, p.rcode()), (21, NOERROR));
        assert_eq!(p.answers, vec![ip("10.42.1.2")]);
        // A new table takes effect at once.
        names
            .send(Names::new(&NameTable {
                services: vec![svc("shop", "web", &["10.42.7.7"], &["127.0.0.1"])],
            }))
            .unwrap();
        let p = parse(&ask_server(&client, server, &query(22, "web.shop", A)).await);
        assert_eq!(p.answers, vec![ip("10.42.7.7")]);
        // Without upstreams a foreign name fails at once.
        let p = parse(&ask_server(&client, server, &query(23, "example.com", A)).await);
        assert_eq!((p.id, p.rcode()), (23, SERVFAIL));
        assert_eq!(p.counts, [1, 0, 0, 0]);
        // Garbage gets nothing; the responder keeps serving.
        client.send_to(&[1, 2, 3], server).await.unwrap();
        let p = parse(&ask_server(&client, server, &query(24, "web", A)).await);
        assert_eq!(p.id, 24);
    }

    #[tokio::test]
    async fn forwards_foreign_names_and_relays_the_response_unchanged() {
        let (upstream, seen) = fake_upstream(b"upstream-1").await;
        let (server, _names) = start(vec![upstream]).await;
        let client = local_socket().await;
        let q = query(31, "example.com", A);
        let r = ask_server(&client, server, &q).await;
        let mut expected = q.clone();
        expected[2] |= 0x80;
        expected.extend_from_slice(b"upstream-1");
        assert_eq!(r, expected);
        // Our own names never reach the upstream.
        ask_server(&client, server, &query(32, "web.shop", A)).await;
        ask_server(&client, server, &query(33, "nope", A)).await;
        assert_eq!(
            seen.await.unwrap(),
            vec![q],
            "the query is forwarded unchanged"
        );
    }

    #[tokio::test]
    async fn falls_back_to_the_next_upstream_then_servfail() {
        let silent = local_socket().await;
        let (answering, _seen) = fake_upstream(b"second").await;
        let (server, _names) = start(vec![silent.local_addr().unwrap(), answering]).await;
        let client = local_socket().await;
        let started = std::time::Instant::now();
        let r = ask_server(&client, server, &query(41, "example.com", A)).await;
        assert!(r.ends_with(b"second"));
        assert!(started.elapsed() >= FORWARD_TIMEOUT);

        let (server, _names) = start(vec![silent.local_addr().unwrap()]).await;
        let q = query(42, "example.com", A);
        let p = parse(&ask_server(&client, server, &q).await);
        assert_eq!((p.id, p.rcode()), (42, SERVFAIL));
        assert_eq!(p.question, q[HEADER..]);
        assert_ne!(p.flags & RD, 0);
    }

    #[tokio::test]
    async fn forwards_in_flight_are_bounded() {
        let silent = local_socket().await;
        let (server, _names) = start(vec![silent.local_addr().unwrap()]).await;
        let client = local_socket().await;
        let total = MAX_FORWARDS + 16;
        for id in 0..total {
            client
                .send_to(&query(id as u16, "example.com", A), server)
                .await
                .unwrap();
        }
        let mut ids = std::collections::HashSet::new();
        let mut buf = vec![0u8; 4096];
        let until = tokio::time::Instant::now() + FORWARD_TIMEOUT + Duration::from_millis(1500);
        while let Ok(Ok((n, _))) = tokio::time::timeout_at(until, client.recv_from(&mut buf)).await
        {
            let p = parse(&buf[..n]);
            assert_eq!(p.rcode(), SERVFAIL);
            ids.insert(p.id);
        }
        assert_eq!(
            ids.len(),
            MAX_FORWARDS,
            "queries beyond the bound are dropped"
        );
    }

    #[tokio::test]
    async fn its_own_address_is_not_an_upstream() {
        let socket = local_socket().await;
        let server = socket.local_addr().unwrap();
        let (_tx, rx) = watch::channel(Names::default());
        tokio::spawn(serve_on(socket, rx, vec![server]));
        let client = local_socket().await;
        let started = std::time::Instant::now();
        let p = parse(&ask_server(&client, server, &query(51, "example.com", A)).await);
        assert_eq!(p.rcode(), SERVFAIL);
        assert!(started.elapsed() < FORWARD_TIMEOUT, "no loop, no wait");
    }

    #[tokio::test]
    async fn never_binds_the_unspecified_address() {
        let (_tx, rx) = watch::channel(Names::default());
        let e = serve(Ipv4Addr::UNSPECIFIED, rx.clone(), vec![])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let any = UdpSocket::bind("0.0.0.0:0").await.unwrap();
        let e = serve_on(any, rx, vec![]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
