//! What the server hands the caller for each CONNECT, and what it expects back.
//!
//! The transport validates what it can judge alone (method, authority syntax, that the
//! authority names the address the tunnel arrived on) and asks the caller's `tower::Service`
//! about the rest, handing it an [`Inbound`]: the request and its
//! [`Responder`](crate::Responder), which the service uses to accept or refuse when it knows
//! (see `responder.rs`). Services that decide before doing anything else can be written as
//! [`Decision`]s and adapted with [`Decide`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use std::task::{Context, Poll};

use http::{HeaderMap, Method, StatusCode};
use meshd_identity::SpiffeId;
use tower::Service;
use tower::util::BoxCloneService;

use crate::headers::{RequestHeaders, canonical, parse_authority};
use crate::observe::{Observer, Refused, Stage};
use crate::responder::Inbound;
use crate::{Transport, TunnelStream};

/// A boxed error from the caller's service.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The service type the server stores: any caller service, boxed once at construction.
pub(crate) type ConnectService = BoxCloneService<Inbound, (), BoxError>;

/// One validated CONNECT, as the proxy's service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    /// The client's SPIFFE ID, from its verified certificate.
    pub peer_identity: SpiffeId,
    /// The client's socket address (the peer proxy, not the application).
    pub peer_addr: SocketAddr,
    /// The local address the TLS connection arrived on; `authority.ip()` equals its IP.
    pub local_addr: SocketAddr,
    /// The destination from `:authority`; the proxy dials it (ztunnel dials
    /// `<arrival ip>:<authority port>`, the same address after the IP check).
    pub authority: SocketAddr,
    /// `baggage`, `forwarded` and `traceparent`, when present and well-formed.
    pub headers: RequestHeaders,
    /// Which transport carried the request.
    pub transport: Transport,
}

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

/// Why a tunnel is refused; each maps to the status ztunnel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Authorization policy denied the connection: `401` (ztunnel never sends 403).
    Denied,
    /// The destination could not be reached or is not served here: `503`.
    Unreachable,
    /// The request is unusable: `400`.
    BadRequest,
    /// Any other status of the caller's choosing; a 1xx/2xx code is sent as `503` since it
    /// would read as success.
    Status(StatusCode),
}

impl Refusal {
    /// The status sent to the client.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Denied => StatusCode::UNAUTHORIZED,
            Refusal::Unreachable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Status(s) if s.is_informational() || s.is_success() => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Refusal::Status(s) => *s,
        }
    }
}

/// The facts of one accepted HBONE connection, shared by its streams.
pub(crate) struct ConnectionInfo {
    pub(crate) peer_identity: SpiffeId,
    pub(crate) peer_addr: SocketAddr,
    pub(crate) local_addr: SocketAddr,
    pub(crate) transport: Transport,
    pub(crate) observer: Arc<dyn Observer>,
}

impl ConnectionInfo {
    /// Logs and reports a request refused before the service is asked.
    fn refuse_request(&self, authority: Option<&str>, reason: &str) -> StatusCode {
        tracing::info!(peer = %self.peer_addr, ?authority, "refusing HBONE request: {reason}");
        self.observer.refused(&Refused {
            stage: Stage::Request,
            peer_addr: self.peer_addr,
            peer_identity: Some(&self.peer_identity),
            authority,
            transport: self.transport,
            reason,
        });
        StatusCode::BAD_REQUEST
    }
}

/// Validates a CONNECT before the service sees it; `Err` is the status to refuse with.
pub(crate) fn validate(
    info: &ConnectionInfo,
    method: &Method,
    authority: Option<&str>,
    headers: &HeaderMap,
) -> Result<InboundRequest, StatusCode> {
    if method != Method::CONNECT {
        return Err(info.refuse_request(authority, &format!("{method} is not CONNECT")));
    }
    let Some(parsed) = authority.and_then(parse_authority) else {
        return Err(info.refuse_request(authority, "no valid ip:port authority"));
    };
    let authority = parsed;
    let local_ip = canonical(info.local_addr.ip());
    if authority.ip() != local_ip {
        // A tunnel may only lead to the address it was addressed to; otherwise any client
        // could use this node as an open relay to other hosts.
        let shown = authority.to_string();
        return Err(info.refuse_request(
            Some(&shown),
            &format!("ip mismatch: {local_ip} != {}", authority.ip()),
        ));
    }
    Ok(InboundRequest {
        peer_identity: info.peer_identity.clone(),
        peer_addr: info.peer_addr,
        local_addr: info.local_addr,
        authority,
        headers: RequestHeaders::from_headers(headers),
        transport: info.transport,
    })
}

/// Adapts a service that decides first and handles the accepted tunnel afterwards
/// ([`Decision`]) to the [`Responder`](crate::Responder) interface the server calls: the
/// decision is sent as soon as it is made, then the handler runs on the tunnel. For callers
/// with nothing to do between deciding and answering (tests, tools); the proxy answers through
/// the responder itself, after dialing.
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
