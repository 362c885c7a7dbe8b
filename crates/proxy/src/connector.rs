//! How the terminal stage reaches upstreams: plain TCP from sockets carrying meshd's mark (an
//! inbound one from the client's address with `redirect.originalSource`), and HBONE tunnels
//! from a pooled client.

use std::io;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use futures::future::BoxFuture;
use meshd_hbone::{Client, Forwarded, Peer, RequestHeaders, Transport};
use meshd_identity::{IdentitySet, SpiffeId};
use tokio::net::TcpStream;

use crate::conn::{BoxIo, TunnelRequest};
use crate::layers::connect::{CONNECT_TIMEOUT, Connector, TunnelError};

/// The connector `meshd run` uses.
#[derive(Clone)]
pub struct MeshConnector {
    client: Client,
    mark: Option<u32>,
    /// The mark of connections made from the client's address; `None`: from meshd's own.
    original_source: Option<u32>,
    /// The local workloads' own identities: a tunnel presents its source's.
    identities: Option<IdentitySet>,
}

impl MeshConnector {
    /// Tunnels through `client`; plain connections carry `mark` (None: unmarked, for setups
    /// without traffic capture, where nothing could loop).
    pub fn new(client: Client, mark: Option<u32>) -> Self {
        MeshConnector {
            client,
            mark,
            original_source: None,
            identities: None,
        }
    }

    /// With `Some(mark)`, inbound connections leave from the client's address, transparent
    /// sockets carrying `mark` (`redirect.originalSource`).
    pub fn keep_client_address(mut self, mark: Option<u32>) -> Self {
        self.original_source = mark;
        self
    }

    /// Tunnels present their source workload's identity when it is one of `identities`
    /// (through the same pool, keyed by that identity), else the client's.
    pub fn with_identities(mut self, identities: Option<IdentitySet>) -> Self {
        self.identities = identities;
        self
    }

    /// The client presenting `source`'s identity, or meshd's own.
    fn client_for(&self, source: Option<&SpiffeId>) -> Client {
        let own = || self.client.clone();
        let Some(identities) = &self.identities else {
            return own();
        };
        match source.and_then(|id| identities.workload(id)) {
            Some(identity) => self.client.as_identity(identity.clone()),
            None => own(),
        }
    }
}

impl Connector for MeshConnector {
    fn direct(
        &self,
        addr: SocketAddr,
        client: Option<IpAddr>,
    ) -> BoxFuture<'static, io::Result<BoxIo>> {
        let (mark, original_source) = (self.mark, self.original_source);
        Box::pin(async move {
            let stream = match (original_source.zip(client), mark) {
                (Some((mark, client)), _) => {
                    meshd_redirect::connect_transparent(client, addr, mark, CONNECT_TIMEOUT).await?
                }
                (None, Some(mark)) => {
                    meshd_redirect::connect_marked(addr, mark, CONNECT_TIMEOUT).await?
                }
                (None, None) => {
                    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                        .await
                        .map_err(|_| {
                            io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("connect to {addr} timed out"),
                            )
                        })??;
                    stream.set_nodelay(true)?;
                    stream
                }
            };
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn tunnel(
        &self,
        request: TunnelRequest,
        first: Bytes,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelError>> {
        let client = self.client_for(request.source.as_deref().map(|i| i.id()));
        Box::pin(async move {
            let headers = RequestHeaders {
                baggage: request
                    .identity
                    .namespace()
                    .map(|ns| format!("k8s.namespace.name={ns}")),
                forwarded: Some(Forwarded {
                    client: request.client,
                    host: request.service_host,
                }),
                traceparent: Some(request.trace),
            };
            let mut peer = Peer::new(request.identity, request.peer);
            if request.quic {
                peer = peer.with_transport(Transport::H3);
            }
            match client
                .connect_with_data(&peer, request.authority, headers, first)
                .await
            {
                Ok(stream) => Ok(Box::new(stream) as BoxIo),
                Err(e) => match e.http_status() {
                    Some(status) => Err(TunnelError::Status(status.as_u16())),
                    None => Err(TunnelError::Failed(e)),
                },
            }
        })
    }
}
