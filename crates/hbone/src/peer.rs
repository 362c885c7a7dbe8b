//! Where a tunnel goes and what carries it: the [`Peer`] a client dials, and the [`Transport`]
//! (HTTP/2 or HTTP/3) of a tunnel, a request or a refusal. A leaf: both sides, the stream and
//! the observer name these without depending on each other.

use std::fmt;
use std::net::SocketAddr;

use meshd_identity::SpiffeId;

/// Which HTTP version carries a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Transport {
    /// HTTP/2 over mTLS over TCP: the ztunnel-compatible default.
    #[default]
    H2,
    /// HTTP/3 over QUIC (experimental, meshd-to-meshd only; needs the `quic` feature).
    H3,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::H2 => "h2",
            Transport::H3 => "h3",
        })
    }
}

/// Where a tunnel goes through: the peer meshd (or ztunnel) and what it must prove.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    /// The SPIFFE ID the peer's certificate must carry (checked during the TLS handshake).
    pub identity: SpiffeId,
    /// The peer's HBONE address, normally `<node ip>:15008`.
    pub addr: SocketAddr,
    /// HTTP/2 (interoperable) or HTTP/3 (experimental, meshd only).
    pub transport: Transport,
}

impl Peer {
    /// An HTTP/2 peer.
    pub fn new(identity: SpiffeId, addr: SocketAddr) -> Peer {
        Peer {
            identity,
            addr,
            transport: Transport::H2,
        }
    }

    /// The same peer over another transport.
    pub fn with_transport(mut self, transport: Transport) -> Peer {
        self.transport = transport;
        self
    }
}
