//! The HTTP/3 client: one QUIC connection per pool key.

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use meshd_identity::{IdentityHandle, SpiffeId};
use quinn::crypto::rustls::QuicClientConfig;

use super::stream::{H3Io, RecvHalf, SendHalf};
use super::{ALPN_H3, h3_error, handshake_error, lock, transport_config};
use crate::headers::{RequestHeaders, authority_string};
use crate::{ClientSettings, Error, Peer, TunnelStream};

type SendRequest = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// The HTTP/3 side of [`Client`](crate::Client): one QUIC connection per pool key.
pub(crate) struct QuicClient {
    identity: IdentityHandle,
    settings: ClientSettings,
    endpoints: Mutex<HashMap<bool, quinn::Endpoint>>,
    conns: Mutex<HashMap<(SpiffeId, SpiffeId, SocketAddr), Arc<Entry>>>,
}

struct Entry {
    dial: tokio::sync::Mutex<()>,
    conn: Mutex<Option<(quinn::Connection, SendRequest)>>,
}

impl QuicClient {
    pub(crate) fn new(identity: IdentityHandle, settings: ClientSettings) -> QuicClient {
        QuicClient {
            identity,
            settings,
            endpoints: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) async fn connect(
        &self,
        peer: &Peer,
        authority: SocketAddr,
        headers: &RequestHeaders,
    ) -> Result<TunnelStream, Error> {
        let mut send = self.checkout(peer).await?;
        let mut request = Request::builder()
            .method(Method::CONNECT)
            .uri(authority_string(authority))
            .body(())
            .map_err(|e| Error::Config(e.to_string()))?;
        headers.write_to(request.headers_mut());
        let mut stream = send.send_request(request).await.map_err(h3_error)?;
        let response = stream.recv_response().await.map_err(h3_error)?;
        if response.status() != StatusCode::OK {
            return Err(Error::HttpStatus(response.status()));
        }
        let (send, recv) = stream.split();
        let io = H3Io::new(SendHalf::Client(send), RecvHalf::Client(recv));
        Ok(TunnelStream::h3(io, None))
    }

    async fn checkout(&self, peer: &Peer) -> Result<SendRequest, Error> {
        let key = (
            self.identity.current().id().clone(),
            peer.identity.clone(),
            peer.addr,
        );
        let entry = {
            let mut conns = lock(&self.conns);
            Arc::clone(conns.entry(key).or_insert_with(|| {
                Arc::new(Entry {
                    dial: tokio::sync::Mutex::new(()),
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
        let _dialing = entry.dial.lock().await;
        if let Some(send) = live(&entry) {
            return Ok(send);
        }
        let (quic, send) = self.dial(peer).await?;
        *lock(&entry.conn) = Some((quic, send.clone()));
        Ok(send)
    }

    async fn dial(&self, peer: &Peer) -> Result<(quinn::Connection, SendRequest), Error> {
        let addr = peer.addr;
        let mut tls =
            (*meshd_identity::tls::client_config(&self.identity, &peer.identity)?).clone();
        tls.alpn_protocols = vec![ALPN_H3.to_vec()];
        let crypto =
            QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| Error::Config(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config(
            &self.settings.http2,
            self.settings.keepalive,
            self.settings.max_streams_per_connection,
        )));
        let endpoint = self.endpoint(addr.is_ipv6())?;
        // The name is never checked (SPIFFE verification) nor sent (an IP name has no SNI).
        let connecting = endpoint
            .connect_with(config, addr, "0.0.0.0")
            .map_err(|e| Error::Connect {
                addr,
                reason: e.to_string(),
            })?;
        let timeout = self.settings.handshake_timeout;
        let setup = async {
            let quic = connecting.await.map_err(|e| handshake_error(addr, e))?;
            let (mut driver, send) = h3::client::builder()
                .max_field_section_size(u64::from(self.settings.http2.max_header_list_size))
                .build::<_, _, Bytes>(h3_quinn::Connection::new(quic.clone()))
                .await
                .map_err(|e| Error::Http2Handshake {
                    addr,
                    reason: e.to_string(),
                })?;
            tokio::spawn(async move {
                let _closed = poll_fn(|cx| driver.poll_close(cx)).await;
            });
            Ok::<_, Error>((quic, send))
        };
        tokio::time::timeout(timeout, setup)
            .await
            .map_err(|_| Error::Timeout {
                what: "quic handshake",
                after: timeout,
            })?
    }

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
            .map_err(|e| Error::Io(e.to_string()))?;
        endpoints.insert(v6, e.clone());
        Ok(e)
    }
}
