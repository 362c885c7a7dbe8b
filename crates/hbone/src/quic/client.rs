//! The HTTP/3 client: one QUIC connection per pool key.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use meshd_identity::{IdentityHandle, Purpose, SpiffeId};
use quinn::crypto::rustls::QuicClientConfig;

use super::stream::{H3Io, RecvHalf, SendHalf};
use super::{ALPN_H3, h3_error, handshake_error, lock, peer_chain, transport_config};
use crate::dial::DialSlot;
use crate::headers::{RequestHeaders, authority_string};
use crate::peer::Peer;
use crate::revoke::{self, PeerChain};
use crate::stream::TunnelStream;
use crate::{ClientSettings, Error};

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The HTTP/3 side of [`Client`](crate::Client): one QUIC connection per pool key.
pub(crate) struct QuicClient {
    settings: ClientSettings,
    endpoints: Mutex<HashMap<bool, quinn::Endpoint>>,
    conns: Mutex<HashMap<(SpiffeId, SpiffeId, SocketAddr), Arc<Entry>>>,
}

struct Entry {
    // The dial in flight, shared by concurrent requests (see `crate::dial`).
    dial: Arc<DialSlot<(quinn::Connection, SendRequest)>>,
    conn: Mutex<Option<(quinn::Connection, SendRequest)>>,
}

/// What a dial needs, owned, so the shared dial future outlives the request that started it.
struct DialParts {
    identity: IdentityHandle,
    settings: ClientSettings,
    endpoint: quinn::Endpoint,
    peer: Peer,
    entry: Weak<Entry>,
}

impl QuicClient {
    pub(crate) fn new(settings: ClientSettings) -> QuicClient {
        QuicClient {
            settings,
            endpoints: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// A tunnel presenting `identity` (the source workload's); connections are pooled per
    /// (local identity, peer identity, peer address), never shared between two identities.
    pub(crate) async fn connect(
        &self,
        identity: &IdentityHandle,
        peer: &Peer,
        authority: SocketAddr,
        headers: &RequestHeaders,
        first: Bytes,
    ) -> Result<TunnelStream, Error> {
        let mut send = self.checkout(identity, peer).await?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority_string(authority))
            .body(())
            .map_err(|e| Error::Request(crate::Cause::new(e)))?;
        headers.write_to(request.headers_mut());
        // Bounded as over HTTP/2: a peer that never answers fails the tunnel, not holds it.
        let timeout = self.settings.response_timeout;
        let exchange = async {
            let mut stream = send.send_request(request).await.map_err(h3_error)?;
            if !first.is_empty() {
                // Behind the request, before its answer, as over HTTP/2.
                stream.send_data(first).await.map_err(h3_error)?;
            }
            let response = stream.recv_response().await.map_err(h3_error)?;
            Ok::<_, Error>((stream, response))
        };
        let (stream, response) =
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| Error::Timeout {
                    what: "connect response",
                    after: timeout,
                })??;
        if response.status() != StatusCode::OK {
            return Err(Error::HttpStatus(response.status()));
        }
        let (send, recv) = stream.split();
        let io = H3Io::new(SendHalf::Client(send), RecvHalf::Client(recv));
        Ok(TunnelStream::h3(Box::new(io)))
    }

    async fn checkout(&self, identity: &IdentityHandle, peer: &Peer) -> Result<SendRequest, Error> {
        let key = (
            identity.current().id().clone(),
            peer.identity.clone(),
            peer.addr,
        );
        let entry = {
            let mut conns = lock(&self.conns);
            Arc::clone(conns.entry(key).or_insert_with(|| {
                Arc::new(Entry {
                    dial: DialSlot::new(),
                    conn: Mutex::new(None),
                })
            }))
        };
        let live = |entry: &Entry| {
            lock(&entry.conn)
                .as_ref()
                .filter(|(quic, _)| quic.close_reason().is_none())
                .map(|(_, send)| send.clone())
        };
        if let Some(send) = live(&entry) {
            return Ok(send);
        }
        let parts = DialParts {
            identity: identity.clone(),
            settings: self.settings.clone(),
            endpoint: self.endpoint(peer.addr.is_ipv6())?,
            peer: peer.clone(),
            entry: Arc::downgrade(&entry),
        };
        let (_, send) = entry.dial.join_or_start(|| dial(parts)).await?;
        Ok(send)
    }
}

/// Opens a QUIC connection with HTTP/3 on it, stores it in its entry and watches its peer's
/// chain: the future the entry's [`DialSlot`] shares.
async fn dial(parts: DialParts) -> Result<(quinn::Connection, SendRequest), Error> {
    let DialParts {
        identity,
        settings,
        endpoint,
        peer,
        entry,
    } = parts;
    let addr = peer.addr;
    let mut tls = (*meshd_identity::tls::client_config(&identity, &peer.identity)?).clone();
    tls.alpn_protocols = vec![ALPN_H3.to_vec()];
    let crypto = QuicClientConfig::try_from(Arc::new(tls))
        .map_err(|e| Error::QuicConfig(crate::Cause::new(e)))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        &settings.http2,
        settings.keepalive,
        settings.max_streams_per_connection,
    )));
    // The name is never checked (SPIFFE verification) nor sent (an IP name has no SNI).
    let connecting = endpoint
        .connect_with(config, addr, "0.0.0.0")
        .map_err(|e| Error::Connect {
            addr,
            source: crate::Cause::new(e),
        })?;
    let timeout = settings.handshake_timeout;
    let setup = async {
        let quic = connecting.await.map_err(|e| handshake_error(addr, e))?;
        let (mut driver, send) = h3::client::builder()
            .max_field_section_size(u64::from(settings.http2.max_header_list_size))
            .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
            .await
            .map_err(|e| Error::Http2Handshake {
                addr,
                source: crate::Cause::new(e),
            })?;
        tokio::spawn(async move {
            let _closed = poll_fn(|cx| driver.poll_close(cx)).await;
        });
        Ok::<_, Error>((quic, send))
    };
    let (quic, send) =
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| Error::Timeout {
                what: "quic handshake",
                after: timeout,
            })??;
    let Some(entry) = entry.upgrade() else {
        return Ok((quic, send));
    };
    *lock(&entry.conn) = Some((quic.clone(), send.clone()));
    let chain = PeerChain::new(&peer_chain(&quic), Purpose::ServerAuth);
    tokio::spawn(watch_revocation(
        quic.clone(),
        chain,
        identity,
        settings.revocation_grace,
        Arc::downgrade(&entry),
    ));
    Ok((quic, send))
}

/// Closes a pooled QUIC connection once the server's chain no longer verifies: forgotten by the
/// pool at once (the next request redials), closed after the grace period. QUIC has no
/// GOAWAY from the client; its open streams simply get the grace period to finish.
async fn watch_revocation(
    quic: quinn::Connection,
    chain: PeerChain,
    identity: IdentityHandle,
    grace: Duration,
    entry: Weak<Entry>,
) {
    let error = tokio::select! {
        error = revoke::revoked(&identity, &chain) => error,
        _ = quic.closed() => return,
    };
    tracing::warn!(peer = %quic.remote_address(), %error,
        "peer certificate no longer verifies; closing hbone/h3 connection");
    if let Some(entry) = entry.upgrade() {
        let mut conn = lock(&entry.conn);
        if conn
            .as_ref()
            .is_some_and(|(c, _)| c.stable_id() == quic.stable_id())
        {
            *conn = None;
        }
    }
    let _ = tokio::time::timeout(grace, quic.closed()).await;
    quic.close(
        quinn::VarInt::from_u32(0),
        b"peer certificate no longer verifies",
    );
}

impl QuicClient {
    fn endpoint(&self, v6: bool) -> Result<quinn::Endpoint, Error> {
        let mut endpoints = lock(&self.endpoints);
        if let Some(e) = endpoints.get(&v6) {
            return Ok(e.clone());
        }
        let bind = if v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let e = quinn::Endpoint::client(SocketAddr::new(bind, 0))
            .map_err(|e| Error::io("binding a QUIC client endpoint", e))?;
        endpoints.insert(v6, e.clone());
        Ok(e)
    }
}
