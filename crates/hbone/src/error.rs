//! The crate's single error type.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

/// Everything that can go wrong opening, serving or using an HBONE tunnel.
///
/// Variants carry strings rather than the source errors of h2/quinn/rustls so the enum stays
/// `Clone + PartialEq` and tests can assert the exact failure; the certificate rejection is kept
/// typed in [`Error::Tls`] because callers act on it (metrics flag `TLS_FAILURE` vs
/// `IDENTITY_ERROR` in ztunnel terms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Building TLS configuration from the local identity failed.
    #[error("identity error: {0}")]
    Identity(#[from] meshd_identity::Error),

    /// Opening the TCP (or UDP) connection to the peer failed.
    #[error("connection to {addr} failed: {reason}")]
    Connect {
        /// The peer's HBONE address (normally port 15008).
        addr: SocketAddr,
        /// The operating system's message.
        reason: String,
    },

    /// The TLS handshake failed; `identity` is set when a SPIFFE rule rejected the certificate
    /// (for example [`meshd_identity::Error::IdentityMismatch`] when the server is not who the
    /// client expected).
    #[error("tls error with {addr}: {reason}")]
    Tls {
        /// The remote address of the failed handshake.
        addr: SocketAddr,
        /// The exact certificate rejection, when the failure was one.
        identity: Option<meshd_identity::Error>,
        /// Human-readable cause.
        reason: String,
    },

    /// The HTTP/2 (or HTTP/3) connection preface/SETTINGS exchange failed.
    #[error("http2 handshake with {addr} failed: {reason}")]
    Http2Handshake {
        /// The peer address.
        addr: SocketAddr,
        /// h2's message.
        reason: String,
    },

    /// An HTTP/2 (or HTTP/3) protocol or stream error after the handshake.
    #[error("h2 failed: {0}")]
    H2(String),

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

    /// A local socket or I/O error outside a handshake (binding, accepting).
    #[error("i/o error: {0}")]
    Io(String),

    /// A setting or argument is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The requested transport is not compiled in (HBONE over QUIC needs the `quic` feature).
    #[error("transport {0} is not available in this build")]
    TransportUnavailable(&'static str),
}

impl Error {
    /// The error a failed client or server TLS handshake on `addr` maps to.
    pub(crate) fn tls(addr: SocketAddr, err: &io::Error) -> Error {
        Error::Tls {
            addr,
            identity: meshd_identity::Error::from_io(err),
            reason: err.to_string(),
        }
    }

    /// Wraps an h2 error that happened on an established connection or stream.
    pub(crate) fn h2(err: &h2::Error) -> Error {
        Error::H2(err.to_string())
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
