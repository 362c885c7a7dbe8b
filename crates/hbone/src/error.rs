//! The crate's single error type.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// The error a variant keeps as its cause ([`std::error::Error::source`]): the error of h2, h3,
/// quinn, rustls or the OS, shared so that [`Error`] stays `Clone` (one failed dial is the
/// answer of every request that waited for it). Two causes are equal when they read the same,
/// since those errors cannot be compared themselves; [`Cause::get_ref`] gives the error to
/// downcast.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    /// Keeps `error` as a cause.
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(error))
    }

    /// The error itself.
    pub fn get_ref(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Cause) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for Cause {}

/// Everything that can go wrong opening, serving or using an HBONE tunnel.
///
/// Each variant keeps the error of h2, h3, quinn, rustls or the OS it comes from as its
/// `source`, so a log line can show the whole chain. The certificate rejection is also kept
/// typed in [`Error::Tls`] because callers act on it (metrics flag `TLS_FAILURE` vs
/// `IDENTITY_ERROR` in ztunnel terms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building TLS configuration from the local identity failed.
    #[error("identity error: {0}")]
    Identity(#[from] meshd_identity::Error),

    /// Opening the TCP (or UDP) connection to the peer failed.
    #[error("connection to {addr} failed: {source}")]
    Connect {
        /// The peer's HBONE address (normally port 15008).
        addr: SocketAddr,
        /// The operating system's (or quinn's) error.
        #[source]
        source: Cause,
    },

    /// The TLS handshake failed; `identity` is set when a SPIFFE rule rejected the certificate
    /// (for example [`meshd_identity::Error::IdentityMismatch`] when the server is not who the
    /// client expected).
    #[error("tls error with {addr}: {}", tls_reason(.identity.as_ref(), .source))]
    Tls {
        /// The remote address of the failed handshake.
        addr: SocketAddr,
        /// The exact certificate rejection, when the failure was one.
        identity: Option<meshd_identity::Error>,
        /// The handshake's error (rustls' through the socket, or quinn's).
        #[source]
        source: Cause,
    },

    /// The HTTP/2 (or HTTP/3) connection preface/SETTINGS exchange failed.
    #[error("http2 handshake with {addr} failed: {source}")]
    Http2Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// h2's (or h3's) error.
        #[source]
        source: Cause,
    },

    /// An HTTP/2 protocol or stream error after the handshake.
    #[error("h2 failed: {0}")]
    H2(#[source] Cause),

    /// An HTTP/3 protocol or stream error after the handshake.
    #[error("h3 failed: {0}")]
    H3(#[source] Cause),

    /// The connection closed while it was being set up (before its first PING answer).
    #[error("the connection closed during setup")]
    ClosedDuringSetup,

    /// The client reset the CONNECT before the service answered it.
    #[error("the client reset the CONNECT before it was answered")]
    ClientReset,

    /// The peer answered the CONNECT with a status other than 200; the tunnel was not opened.
    #[error("http status: {0}")]
    HttpStatus(StatusCode),

    /// An operation did not finish in time.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// Which step: "tcp connect", "tls handshake", "http2 handshake", "keepalive", ...
        what: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },

    /// The server already holds `max_connections` authenticated connections; this one was
    /// closed after its TLS handshake.
    #[error("connection limit of {limit} authenticated connections reached")]
    ConnectionLimit {
        /// The server's `max_connections`.
        limit: usize,
    },

    /// The connection pool could not provide a connection (for example every pooled connection
    /// went away while the request waited).
    #[error("pool: {0}")]
    Pool(String),

    /// A local socket operation failed outside a handshake (binding, reading the bound
    /// address).
    #[error("{what} failed: {source}")]
    Io {
        /// Which operation.
        what: &'static str,
        /// The operating system's error.
        #[source]
        source: Cause,
    },

    /// A setting or argument is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The TLS configuration could not be turned into a QUIC one (it lacks TLS 1.3 or an
    /// initial cipher suite QUIC needs).
    #[error("cannot configure QUIC: {0}")]
    QuicConfig(#[source] Cause),

    /// The CONNECT request could not be built.
    #[error("cannot build the CONNECT request: {0}")]
    Request(#[source] Cause),

    /// The requested transport is not compiled in (HBONE over QUIC needs the `quic` feature).
    /// The connection is refused: it never falls back to another transport.
    #[error(
        "transport {0} is not in this build: HBONE over QUIC needs meshd built with `--features quic`"
    )]
    TransportUnavailable(&'static str),
}

/// A TLS failure for a log line: meshd's own rejection in words when there is one (rustls
/// prints the error it carries with `Debug`, which reads as a type dump: an operator needs
/// "trust domain td-b is not trusted", not `UntrustedTrustDomain { .. }`), else the handshake's.
fn tls_reason(identity: Option<&meshd_identity::Error>, source: &Cause) -> String {
    match identity {
        Some(rejection) => format!("peer certificate rejected: {rejection}"),
        None => source.to_string(),
    }
}

impl Error {
    /// The error a failed client or server TLS handshake on `addr` maps to.
    pub(crate) fn tls(addr: SocketAddr, err: io::Error) -> Error {
        Error::Tls {
            addr,
            identity: meshd_identity::Error::from_io(&err),
            source: Cause::new(err),
        }
    }

    /// Wraps an h2 error that happened on an established connection or stream.
    pub(crate) fn h2(err: h2::Error) -> Error {
        Error::H2(Cause::new(err))
    }

    /// A local socket operation `what` failed with `err`.
    pub(crate) fn io(what: &'static str, err: io::Error) -> Error {
        Error::Io {
            what,
            source: Cause::new(err),
        }
    }

    /// The HTTP status of a refused CONNECT, if this is one.
    pub fn http_status(&self) -> Option<StatusCode> {
        match self {
            Error::HttpStatus(status) => Some(*status),
            _ => None,
        }
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        let kind = match &err {
            Error::Timeout { .. } => io::ErrorKind::TimedOut,
            Error::Connect { .. } => io::ErrorKind::ConnectionRefused,
            Error::HttpStatus(_) => io::ErrorKind::ConnectionRefused,
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, err)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn causes_are_kept_as_sources() {
        // A refused connect shows the OS error in its message and keeps it as its source.
        let addr: SocketAddr = ([127, 0, 0, 1], 15008).into();
        let os = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
        let err = Error::Connect {
            addr,
            source: Cause::new(os),
        };
        assert_eq!(
            err.to_string(),
            "connection to 127.0.0.1:15008 failed: connection refused"
        );
        let source = err.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("connection refused"));
        let Error::Connect { source, .. } = &err else {
            unreachable!("built above");
        };
        let kind = source
            .get_ref()
            .downcast_ref::<io::Error>()
            .map(io::Error::kind);
        assert_eq!(kind, Some(io::ErrorKind::ConnectionRefused));
        // Through io::Error (what a tunnel's caller sees) the chain is still there.
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
        let inner = io
            .get_ref()
            .and_then(|e| e.source())
            .map(ToString::to_string);
        assert_eq!(inner.as_deref(), Some("connection refused"));
    }
}
