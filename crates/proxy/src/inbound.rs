//! Inbound entries: HBONE CONNECTs (from the HBONE server) and captured plaintext connections,
//! both turned into [`Conn`]s for the inbound stack.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use meshd_hbone::{Inbound, Observer, Refused, Responder, Stage, TraceParent};
use tokio::sync::watch;
use tower::{Service, ServiceExt};

use crate::conn::{BoxIo, Conn, ConnCtx, Downstream, Refusal, Target};
use crate::layers::ConnService;
use meshd_record::{ConnectionRecord, Direction, Outcome, RecordHandle, Sinks};
use crate::runtime::source_workload;
use crate::state::ProxyState;

/// The tower service the HBONE server hands each CONNECT to: it runs the inbound stack on the
/// request in the stream's own task, and the stack answers through the request's
/// [`Responder`] (refuse, or accept once the workload is connected). A client reset before the
/// answer drops this future, and with it the stack's authorization and dial.
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

    /// The connection the stack sees for one CONNECT, with its record opened.
    fn conn(&self, Inbound { request, responder }: Inbound) -> Conn {
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
        Conn {
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
            downstream: Box::new(Tunnel(responder)),
        }
    }
}

impl Service<Inbound> for HboneInbound {
    type Response = ();
    type Error = io::Error;
    type Future = BoxFuture<'static, io::Result<()>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        // The set-up (the stack's futures, the request) has its own allocation, freed once the
        // tunnel is established: a held tunnel keeps only its relay.
        let setup = Box::pin(self.stack.clone().oneshot(self.conn(inbound)));
        Box::pin(async move {
            // The stack answers through the downstream; errors are in the record already.
            if let Ok(relay) = setup.await {
                let _ = relay.run().await;
            }
            Ok(())
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
struct Tunnel(Responder);

impl Downstream for Tunnel {
    fn accept(self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            let stream = self.0.accept().await.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    format!("HBONE request went away: {e}"),
                )
            })?;
            Ok(Box::new(stream) as BoxIo)
        })
    }

    fn refuse(self: Box<Self>, refusal: Refusal) -> BoxFuture<'static, ()> {
        let refusal = match refusal {
            Refusal::BadDestination => meshd_hbone::Refusal::BadRequest,
            Refusal::Denied => meshd_hbone::Refusal::Denied,
            Refusal::Unreachable => meshd_hbone::Refusal::Unreachable,
            Refusal::Limited => meshd_hbone::Refusal::Status(http::StatusCode::TOO_MANY_REQUESTS),
        };
        Box::pin(self.0.refuse(refusal))
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
