//! The client side: [`Client`] opens tunnels through pooled HTTP/2 connections.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use meshd_identity::IdentityHandle;

use crate::headers::{RequestHeaders, TraceParent, authority_string};
use crate::peer::{Peer, Transport};
use crate::pool::{Pool, PoolKey, SlotGuard};
use crate::stream::TunnelStream;
use crate::{ClientSettings, Error};

/// Opens HBONE tunnels as a local identity; cheap to clone (all clones share one pool, and
/// so do the views [`Client::as_identity`] makes).
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
            quic: Arc::new(crate::quic::QuicClient::new(settings.clone())),
            pool: Arc::new(Pool::new(settings)),
            identity,
        })
    }

    /// The same client (the same pool) presenting `identity` instead: the source workload's
    /// own, when meshd holds one per local workload. The pool key holds the presenting
    /// identity, so a connection opened under one identity never carries another's tunnels.
    pub fn as_identity(&self, identity: IdentityHandle) -> Client {
        Client {
            identity,
            pool: Arc::clone(&self.pool),
            #[cfg(feature = "quic")]
            quic: Arc::clone(&self.quic),
        }
    }

    /// The identity this client presents.
    pub fn identity(&self) -> &IdentityHandle {
        &self.identity
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
            Transport::H3 => {
                (self.quic)
                    .connect(&self.identity, peer, authority, &headers, first)
                    .await
            }
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
            let (send, slot) = self.pool.checkout(&key, &self.identity).await?;
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
        Err(e) => return Err(Attempt::Retry(Error::h2(e), slot)),
    };
    // An authority-only URI makes h2 send a classic CONNECT: no :scheme, no :path.
    let mut request = match Request::builder()
        .method(Method::CONNECT)
        .uri(authority_string(authority))
        .body(())
    {
        Ok(request) => request,
        Err(e) => return Err(Attempt::Fail(Error::Request(crate::Cause::new(e)))),
    };
    headers.write_to(request.headers_mut());
    let (response, mut send_stream) = match send.send_request(request, false) {
        Ok(pair) => pair,
        Err(e) => return Err(Attempt::Retry(Error::h2(e), slot)),
    };
    if !first.is_empty() {
        // Queued behind the HEADERS: the connection task writes both in one flush. h2 holds
        // it until the stream's send window allows, as any tunnel data.
        if let Err(e) = send_stream.send_data(first, false) {
            return Err(Attempt::Retry(Error::h2(e), slot));
        }
    }
    let response = match response.await {
        Ok(response) => response,
        // REFUSED_STREAM (also what a GOAWAY'd stream gets) guarantees no processing.
        Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
            return Err(Attempt::Retry(Error::h2(e), slot));
        }
        Err(e) => return Err(Attempt::Fail(Error::h2(e))),
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
