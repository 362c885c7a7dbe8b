//! What the server makes of one CONNECT before the caller's service sees it: the checks the
//! transport judges alone (method, authority syntax, that the authority names the address the
//! tunnel arrived on), the [`InboundRequest`] the service gets, and the [`Refusal`]s it may
//! answer with, each mapped to its HTTP status in one place.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Method, Response, StatusCode};
use meshd_identity::SpiffeId;

use crate::headers::{RequestHeaders, canonical, parse_authority};
use crate::observe::{Observer, Refused, Stage};
use crate::peer::Transport;

/// One validated CONNECT, as the proxy's service sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundRequest {
    /// The client's SPIFFE ID, from its verified certificate.
    pub peer_identity: SpiffeId,
    /// The client's socket address (the peer proxy, not the application).
    pub peer_addr: SocketAddr,
    /// The local address the TLS connection arrived on; `authority.ip()` equals its IP.
    pub local_addr: SocketAddr,
    /// The identity this server presented on the connection (chosen by `local_addr` when the
    /// server has one per local workload): who the client believes it reached.
    pub local_identity: SpiffeId,
    /// The destination from `:authority`; the proxy dials it (ztunnel dials
    /// `<arrival ip>:<authority port>`, the same address after the IP check).
    pub authority: SocketAddr,
    /// `baggage`, `forwarded` and `traceparent`, when present and well-formed.
    pub headers: RequestHeaders,
    /// Which transport carried the request.
    pub transport: Transport,
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
    pub(crate) local_identity: SpiffeId,
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
            error: None,
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
        local_identity: info.local_identity.clone(),
        authority,
        headers: RequestHeaders::from_headers(headers),
        transport: info.transport,
    })
}

/// A response head with `status` and no body, as every CONNECT answer is.
pub(crate) fn response(status: StatusCode) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    response
}
