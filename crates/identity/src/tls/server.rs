//! The inbound (HBONE server) side: client certificate required and checked per trust domain.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, UnixTime};

use super::{ALPN_H2, crypto_provider, supported_schemes, verify_tls12, verify_tls13};
use crate::bundle::Purpose;
use crate::{Error, IdentityHandle};

/// Builds the HBONE server config: TLS 1.3 only, ALPN `h2`, a client SVID required and
/// verified against the bundle of the client's own trust domain (so only trust domains in the
/// bundle are accepted: the local one, plus federated ones when configured), no resumption.
///
/// The certificate and bundle are read from `identity` on every handshake, so a rotation
/// applies to new connections without rebuilding the config.
pub fn server_config(identity: &IdentityHandle) -> Result<Arc<ServerConfig>, Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::TlsConfig {
            reason: e.to_string(),
        })?
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
            identity: identity.clone(),
        }))
        .with_cert_resolver(Arc::new(CurrentServerCert {
            identity: identity.clone(),
        }));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    // Resumption would skip the client-certificate check on later connections and outlive a
    // rotation; HBONE connections are pooled and long-lived, so a full handshake costs little.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// Presents whatever SVID is current at handshake time.
#[derive(Debug)]
struct CurrentServerCert {
    identity: IdentityHandle,
}

impl ResolvesServerCert for CurrentServerCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.identity.current().credentials().certified_key())
    }
}

/// rustls' `WebPkiClientVerifier` (chain + clientAuth EKU) chosen by the client's trust domain,
/// after the SVID shape checks; the ztunnel `TrustDomainVerifier` idea, with per-domain roots.
#[derive(Debug)]
struct SpiffeClientVerifier {
    identity: IdentityHandle,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to borrow from the bundle current at config time; SVID clients
        // present their one certificate regardless, so none are sent.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let set = self.identity.current();
        set.bundle()
            .verify(end_entity, intermediates, now, Purpose::ClientAuth)
            .map_err(Error::into_rustls)?;
        Ok(ClientCertVerified::assertion())
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
