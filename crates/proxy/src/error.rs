//! Why a proxied connection ended without success.

use meshd_record::Outcome;
use std::io;
use std::net::SocketAddr;

use crate::registry::ResolveError;

/// The error a connection stack ends with; its Display is what access logs print.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The destination is not a local workload (inbound) or is meshd itself: meshd is never
    /// an open proxy.
    #[error("destination {0} is not a workload this meshd serves")]
    BadDestination(String),
    /// The destination is one of meshd's own ports: meshd never relays to itself.
    #[error("destination {0} is one of meshd's own ports: meshd never relays to itself")]
    OwnPort(SocketAddr),
    /// An authorization policy (or STRICT PeerAuthentication) denied the connection.
    #[error("connection denied: {reason}")]
    Denied {
        /// The deciding policy, `namespace/name`.
        policy: Option<String>,
        /// The engine's reason.
        reason: String,
    },
    /// A new configuration denied an established connection, which was closed.
    #[error("connection closed due to policy change: {reason}")]
    ClosedByPolicyChange {
        /// The deciding policy of the new configuration.
        policy: Option<String>,
        /// The engine's reason.
        reason: String,
    },
    /// A plugin refused the connection.
    #[error("connection refused by plugin {plugin}: {reason}")]
    Limited {
        /// The plugin's name.
        plugin: &'static str,
        /// Which limit.
        reason: String,
    },
    /// The destination could not be resolved.
    #[error("cannot resolve destination: {0}")]
    Resolve(#[from] ResolveError),
    /// Connecting upstream failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The peer meshd answered the tunnel request with an HTTP status other than 200.
    #[error("peer meshd refused the tunnel with HTTP status {0}")]
    TunnelStatus(u16),
    /// Establishing the tunnel failed (TLS, identity, HTTP/2).
    #[error("tunnel to {addr} failed: {source}")]
    Tunnel {
        /// The peer meshd.
        addr: SocketAddr,
        /// Why (boxed: the transport's error is large, and this one travels in every
        /// connection's `Result`).
        #[source]
        source: Box<meshd_hbone::Error>,
    },
    /// Answering the downstream side failed.
    #[error("downstream failed: {0}")]
    Downstream(io::Error),
    /// Copying bytes failed after the connection was established.
    #[error("copy failed: {0}")]
    Copy(io::Error),
}

impl meshd_record::Failure for ProxyError {
    fn outcome(&self) -> Outcome {
        ProxyError::outcome(self)
    }
}

impl ProxyError {
    /// The refusal class this error puts a connection in, for metrics and logs.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::BadDestination(_) => Outcome::NotLocal,
            ProxyError::OwnPort(_) => Outcome::OwnPort,
            ProxyError::Denied { .. } | ProxyError::TunnelStatus(401) => Outcome::Denied,
            ProxyError::ClosedByPolicyChange { .. } => Outcome::ClosedByPolicy,
            ProxyError::Limited { .. } => Outcome::Limited,
            ProxyError::Resolve(_)
            | ProxyError::Connect { .. }
            | ProxyError::TunnelStatus(_)
            | ProxyError::Tunnel { .. } => Outcome::Unreachable,
            ProxyError::Downstream(_) | ProxyError::Copy(_) => Outcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_failed_tunnel_keeps_the_transport_error_as_its_cause() {
        // The access log line reads as before, and the HBONE error is there to match on.
        let addr: SocketAddr = ([10, 0, 0, 2], 15008).into();
        let cause = meshd_hbone::Error::Timeout {
            what: "tls and http2 handshake",
            after: Duration::from_secs(10),
        };
        let error = ProxyError::Tunnel {
            addr,
            source: Box::new(cause.clone()),
        };
        assert_eq!(
            error.to_string(),
            "tunnel to 10.0.0.2:15008 failed: tls and http2 handshake timed out after 10s"
        );
        let source = error
            .source()
            .and_then(|s| s.downcast_ref::<Box<meshd_hbone::Error>>());
        assert_eq!(source.map(|s| &**s), Some(&cause));
        assert_eq!(error.outcome(), Outcome::Unreachable);
    }
}
