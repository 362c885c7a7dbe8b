//! The outbound (HBONE client) side: the server must prove exactly the expected SPIFFE ID.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::{ALPN_H2, crypto_provider, supported_schemes, verify_tls12, verify_tls13};
use crate::bundle::Purpose;
use crate::{Error, IdentityHandle, SpiffeId};

/// Builds an HBONE client config that presents the current local SVID and accepts only a
/// server whose SVID chains to the bundle of its trust domain and whose single URI SAN equals
/// `expected_peer`. TLS 1.3 only, ALPN `h2`, no SNI, no resumption.
///
/// The expected identity differs per destination, so callers cache one config per peer
/// identity (e.g. alongside the connection pool key). Dial with
/// [`placeholder_server_name`](super::placeholder_server_name): the name is never checked.
pub fn client_config(
    identity: &IdentityHandle,
    expected_peer: &SpiffeId,
) -> Result<Arc<ClientConfig>, Error> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::TlsConfig {
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            identity: identity.clone(),
            expected: expected_peer.clone(),
        }))
        .with_client_cert_resolver(Arc::new(CurrentClientCert {
            identity: identity.clone(),
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // SNI would leak the placeholder name and means nothing to an HBONE server.
    config.enable_sni = false;
    // A resumed session skips certificate verification, which would let a tunnel outlive a
    // bundle rotation; ztunnel turns resumption off for the same reason.
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Presents whatever SVID is current at handshake time.
#[derive(Debug)]
struct CurrentClientCert {
    identity: IdentityHandle,
}

impl ResolvesClientCert for CurrentClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.identity.current().credentials().certified_key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Chain to the trust anchors of the server's trust domain (serverAuth EKU), ignore the
/// `ServerName`, then require the expected SPIFFE ID.
#[derive(Debug)]
struct SpiffeServerVerifier {
    identity: IdentityHandle,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let set = self.identity.current();
        let info = set
            .bundle()
            .verify(end_entity, intermediates, now, Purpose::ServerAuth)
            .map_err(Error::into_rustls)?;
        if info.id != self.expected {
            return Err(Error::IdentityMismatch {
                expected: self.expected.to_string(),
                found: info.id.to_string(),
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        supported_schemes()
    }
}
