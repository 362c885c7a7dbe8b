//! What the server refuses before its CONNECT service is asked: a caller that keeps one record
//! per connection attempt (metrics, access logs) hears about these through an [`Observer`].

use std::net::SocketAddr;

use meshd_identity::SpiffeId;

use crate::{Error, Transport};

/// Where in its life a connection or request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Closed on arrival: the pre-authentication budget (global or per source) was full.
    Budget,
    /// The TLS or HTTP/2 handshake failed or timed out: the peer was never authenticated.
    Handshake,
    /// Authenticated, but `max_connections` authenticated connections were already open.
    ConnectionLimit,
    /// A request on an authenticated connection that is not a CONNECT to this address
    /// (answered 400 before the service is asked).
    Request,
}

/// One refusal.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Refused<'a> {
    /// The stage.
    pub stage: Stage,
    /// The client's address.
    pub peer_addr: SocketAddr,
    /// The authenticated identity, from [`Stage::ConnectionLimit`] on.
    pub peer_identity: Option<&'a SpiffeId>,
    /// The CONNECT authority as sent, for [`Stage::Request`].
    pub authority: Option<&'a str>,
    /// HTTP/2 or HTTP/3.
    pub transport: Transport,
    /// Why, in words.
    pub reason: &'a str,
    /// The failure itself, with its cause, when a handshake failed or the connection limit
    /// was reached (`reason` is its text).
    pub error: Option<&'a Error>,
}

/// Told about every refusal the server makes on its own. Called on the connection's task:
/// implementations must not block.
pub trait Observer: Send + Sync + 'static {
    /// A connection or request was refused.
    fn refused(&self, refused: &Refused<'_>);
}

/// The default observer: only the server's own log lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn refused(&self, _refused: &Refused<'_>) {}
}
