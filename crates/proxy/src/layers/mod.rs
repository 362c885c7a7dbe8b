//! The layers connection stacks are built from. Each is a `tower::Layer` over services of
//! [`Conn`](crate::conn::Conn); the order they are stacked in is in [`crate::stack`].

pub mod authorize;
pub mod connect;
pub mod record;
pub mod resolve;

use tower::util::BoxCloneSyncService;

use crate::conn::Conn;
use crate::error::ProxyError;

/// A connection service: called once per connection, completes when the connection ends.
pub type ConnService = BoxCloneSyncService<Conn, (), ProxyError>;
