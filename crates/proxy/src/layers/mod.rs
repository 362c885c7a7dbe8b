//! The layers connection stacks are built from. Each is a `tower::Layer` over services of
//! [`Conn`](crate::conn::Conn); the order they are stacked in is in [`crate::stack`].

pub mod authorize;
pub mod connect;
pub mod record;
pub mod resolve;

use tower::util::BoxCloneSyncService;

use crate::conn::{Conn, Upstream};
use crate::error::ProxyError;
use crate::relay::Relay;

/// A connection service: called once per connection, completes when the connection is
/// established (or refused) with the [`Relay`] the caller runs.
pub type ConnService = BoxCloneSyncService<Conn, Relay, ProxyError>;

/// The services after the layer that chooses the upstream (the plugins, the connect stage):
/// they take only connections whose upstream is chosen.
pub type ChosenService = BoxCloneSyncService<Conn<Upstream>, Relay, ProxyError>;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
