//! A shortcut for tests, benchmarks and fuzz targets (feature `test-util`): a service that
//! decides first and handles the accepted tunnel afterwards, written as a [`Decision`] and
//! adapted with [`Decide`] to the [`Inbound`] interface the server calls.
//!
//! meshd's proxy does not use it: it answers through the [`Responder`](crate::Responder)
//! itself, after dialing its upstream, so a client gets `503` rather than `200` followed by a
//! dead tunnel.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::Service;

use crate::request::{InboundRequest, Refusal};
use crate::responder::{BoxError, Inbound};
use crate::stream::TunnelStream;

/// The service's answer to an [`InboundRequest`].
pub enum Decision {
    /// Send `200` and run the handler on the tunnel.
    Accept(TunnelHandler),
    /// Send the refusal's status and end the stream.
    Refuse(Refusal),
}

impl Decision {
    /// Accept the tunnel and run `handler` on it (typically `copy_bidirectional` with the
    /// upstream connection the service already opened).
    pub fn accept<F, Fut>(handler: F) -> Decision
    where
        F: FnOnce(TunnelStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Decision::Accept(TunnelHandler(Box::new(move |stream| {
            Box::pin(handler(stream))
        })))
    }

    /// Refuse with `refusal`'s status.
    pub fn refuse(refusal: Refusal) -> Decision {
        Decision::Refuse(refusal)
    }
}

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Accept(_) => f.write_str("Accept"),
            Decision::Refuse(r) => f.debug_tuple("Refuse").field(r).finish(),
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What runs on an accepted tunnel; built by [`Decision::accept`].
pub struct TunnelHandler(Box<dyn FnOnce(TunnelStream) -> BoxFuture + Send>);

impl TunnelHandler {
    /// Runs the handler on an accepted tunnel.
    pub async fn run(self, stream: TunnelStream) {
        (self.0)(stream).await
    }
}

/// Adapts a service that decides first and handles the accepted tunnel afterwards
/// ([`Decision`]) to the [`Responder`](crate::Responder) interface the server calls: the
/// decision is sent as soon as it is made, then the handler runs on the tunnel.
#[derive(Debug, Clone)]
pub struct Decide<S>(pub S);

impl<S> Service<Inbound> for Decide<S>
where
    S: Service<InboundRequest, Response = Decision> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = ();
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, inbound: Inbound) -> Self::Future {
        let decided = self.0.call(inbound.request);
        let responder = inbound.responder;
        Box::pin(async move {
            // An error drops the responder unanswered: the client gets 503.
            match decided.await.map_err(Into::into)? {
                Decision::Accept(handler) => {
                    let stream = responder.accept().await?;
                    handler.run(stream).await;
                }
                Decision::Refuse(refusal) => responder.refuse(refusal).await,
            }
            Ok(())
        })
    }
}
