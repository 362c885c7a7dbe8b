//! The fuzzing seam (feature `fuzzing`): one authenticated connection served over any
//! transport, from the HTTP/2 handshake on, by the same code as a TLS connection.
//!
//! A full TLS 1.3 handshake per fuzz input (about 2 ms, `benches/handshake.rs`) would cap a
//! fuzzer at a few hundred inputs a second and spend them on aws-lc's signatures rather than on
//! meshd's parsing. Past the handshake, TLS only carries bytes: the HTTP/2 settings, the stream
//! loop, the CONNECT checks (authority, open-relay guard), the header parsing (`forwarded`,
//! `traceparent`, `baggage`), the caller's service and the tunnel are all the server's own
//! code, reached here with the peer identity a handshake would have verified.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::Server;
use super::http2::{h2_builder, serve_http2};
use super::lifecycle::Phase;
use crate::Error;
use crate::peer::Transport;
use crate::request::ConnectionInfo;
use crate::revoke::PeerChain;

impl Server {
    /// Serves one connection whose client presented `peer_chain` (leaf first), as if its TLS
    /// handshake had just completed on `io`. Returns once the connection has ended; the
    /// caller's service and tunnels run as they would for a real connection.
    #[doc(hidden)]
    pub async fn serve_authenticated<IO>(
        &self,
        io: IO,
        peer_chain: &[CertificateDer<'static>],
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
    ) -> Result<(), Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let leaf = peer_chain
            .first()
            .ok_or(Error::Identity(meshd_identity::Error::NoPeerCertificate))?;
        let peer_identity = meshd_identity::x509::inspect_leaf(leaf)?.id;
        let conn = h2_builder(&self.settings)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| Error::Http2Handshake {
                addr: peer_addr,
                source: crate::Cause::new(e),
            })?;
        let info = Arc::new(ConnectionInfo {
            peer_identity,
            peer_addr,
            local_addr,
            local_identity: self.identity.current().id().clone(),
            transport: Transport::H2,
            observer: Arc::clone(&self.observer),
        });
        // The sender lives for the whole connection: a dropped one reads as a forced stop.
        let (_phase, phase) = watch::channel(Phase::Running);
        let chain = PeerChain::new(peer_chain, meshd_identity::Purpose::ClientAuth);
        serve_http2(conn, info, chain, self.share(), phase).await;
        Ok(())
    }
}
