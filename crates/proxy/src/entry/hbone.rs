//! The HBONE way in: the CONNECTs the HBONE server (HTTP/2 and HTTP/3) hands over, run through
//! the inbound stack, and what the server refuses on its own before a CONNECT, recorded.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use meshd_hbone::{Inbound, Observer, Refused, Responder, Stage, TraceParent};
use meshd_record::{Direction, Identity, Outcome};
use tower::{Service, ServiceExt};

use super::{Arrival, Gate};
use crate::conn::{BoxIo, Conn, Downstream, Refusal, Target};
use crate::identities::LocalIdentities;
use crate::layers::ConnService;

/// The tower service the HBONE server hands each CONNECT to: it runs the inbound stack on the
/// request in the stream's own task, and the stack answers through the request's
/// [`Responder`] (refuse, or accept once the workload is connected). A client reset before the
/// answer drops this future, and with it the stack's authorization and dial.
#[derive(Clone)]
pub(crate) struct HboneInbound {
    stack: ConnService,
    gate: Gate,
    /// With one identity per local workload: the check that a CONNECT's destination is the
    /// workload whose certificate the connection presented.
    identities: Option<LocalIdentities>,
}

impl HboneInbound {
    /// Runs `stack` on the CONNECTs that enter through `gate`.
    pub(crate) fn new(stack: ConnService, gate: Gate, identities: Option<LocalIdentities>) -> Self {
        HboneInbound {
            stack,
            gate,
            identities,
        }
    }

    /// The connection the stack sees for one CONNECT, with its record opened; `Err` when the
    /// CONNECT is refused before the stack (recorded, and answered 401).
    fn conn(
        &self,
        Inbound { request, responder }: Inbound,
    ) -> Result<Conn, BoxFuture<'static, ()>> {
        let opened = self.gate.open(Arrival {
            trace: request
                .headers
                .traceparent
                .unwrap_or_else(TraceParent::random),
            direction: Direction::Inbound,
            source: request.peer_addr,
            identity: Some(Arc::new(Identity::new(request.peer_identity))),
            transport: Some(request.transport),
            destination: Some(request.authority.to_string()),
        });
        if let Some(identities) = &self.identities {
            let checked =
                identities.check_inbound(&opened.state, request.authority, &request.local_identity);
            if let Err(reason) = checked {
                tracing::info!(src.addr = %request.peer_addr, dst.addr = %request.authority,
                    "refusing HBONE request: {reason}");
                opened.fail(Outcome::Denied, reason);
                return Err(Box::pin(responder.refuse(meshd_hbone::Refusal::Denied)));
            }
        }
        Ok(opened.toward(Target::Addr(request.authority), Box::new(Tunnel(responder))))
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
        let conn = match self.conn(inbound) {
            Ok(conn) => conn,
            Err(refused) => {
                return Box::pin(async move {
                    refused.await;
                    Ok(())
                });
            }
        };
        let setup = Box::pin(self.stack.clone().oneshot(conn));
        Box::pin(async move {
            // The stack answers through the downstream; errors are in the record already.
            if let Ok(relay) = setup.await {
                let _ = relay.run().await;
            }
            Ok(())
        })
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
pub(crate) struct HboneRefusals {
    gate: Gate,
}

impl HboneRefusals {
    /// Records enter through `gate`.
    pub(crate) fn new(gate: Gate) -> Self {
        HboneRefusals { gate }
    }
}

impl Observer for HboneRefusals {
    fn refused(&self, refused: &Refused<'_>) {
        let outcome = match refused.stage {
            Stage::Budget | Stage::ConnectionLimit => Outcome::Limited,
            Stage::Request => Outcome::NotLocal,
            _ => Outcome::Handshake,
        };
        // Opened and closed at once: the sinks see one refused attempt.
        self.gate
            .open(Arrival {
                trace: TraceParent::random(),
                direction: Direction::Inbound,
                source: refused.peer_addr,
                identity: refused
                    .peer_identity
                    .map(|id| Arc::new(Identity::new(id.clone()))),
                transport: Some(refused.transport),
                destination: Some(refused.authority.unwrap_or("-").to_string()),
            })
            .fail(outcome, refused.reason);
    }
}
