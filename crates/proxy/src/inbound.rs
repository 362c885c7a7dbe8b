//! Inbound entries: HBONE CONNECTs (from the HBONE server) and captured plaintext connections,
//! both turned into [`Conn`]s for the inbound stack.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use meshd_hbone::{Decision, InboundRequest, Observer, Refused, Stage, TraceParent, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{oneshot, watch};
use tower::{Service, ServiceExt};

use crate::conn::{BoxIo, Conn, ConnCtx, Downstream, Refusal, Target};
use crate::layers::ConnService;
use crate::record::{ConnectionRecord, Direction, Outcome, RecordHandle, Sinks};
use crate::runtime::source_workload;
use crate::state::ProxyState;

/// The tower service the HBONE server asks about each CONNECT: it runs the inbound stack for
/// the request and answers with the stack's first word (refuse, or accept once the workload
/// is connected).
#[derive(Clone)]
pub struct HboneInbound {
    stack: ConnService,
    states: watch::Receiver<Arc<ProxyState>>,
    sinks: Sinks,
}

impl HboneInbound {
    /// Runs `stack` under the configurations `states` delivers; records go to `sinks`.
    pub fn new(stack: ConnService, states: watch::Receiver<Arc<ProxyState>>, sinks: Sinks) -> Self {
        HboneInbound {
            stack,
            states,
            sinks,
        }
    }
}

impl Service<InboundRequest> for HboneInbound {
    type Response = Decision;
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<Decision>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: InboundRequest) -> Self::Future {
        let (decision_tx, decision_rx) = oneshot::channel();
        let trace = request
            .headers
            .traceparent
            .unwrap_or_else(TraceParent::random);
        let peer = request.peer_identity.principal();
        let state = self.states.borrow().clone();
        let mut record = ConnectionRecord::new(
            trace.to_string(),
            Direction::Inbound,
            request.peer_addr,
            request.authority.to_string(),
        );
        record.source_identity = Some(request.peer_identity.to_string());
        let peer_identity = meshd_rbac::Peer::from_principal(&peer).ok();
        record.source_workload_meta = source_workload(
            &state,
            Direction::Inbound,
            request.peer_addr,
            peer_identity.as_ref(),
        );
        record.transport = Some(transport_name(request.transport).to_string());
        record.mtls = true;
        let record = RecordHandle::open(record, self.sinks.clone());
        let conn = Conn {
            ctx: ConnCtx {
                direction: Direction::Inbound,
                source: request.peer_addr,
                peer: Some(peer),
                target: Target::Addr(request.authority),
                trace_id: trace.to_string(),
                state,
                updates: self.states.clone(),
                record,
                upstream: None,
            },
            downstream: Box::new(PendingTunnel {
                decision: decision_tx,
            }),
        };
        let stack = self.stack.clone();
        tokio::spawn(async move {
            // The stack answers through the downstream; its error is in the record already.
            let _ = stack.oneshot(conn).await;
        });
        Box::pin(async move {
            // A stack that ends without answering (it cannot, but a panic could) refuses.
            Ok(decision_rx
                .await
                .unwrap_or(Decision::refuse(meshd_hbone::Refusal::Unreachable)))
        })
    }
}

/// `h2` or `h3`, as access logs print it.
pub fn transport_name(transport: meshd_hbone::Transport) -> &'static str {
    match transport {
        meshd_hbone::Transport::H2 => "h2",
        meshd_hbone::Transport::H3 => "h3",
    }
}

/// An HBONE CONNECT waiting for the inbound stack's answer.
struct PendingTunnel {
    decision: oneshot::Sender<Decision>,
}

impl Downstream for PendingTunnel {
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let (stream_tx, stream_rx) = oneshot::channel();
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let decision = Decision::accept(move |stream: TunnelStream| async move {
                let _ = stream_tx.send(stream);
                // The server ends the stream when this future completes: hold it until the
                // proxy drops the tunnel.
                let _ = done_rx.await;
            });
            if self.decision.send(decision).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "HBONE request went away",
                ));
            }
            let stream = stream_rx.await.map_err(|_| {
                io::Error::new(io::ErrorKind::BrokenPipe, "HBONE stream was not delivered")
            })?;
            Ok(Box::new(HeldTunnel {
                stream,
                _done: done_tx,
            }) as BoxIo)
        })
    }

    fn refuse(self: Box<Self>, refusal: Refusal) -> BoxFuture<'static, ()> {
        let refusal = match refusal {
            Refusal::BadDestination => meshd_hbone::Refusal::BadRequest,
            Refusal::Denied => meshd_hbone::Refusal::Denied,
            Refusal::Unreachable => meshd_hbone::Refusal::Unreachable,
            Refusal::Limited => meshd_hbone::Refusal::Status(http::StatusCode::TOO_MANY_REQUESTS),
        };
        let _ = self.decision.send(Decision::refuse(refusal));
        Box::pin(async {})
    }
}

/// A tunnel stream that releases the server's handler when dropped.
struct HeldTunnel {
    stream: TunnelStream,
    _done: oneshot::Sender<()>,
}

impl AsyncRead for HeldTunnel {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for HeldTunnel {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Turns what the HBONE server refuses on its own (handshake budget, TLS failures, the
/// connection limit, malformed CONNECTs) into connection records, so those attempts reach the
/// access log and metrics like every other.
pub struct HboneRefusals {
    sinks: Sinks,
}

impl HboneRefusals {
    /// Records go to `sinks`.
    pub fn new(sinks: Sinks) -> Self {
        HboneRefusals { sinks }
    }
}

impl Observer for HboneRefusals {
    fn refused(&self, refused: &Refused<'_>) {
        let mut record = ConnectionRecord::new(
            TraceParent::random().to_string(),
            Direction::Inbound,
            refused.peer_addr,
            refused.authority.unwrap_or("-").to_string(),
        );
        record.source_identity = refused.peer_identity.map(ToString::to_string);
        record.mtls = refused.peer_identity.is_some();
        record.transport = Some(transport_name(refused.transport).to_string());
        let outcome = match refused.stage {
            Stage::Budget | Stage::ConnectionLimit => Outcome::Limited,
            Stage::Request => Outcome::NotLocal,
            _ => Outcome::Handshake,
        };
        // Opened and closed at once: the sinks see one refused attempt.
        RecordHandle::open(record, self.sinks.clone()).fail_with(outcome, refused.reason);
    }
}
