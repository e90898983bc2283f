//! One connection to the server: TCP, TLS verified against the pinned CA only, a WebSocket at
//! `/v1/connect`, then hello and welcome. Also used by the connect benchmark, so simulated
//! agents speak exactly the real protocol.

use std::sync::Arc;
use std::time::Duration;

use corral_proto::{
    AgentMessage, Auth, CloseReason, CodecError, Hello, HostFacts, PROTOCOL_VERSION, ServerMessage,
    Welcome,
};
use corral_tls::{CaChecksum, PinMismatch};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::AgentError;

/// How long the server may take to answer a hello.
pub const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a TCP connect plus TLS and WebSocket handshakes may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    /// The server's chain does not contain the pinned CA.
    #[error("refusing the server at {addr}: {detail}")]
    PinMismatch { addr: String, detail: String },
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls { addr: String, detail: String },
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(String),
    #[error("{reason}: {message}")]
    Refused {
        reason: CloseReason,
        message: String,
    },
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("connection closed: {0}")]
    Closed(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

/// Where and how to reach the server.
pub struct Dialer {
    addr: String,
    host: String,
    url: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    max_message_bytes: usize,
}

/// Splits `https://host:port[/…]` into host and port (default 443).
pub fn parse_server_url(url: &str) -> Result<(String, u16), AgentError> {
    let bad = |why: &str| {
        AgentError::Config(format!(
            "--server {url:?} {why}; expected e.g. https://corral.example.com:8443"
        ))
    };
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| bad("must start with https:// (agents always pin the server's CA)"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("has an unclosed '['"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        None => 443,
        Some(p) => p.parse().map_err(|_| bad("has an invalid port"))?,
    };
    Ok((host, port))
}

impl Dialer {
    pub fn new(server: &str, pin: CaChecksum) -> Result<Self, AgentError> {
        let (host, port) = parse_server_url(server)?;
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| AgentError::Config(format!("{host:?} is not a valid server name")))?;
        let config =
            corral_tls::client_config(pin).map_err(|e| AgentError::Config(e.to_string()))?;
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Dialer {
            url: format!("wss://{addr}/v1/connect"),
            addr,
            host,
            server_name,
            tls: TlsConnector::from(Arc::new(config)),
            max_message_bytes: corral_proto::DEFAULT_MAX_MESSAGE_BYTES,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Opens a new TLS connection to the server (pinned CA), handshake done, nothing sent.
    pub async fn tls(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| DialError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        self.tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&self.addr, e))
    }

    /// Opens a *new* TLS connection (pinned CA) and asks `/healthz`. Used to confirm the server
    /// is still reachable after the host's firewall changed.
    pub async fn probe_health(&self) -> Result<(), DialError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = self.tls().await?;
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        let io = |e: std::io::Error| DialError::Closed(e.to_string());
        tls.write_all(request.as_bytes()).await.map_err(io)?;
        let mut head = [0u8; 12];
        tls.read_exact(&mut head).await.map_err(io)?;
        if &head[..] == b"HTTP/1.1 200" {
            Ok(())
        } else {
            Err(DialError::Protocol(format!(
                "/healthz answered {:?}",
                String::from_utf8_lossy(&head)
            )))
        }
    }

    /// Opens the TLS WebSocket, without saying hello.
    pub async fn open(&self) -> Result<Tunnel, DialError> {
        self.open_from(None).await
    }

    /// Like [`Dialer::open`], from the source address `from` (any port).
    pub async fn open_from(&self, from: Option<std::net::IpAddr>) -> Result<Tunnel, DialError> {
        tokio::time::timeout(CONNECT_TIMEOUT, self.open_inner_from(from))
            .await
            .map_err(|_| DialError::Timeout("connecting to the server"))?
    }

    /// A TCP connection to the server, from `from` if given.
    async fn tcp_from(&self, from: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
        let Some(from) = from else {
            return TcpStream::connect(&self.addr).await;
        };
        let to = tokio::net::lookup_host(&self.addr)
            .await?
            .find(|a| a.is_ipv4() == from.is_ipv4())
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("no address of the family of {from}"),
                )
            })?;
        let socket = if from.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(from, 0))?;
        socket.connect(to).await
    }

    async fn open_inner_from(&self, from: Option<std::net::IpAddr>) -> Result<Tunnel, DialError> {
        let tcp = self
            .tcp_from(from)
            .await
            .map_err(|source| DialError::Connect {
                addr: self.addr.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| tls_error(&self.addr, e))?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message_bytes))
            .max_frame_size(Some(self.max_message_bytes))
            .read_buffer_size(4 * 1024)
            .write_buffer_size(0);
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(self.url.as_str(), tls, Some(config))
                .await
                .map_err(|e| DialError::WebSocket(e.to_string()))?;
        Ok(Tunnel {
            ws,
            limit: self.max_message_bytes,
        })
    }

    /// Opens the tunnel and says hello. Returns the tunnel once the server welcomed us.
    pub async fn connect(&self, hello: Hello) -> Result<(Tunnel, Welcome), DialError> {
        self.connect_from(hello, None).await
    }

    /// Like [`Dialer::connect`], from the source address `from` (any port). Simulated agents
    /// of a benchmark on one machine use an address each, as agents on hosts of their own would:
    /// ten thousand tunnels from one address to one port use up its ephemeral ports, and the
    /// kernel's search for a free one then costs more than the TLS handshake.
    pub async fn connect_from(
        &self,
        hello: Hello,
        from: Option<std::net::IpAddr>,
    ) -> Result<(Tunnel, Welcome), DialError> {
        let mut tunnel = self.open_from(from).await?;
        tunnel.send(&AgentMessage::hello(hello)).await?;
        let answer = tokio::time::timeout(WELCOME_TIMEOUT, tunnel.recv())
            .await
            .map_err(|_| DialError::Timeout("waiting for the server's welcome"))??;
        match answer {
            ServerMessage::Welcome(w) => {
                tunnel.limit = w.max_message_bytes.min(tunnel.limit);
                Ok((tunnel, w))
            }
            ServerMessage::Goodbye { reason, message } => {
                Err(DialError::Refused { reason, message })
            }
            other => Err(DialError::Protocol(format!(
                "expected a welcome, got {other:?}"
            ))),
        }
    }
}

fn tls_error(addr: &str, e: std::io::Error) -> DialError {
    let rustls_err = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        rustls_err
        && let Some(pin) = other.0.downcast_ref::<PinMismatch>()
    {
        return DialError::PinMismatch {
            addr: addr.to_owned(),
            detail: pin.to_string(),
        };
    }
    DialError::Tls {
        addr: addr.to_owned(),
        detail: match rustls_err {
            Some(r) => r.to_string(),
            None => e.to_string(),
        },
    }
}

/// The hello an agent sends.
pub fn hello(auth: Auth, facts: HostFacts) -> Hello {
    Hello {
        protocol_versions: vec![PROTOCOL_VERSION],
        agent_version: crate::AGENT_VERSION.to_owned(),
        auth,
        facts,
        overlay_deltas: true,
        network_policy: true,
    }
}

/// An open WebSocket to the server, speaking the protocol's messages.
pub struct Tunnel {
    ws: WebSocketStream<TlsStream<TcpStream>>,
    limit: usize,
}

impl Tunnel {
    pub async fn send(&mut self, msg: &AgentMessage) -> Result<(), DialError> {
        self.feed(msg).await?;
        self.flush().await
    }

    /// Queues a message without flushing: [`Tunnel::flush`] writes what was queued (or a
    /// full write buffer does). For a burst of messages that should leave in one write.
    pub async fn feed(&mut self, msg: &AgentMessage) -> Result<(), DialError> {
        let text = corral_proto::encode(msg, self.limit)
            .map_err(|e| DialError::Protocol(e.to_string()))?;
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|e| DialError::Closed(e.to_string()))
    }

    /// Writes what [`Tunnel::feed`] queued.
    pub async fn flush(&mut self) -> Result<(), DialError> {
        self.ws
            .flush()
            .await
            .map_err(|e| DialError::Closed(e.to_string()))
    }

    /// Sends a raw frame (tests and the benchmark use it to send what a real agent never would).
    pub async fn send_raw(&mut self, msg: Message) -> Result<(), DialError> {
        self.ws
            .send(msg)
            .await
            .map_err(|e| DialError::Closed(e.to_string()))
    }

    /// The next protocol message. A close frame becomes [`DialError::Refused`] when its code is
    /// one of the protocol's reasons.
    pub async fn recv(&mut self) -> Result<ServerMessage, DialError> {
        loop {
            let msg = match self.ws.next().await {
                None => return Err(DialError::Closed("the server closed the connection".into())),
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    return Err(DialError::Refused {
                        reason: CloseReason::TooLarge,
                        message: format!("the server sent a message over the limit: {e}"),
                    });
                }
                Some(Err(e)) => return Err(DialError::Closed(e.to_string())),
                Some(Ok(m)) => m,
            };
            match msg {
                Message::Text(t) => {
                    return corral_proto::decode(t.as_bytes(), self.limit).map_err(|e| match e {
                        CodecError::TooLarge { .. } => DialError::Refused {
                            reason: CloseReason::TooLarge,
                            message: e.to_string(),
                        },
                        CodecError::Malformed(m) => DialError::Protocol(m),
                    });
                }
                Message::Binary(_) => {
                    return Err(DialError::Protocol("unexpected binary frame".into()));
                }
                Message::Close(frame) => {
                    return Err(match frame {
                        Some(f) => match CloseReason::from_code(f.code.into()) {
                            Some(reason) => DialError::Refused {
                                reason,
                                message: f.reason.to_string(),
                            },
                            None => DialError::Closed(format!(
                                "close code {}: {}",
                                u16::from(f.code),
                                f.reason
                            )),
                        },
                        None => DialError::Closed("the server closed the connection".into()),
                    });
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            }
        }
    }

    /// Closes politely.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dial_from_a_source_address_arrives_from_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let dialer = Dialer::new(
            &format!("https://127.0.0.1:{port}"),
            CaChecksum::of_der(b"not a certificate"),
        )
        .unwrap();
        for from in [Some([127, 1, 0, 7]), None] {
            let from = from.map(std::net::IpAddr::from);
            let (dialed, accepted) = tokio::join!(dialer.tcp_from(from), listener.accept());
            let (local, (_, peer)) = (dialed.unwrap().local_addr().unwrap(), accepted.unwrap());
            assert_eq!(local, peer);
            let expected = from.unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            assert_eq!(peer.ip(), expected);
        }
    }
}
