//! The client side: [`Client`] opens tunnels through pooled HTTP/2 connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use meshd_identity::{IdentityHandle, Purpose, SpiffeId};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::headers::{RequestHeaders, TraceParent, authority_string};
use crate::pool::{Pool, PoolKey, SlotGuard};
use crate::revoke::PeerChain;
use crate::stream::TunnelStream;
use crate::{ClientSettings, Error, Transport};

/// The HTTP/2 connection type the pool drives: h2 over rustls over TCP.
pub(crate) type H2Connection = h2::client::Connection<TlsStream<TcpStream>, Bytes>;

/// TCP keepalive on HBONE sockets: 180 s idle, 180 s interval, as ztunnel; the PING keepalive
/// notices dead peers sooner, this keeps NAT and conntrack entries alive.
const TCP_KEEPALIVE: Duration = Duration::from_secs(180);

/// Where a tunnel goes through: the peer meshd (or ztunnel) and what it must prove.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The SPIFFE ID the peer's certificate must carry (checked during the TLS handshake).
    pub identity: SpiffeId,
    /// The peer's HBONE address, normally `<node ip>:15008`.
    pub addr: SocketAddr,
    /// HTTP/2 (interoperable) or HTTP/3 (experimental, meshd only).
    pub transport: Transport,
}

impl Peer {
    /// An HTTP/2 peer.
    pub fn new(identity: SpiffeId, addr: SocketAddr) -> Peer {
        Peer {
            identity,
            addr,
            transport: Transport::H2,
        }
    }

    /// The same peer over another transport.
    pub fn with_transport(mut self, transport: Transport) -> Peer {
        self.transport = transport;
        self
    }
}

/// Opens HBONE tunnels as the local identity; cheap to clone (all clones share one pool).
#[derive(Clone)]
pub struct Client {
    identity: IdentityHandle,
    pool: Arc<Pool>,
    #[cfg(feature = "quic")]
    quic: Arc<crate::quic::QuicClient>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("local", self.identity.current().id())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client presenting `identity`'s current SVID. Spawns nothing until the first tunnel.
    pub fn new(identity: IdentityHandle, settings: ClientSettings) -> Result<Client, Error> {
        settings.validate()?;
        Ok(Client {
            #[cfg(feature = "quic")]
            quic: Arc::new(crate::quic::QuicClient::new(
                identity.clone(),
                settings.clone(),
            )),
            pool: Arc::new(Pool::new(identity.clone(), settings)),
            identity,
        })
    }

    /// Opens a tunnel through `peer` to `authority` (the destination workload's `ip:port`,
    /// sent as `:authority`) with `headers`; a random `traceparent` is added when none is set.
    ///
    /// HTTP/2 tunnels reuse a pooled connection to (local identity, `peer.identity`,
    /// `peer.addr`) with a free stream slot, else open one; concurrent first calls for a key
    /// share one handshake. A non-200 answer is [`Error::HttpStatus`].
    pub async fn connect(
        &self,
        peer: &Peer,
        authority: SocketAddr,
        headers: RequestHeaders,
    ) -> Result<TunnelStream, Error> {
        self.connect_with_data(peer, authority, headers, Bytes::new())
            .await
    }

    /// As [`Client::connect`], and sends `first` on the tunnel right behind the CONNECT,
    /// without waiting for the answer: when the application spoke first, its bytes travel
    /// with the request instead of one round trip later.
    ///
    /// This widens nothing: the bytes go only to the peer that proved `peer.identity`, which
    /// relays them only after its decision; a refused tunnel's stream is reset and its bytes
    /// dropped there. A request retried on another connection (REFUSED_STREAM) carries them
    /// again.
    pub async fn connect_with_data(
        &self,
        peer: &Peer,
        authority: SocketAddr,
        mut headers: RequestHeaders,
        first: Bytes,
    ) -> Result<TunnelStream, Error> {
        if headers.traceparent.is_none() {
            headers.traceparent = Some(TraceParent::random());
        }
        match peer.transport {
            Transport::H2 => self.connect_h2(peer, authority, &headers, first).await,
            #[cfg(feature = "quic")]
            Transport::H3 => self.quic.connect(peer, authority, &headers, first).await,
            #[cfg(not(feature = "quic"))]
            Transport::H3 => Err(Error::TransportUnavailable("h3")),
        }
    }

    async fn connect_h2(
        &self,
        peer: &Peer,
        authority: SocketAddr,
        headers: &RequestHeaders,
        first: Bytes,
    ) -> Result<TunnelStream, Error> {
        let key = PoolKey {
            local: self.identity.current().id().clone(),
            peer: peer.identity.clone(),
            addr: peer.addr,
        };
        // One retry: a pooled connection can receive GOAWAY (or die) between checkout and use,
        // and a request the server provably did not process is safe to send elsewhere.
        let mut last = None;
        for _ in 0..2 {
            let (send, slot) = self.pool.checkout(&key).await?;
            let response_timeout = self.pool.settings().response_timeout;
            let request = Connect {
                authority,
                headers,
                first: first.clone(),
            };
            match send_connect(send, slot, request, response_timeout).await {
                Ok(stream) => return Ok(stream),
                Err(Attempt::Retry(e, slot)) => {
                    slot.mark_broken();
                    last = Some(e);
                }
                Err(Attempt::Fail(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Pool("no usable connection".into())))
    }

    /// HTTP/2 connections currently pooled (open and reusable or draining), over all keys.
    pub fn pooled_connections(&self) -> usize {
        self.pool.connection_count()
    }

    /// HTTP/2 connections opened since the client was created.
    pub fn connections_opened(&self) -> u64 {
        self.pool.connections_opened()
    }
}

/// How one CONNECT attempt failed: retryable on another connection, or final.
enum Attempt {
    Retry(Error, SlotGuard),
    Fail(Error),
}

/// One CONNECT request: where to, its headers, and the bytes sent behind it.
struct Connect<'a> {
    authority: SocketAddr,
    headers: &'a RequestHeaders,
    first: Bytes,
}

/// Sends the CONNECT on a pooled connection and waits for the response head, for at most
/// `timeout` in all: a peer that stops granting streams, or takes a CONNECT and never answers,
/// fails the tunnel with [`Error::Timeout`] instead of holding it. Giving up resets the stream
/// (RST_STREAM CANCEL) and frees its slot; the connection stays, since its PINGs (keepalive)
/// say whether the peer as a whole is alive.
async fn send_connect(
    send: SendRequest<Bytes>,
    slot: SlotGuard,
    request: Connect<'_>,
    timeout: Duration,
) -> Result<TunnelStream, Attempt> {
    match tokio::time::timeout(timeout, send_connect_inner(send, slot, request)).await {
        Ok(result) => result,
        Err(_) => Err(Attempt::Fail(Error::Timeout {
            what: "connect response",
            after: timeout,
        })),
    }
}

async fn send_connect_inner(
    send: SendRequest<Bytes>,
    slot: SlotGuard,
    Connect {
        authority,
        headers,
        first,
    }: Connect<'_>,
) -> Result<TunnelStream, Attempt> {
    let mut send = match send.ready().await {
        Ok(send) => send,
        Err(e) => return Err(Attempt::Retry(Error::h2(&e), slot)),
    };
    // An authority-only URI makes h2 send a classic CONNECT: no :scheme, no :path.
    let mut request = match Request::builder()
        .method(Method::CONNECT)
        .uri(authority_string(authority))
        .body(())
    {
        Ok(request) => request,
        Err(e) => return Err(Attempt::Fail(Error::Config(e.to_string()))),
    };
    headers.write_to(request.headers_mut());
    let (response, mut send_stream) = match send.send_request(request, false) {
        Ok(pair) => pair,
        Err(e) => return Err(Attempt::Retry(Error::h2(&e), slot)),
    };
    if !first.is_empty() {
        // Queued behind the HEADERS: the connection task writes both in one flush. h2 holds
        // it until the stream's send window allows, as any tunnel data.
        if let Err(e) = send_stream.send_data(first, false) {
            return Err(Attempt::Retry(Error::h2(&e), slot));
        }
    }
    let response = match response.await {
        Ok(response) => response,
        // REFUSED_STREAM (also what a GOAWAY'd stream gets) guarantees no processing.
        Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
            return Err(Attempt::Retry(Error::h2(&e), slot));
        }
        Err(e) => return Err(Attempt::Fail(Error::h2(&e))),
    };
    if response.status() != StatusCode::OK {
        return Err(Attempt::Fail(Error::HttpStatus(response.status())));
    }
    Ok(TunnelStream::h2(
        send_stream,
        response.into_body(),
        Some(slot),
    ))
}

/// A TCP connection to `addr`, marked before connecting so not even the SYN is captured.
async fn connect_tcp(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(mark) = mark else {
        return TcpStream::connect(addr).await;
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket2::SockRef::from(&socket).set_mark(mark)?;
    socket.connect(addr).await
}

/// A new connection to a peer, before the pool's first PING round trip on it.
pub(crate) struct Dialed {
    pub(crate) send: SendRequest<Bytes>,
    pub(crate) connection: H2Connection,
    /// The certificates the server presented, to verify again on every rotation.
    pub(crate) peer_chain: PeerChain,
    /// The end of the handshake time: setup steps after the handshake (the pool's PING round
    /// trip) share it, so one dial never takes longer than connect + handshake timeouts.
    pub(crate) deadline: tokio::time::Instant,
}

/// Opens TCP, then mTLS, then HTTP/2 to `addr`.
pub(crate) async fn dial(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &ClientSettings,
) -> Result<Dialed, Error> {
    let tcp = match tokio::time::timeout(
        settings.connect_timeout,
        connect_tcp(addr, settings.socket_mark),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(Error::Connect {
                addr,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(Error::Timeout {
                what: "tcp connect",
                after: settings.connect_timeout,
            });
        }
    };
    tune_socket(&tcp);
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    let handshake = async {
        let tls = meshd_identity::tls::connect(tls, tcp)
            .await
            .map_err(|e| Error::tls(addr, &e))?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let peer_chain = PeerChain::new(certs, Purpose::ServerAuth);
        let (send, connection) =
            h2_builder(settings)
                .handshake(tls)
                .await
                .map_err(|e| Error::Http2Handshake {
                    addr,
                    reason: e.to_string(),
                })?;
        Ok(Dialed {
            send,
            connection,
            peer_chain,
            deadline,
        })
    };
    tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| Error::Timeout {
            what: "tls and http2 handshake",
            after: settings.handshake_timeout,
        })?
}

fn h2_builder(settings: &ClientSettings) -> h2::client::Builder {
    let h = &settings.http2;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(h.stream_window)
        .initial_connection_window_size(h.connection_window)
        .max_frame_size(h.max_frame_size)
        .max_header_list_size(h.max_header_list_size)
        .max_send_buffer_size(h.max_send_buffer)
        .enable_push(false)
        // Until the server's SETTINGS arrive, assume it allows what the pool will use.
        .initial_max_send_streams(settings.max_streams_per_connection as usize);
    builder
}

/// NODELAY (tunnels carry interactive traffic; h2 already batches frames) and TCP keepalive.
pub(crate) fn tune_socket(tcp: &TcpStream) {
    // Best effort: a socket that refuses an option still works.
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}
