//! The terminal stage of every stack: connect upstream and answer the downstream side. The
//! connected pair goes back up the stack as a [`Relay`], which the entry point runs.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tower::Service;

use meshd_record::Direction;

use crate::conn::{BoxIo, Conn, Refusal, TunnelRequest, Upstream};
use crate::error::ProxyError;
use crate::relay::Relay;

/// How long a plain TCP connect may take, as ztunnel's connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The peer meshd answered with this HTTP status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Anything else (TCP, TLS, identity, HTTP/2), with the transport's error as the cause.
    #[error(transparent)]
    Failed(#[from] meshd_hbone::Error),
}

/// Opens upstream connections. Plain connects must carry meshd's socket mark so traffic capture
/// never loops them back into meshd.
pub trait Connector: Send + Sync + 'static {
    /// Plain TCP to `addr`. `client` is the client's address of an inbound connection (to a
    /// local workload), `None` outbound: a connector keeping the client's address
    /// (`redirect.originalSource`) connects from it.
    fn direct(
        &self,
        addr: SocketAddr,
        client: Option<IpAddr>,
    ) -> BoxFuture<'static, io::Result<BoxIo>>;
    /// An HBONE tunnel, sending `first` right behind its CONNECT (what the application
    /// already sent, [`crate::conn::Downstream::read_sent`]).
    fn tunnel(
        &self,
        request: TunnelRequest,
        first: Bytes,
    ) -> BoxFuture<'static, Result<BoxIo, TunnelError>>;
}

/// The client's address, for an inbound connection's dial.
fn client(conn: &Conn<Upstream>) -> Option<IpAddr> {
    let facts = &conn.ctx.facts;
    (facts.direction == Direction::Inbound).then(|| facts.source.ip().to_canonical())
}

/// The last service of a stack.
#[derive(Clone)]
pub struct Connect {
    connector: Arc<dyn Connector>,
}

impl Connect {
    /// Connects with `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> Self {
        Connect { connector }
    }
}

impl Service<Conn<Upstream>> for Connect {
    type Response = Relay;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Relay, ProxyError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut conn: Conn<Upstream>) -> Self::Future {
        let connector = self.connector.clone();
        Box::pin(async move {
            let mut sent_ahead = 0;
            let upstream_io = match conn.upstream.clone() {
                Upstream::Direct(addr) => match connector.direct(addr, client(&conn)).await {
                    Ok(io) => {
                        // Where the workload sees the connection come from: meshd's address,
                        // or the client's with original source (the access log keeps both).
                        if let Some(local) = io.local_addr() {
                            conn.ctx.record.update(|r| r.upstream_local = Some(local));
                        }
                        io
                    }
                    Err(source) => {
                        // A dial refused before any packet (no socket can join the client's
                        // address to this workload) says nothing of the workload's health.
                        if source.kind() != io::ErrorKind::InvalidInput {
                            conn.ctx.state.registry.report_failure(addr);
                        }
                        let error = ProxyError::Connect { addr, source };
                        return Err(conn.refuse(Refusal::Unreachable, error).await);
                    }
                },
                Upstream::Tunnel(request) => {
                    let peer = request.peer;
                    // The registry balances over endpoint addresses (workload address and
                    // target port), which is the CONNECT authority, not the peer's HBONE port.
                    let endpoint = request.authority;
                    let first = conn
                        .downstream
                        .read_sent()
                        .map_err(ProxyError::Downstream)?;
                    sent_ahead = first.len() as u64;
                    match connector.tunnel(request, first).await {
                        Ok(io) => io,
                        Err(TunnelError::Status(status)) => {
                            let refusal = if status == 401 {
                                Refusal::Denied
                            } else {
                                Refusal::Unreachable
                            };
                            if status == 503 {
                                // The peer meshd could not reach its workload: that endpoint is
                                // down as surely as one whose meshd is.
                                conn.ctx.state.registry.report_failure(endpoint);
                            }
                            return Err(conn
                                .refuse(refusal, ProxyError::TunnelStatus(status))
                                .await);
                        }
                        Err(TunnelError::Failed(source)) => {
                            conn.ctx.state.registry.report_failure(endpoint);
                            let error = ProxyError::Tunnel {
                                addr: peer,
                                source: Box::new(source),
                            };
                            return Err(conn.refuse(Refusal::Unreachable, error).await);
                        }
                    }
                }
            };
            let record = conn.ctx.record.clone();
            let downstream = conn
                .downstream
                .accept()
                .await
                .map_err(ProxyError::Downstream)?;
            let mut relay = Relay::new(downstream, upstream_io, record);
            relay.sent_ahead(sent_ahead);
            Ok(relay)
        })
    }
}
