//! What a connection is, fixed where it enters meshd ([`Facts`]), and the form identities
//! take in records ([`Identity`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use meshd_hbone::TraceParent;
use meshd_identity::SpiffeId;

use crate::{Direction, WorkloadMeta};

/// A SPIFFE ID as a record keeps it: the ID itself, typed, for whatever decides on it, and its
/// URI rendered once, for the labels and log lines that print it (a sink borrows the text for
/// each connection instead of rendering it again).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    id: SpiffeId,
    uri: Box<str>,
}

impl Identity {
    /// `id`, with its URI rendered now.
    pub fn new(id: SpiffeId) -> Self {
        let uri = id.to_string().into_boxed_str();
        Identity { id, uri }
    }

    /// The SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The ID as a URI, `spiffe://<trust domain>/<path>`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }
}

/// Parses a SPIFFE ID (configuration, tests); the proxy builds identities from typed IDs.
impl std::str::FromStr for Identity {
    type Err = meshd_identity::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::new(s).map(Identity::new)
    }
}

impl From<SpiffeId> for Identity {
    fn from(id: SpiffeId) -> Self {
        Identity::new(id)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

/// What a connection is, known where it enters meshd and fixed from then on: who it came from,
/// which way it goes, under which trace. One value per connection, shared (one `Arc`) by its
/// record and by the context the proxy's layers read, so the two never disagree.
///
/// The destination asked for is not among them: a SOCKS5 client names it after the record is
/// open. The proxy's entry writes it into the record ([`ConnectionRecord::destination`]) in the
/// same step that gives the context its typed target.
///
/// [`ConnectionRecord::destination`]: crate::ConnectionRecord::destination
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    /// The trace context: the peer's `traceparent` (inbound HBONE), else made at entry; shared
    /// by both meshd instances of a tunnel.
    pub trace: TraceParent,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Where the connection came from.
    pub source: SocketAddr,
    /// The authenticated source identity (inbound mTLS: the peer's certificate) or this
    /// meshd's (outbound); `None` for plaintext inbound.
    pub source_identity: Option<Arc<Identity>>,
    /// The source workload, when the registry knows the source.
    pub source_workload: Option<Arc<WorkloadMeta>>,
}

impl Facts {
    /// A connection from `source`, going `direction`, under `trace`; no identity or workload
    /// known.
    pub fn new(trace: TraceParent, direction: Direction, source: SocketAddr) -> Self {
        Facts {
            trace,
            direction,
            source,
            source_identity: None,
            source_workload: None,
        }
    }

    /// The authenticated peer: the source identity of an inbound connection (an outbound one's
    /// is this meshd's own, never a peer's).
    pub fn peer(&self) -> Option<&SpiffeId> {
        match self.direction {
            Direction::Inbound => self.source_identity.as_deref().map(Identity::id),
            Direction::Outbound => None,
        }
    }
}
