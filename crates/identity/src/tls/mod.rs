//! rustls configurations for HBONE's mutual TLS, with SPIFFE verification on both sides.
//!
//! One crypto provider, built here and passed explicitly to every config; the process-wide
//! default is never installed, so another crate's choice cannot change meshd's policy.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::cipher_suite::{TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384};
use rustls::{CommonState, SignatureScheme};
use rustls_pki_types::ServerName;

use crate::x509::inspect_leaf;
use crate::{Error, SpiffeId};

mod client;
mod server;

/// The rustls this crate is built on, so dependents name the same version's types.
pub use rustls;

pub use client::client_config;
pub use server::server_config;

/// The ALPN protocol HBONE speaks over the mTLS connection.
pub const ALPN_H2: &[u8] = b"h2";

/// The rustls crypto provider [`crypto_provider`] builds on, by name (`meshd --version`).
pub const CRYPTO_PROVIDER: &str = "aws-lc-rs";

/// The shared crypto provider: aws-lc-rs, TLS 1.3 suites AES-256-GCM and AES-128-GCM only (as
/// ztunnel: no ChaCha20), and aws-lc-rs' default key-exchange groups, which include the hybrid
/// post-quantum X25519MLKEM768 that a ztunnel in `COMPLIANCE_POLICY=pqc` mode insists on.
///
/// The first call also seeds aws-lc's random generator (see [`warm_up`]), so that cost falls
/// on whoever builds the first TLS config (meshd's start-up), not on the first handshake.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(CryptoProvider {
                cipher_suites: vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256],
                ..rustls::crypto::aws_lc_rs::default_provider()
            });
            warm_up(&provider);
            provider
        })
        .clone()
}

/// Seeds aws-lc's process-wide random generator. Its first use gathers CPU-jitter entropy,
/// about 50 ms of one core on the benchmark machines; every later use, on any thread, takes
/// microseconds. Unseeded, the first handshake on each side paid it: the first connection after
/// a fresh start took 120–160 ms instead of a few (benches/e2e, `first connection`).
fn warm_up(provider: &CryptoProvider) {
    let mut scratch = [0u8; 32];
    if provider.secure_random.fill(&mut scratch).is_err() {
        // Not fatal here: the handshake that needs randomness reports the failure itself.
        tracing::warn!("the random generator failed its first use; TLS handshakes may fail");
    }
}

/// The `ServerName` to dial with: SPIFFE forbids DNS-name checks and SNI is off, so this value
/// never leaves the process (ztunnel likewise passes a dummy IP).
pub fn placeholder_server_name() -> ServerName<'static> {
    ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
}

/// Runs the client handshake on `io` (TCP or any byte stream) with a [`client_config`].
///
/// On failure, [`Error::from_io`] recovers which rule rejected the server.
pub async fn connect<IO>(
    config: Arc<rustls::ClientConfig>,
    io: IO,
) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio_rustls::TlsConnector::from(config)
        .connect(placeholder_server_name(), io)
        .await
}

/// Runs the server handshake on `io` with a [`server_config`].
///
/// On failure, [`Error::from_io`] recovers which rule rejected the client.
pub async fn accept<IO>(
    config: Arc<rustls::ServerConfig>,
    io: IO,
) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio_rustls::TlsAcceptor::from(config).accept(io).await
}

/// The peer's SPIFFE ID after a completed handshake (pass a `ServerConnection`,
/// `ClientConnection`, or `tls_stream.get_ref().1`).
///
/// The verifiers have already checked the chain; this re-reads the leaf under the same
/// exactly-one-URI-SAN rule so RBAC sees the identity the verifier accepted.
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, Error> {
    let leaf = conn
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or(Error::NoPeerCertificate)?;
    Ok(inspect_leaf(leaf)?.id)
}

/// The signature schemes the provider can verify, for both verifiers.
fn supported_schemes() -> Vec<SignatureScheme> {
    crypto_provider()
        .signature_verification_algorithms
        .supported_schemes()
}

/// Verifies a TLS 1.2 signature: unreachable with TLS 1.3 only, but both verifier traits
/// require it.
fn verify_tls12(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &crypto_provider().signature_verification_algorithms,
    )
}

/// Verifies a TLS 1.3 CertificateVerify; a failure means the peer does not hold the key of the
/// certificate it sent, which gets the same variant as a mismatched key file.
fn verify_tls13(
    message: &[u8],
    cert: &rustls_pki_types::CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &crypto_provider().signature_verification_algorithms,
    )
    .map_err(|e| match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature) => {
            Error::KeyMismatch.into_rustls()
        }
        other => other,
    })
}
