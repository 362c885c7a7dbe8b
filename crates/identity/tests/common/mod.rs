//! Test PKI made with rcgen, and a loopback mTLS handshake harness.
#![allow(dead_code, clippy::unwrap_used)]

use std::io;
use std::sync::Arc;
use std::time::Duration;

use meshd_identity::{
    CredentialSet, Credentials, IdentityHandle, SpiffeId, TrustBundle, TrustDomain, tls,
};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const TD: &str = "cluster.local";

/// A test root CA.
pub struct Ca {
    pub der: CertificateDer<'static>,
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A root named `name` (distinct names keep webpki's issuer lookup honest).
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one, valid from `not_before` to `not_after`.
    pub fn intermediate(
        &self,
        name: &str,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Ca {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            der: cert.der().clone(),
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn bundle(&self, td: &str) -> TrustBundle {
        TrustBundle::new(TrustDomain::new(td).unwrap(), vec![self.der.clone()]).unwrap()
    }

    /// Signs arbitrary parameters for an arbitrary key; returns the certificate PEM.
    pub fn sign(&self, params: &CertificateParams, key: &KeyPair) -> String {
        params.signed_by(key, &self.issuer).unwrap().pem()
    }

    pub fn issue(&self, spec: &LeafSpec) -> Leaf {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = spec.sans.clone();
        params.is_ca = if spec.is_ca {
            IsCa::Ca(BasicConstraints::Unconstrained)
        } else {
            IsCa::ExplicitNoCa
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }
}

/// What to put in a test leaf.
#[derive(Clone)]
pub struct LeafSpec {
    pub sans: Vec<SanType>,
    pub is_ca: bool,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl LeafSpec {
    /// A well-formed SVID for `id`, valid from an hour ago to an hour ahead.
    pub fn svid(id: &str) -> LeafSpec {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            sans: vec![uri(id)],
            is_ca: false,
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(3600),
        }
    }
}

pub fn uri(s: &str) -> SanType {
    SanType::URI(s.to_string().try_into().unwrap())
}

pub fn dns(s: &str) -> SanType {
    SanType::DnsName(s.to_string().try_into().unwrap())
}

/// An issued leaf.
pub struct Leaf {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
    pub key_der: Vec<u8>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone().into())
    }

    /// The rustls form, built without any of meshd's checks (to present bad certificates).
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified_key_with(&self.key())
    }

    /// This certificate paired with someone else's key.
    pub fn certified_key_with(&self, key: &PrivateKeyDer<'static>) -> Arc<CertifiedKey> {
        let signing = tls::crypto_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .unwrap();
        Arc::new(CertifiedKey::new(vec![self.der.clone()], signing))
    }

    pub fn credentials(&self) -> Credentials {
        Credentials::new(vec![self.der.clone()], self.key()).unwrap()
    }
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::new(s).unwrap()
}

/// A validated identity for `id` issued by `ca`, trusting `ca` for `TD`.
pub fn identity(ca: &Ca, id_str: &str) -> IdentityHandle {
    let leaf = ca.issue(&LeafSpec::svid(id_str));
    let set = CredentialSet::new(leaf.credentials(), ca.bundle(TD), Some(&id(id_str))).unwrap();
    IdentityHandle::fixed(set)
}

/// Always presents one fixed certificate (possibly a bad one).
#[derive(Debug)]
pub struct FixedCert(pub Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for FixedCert {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// What each side of a handshake saw.
pub struct Outcome {
    /// The server's view: the client's identity, or why the handshake failed.
    pub server: Result<SpiffeId, io::Error>,
    /// The client's view: the server's identity and leaf, or why it failed.
    pub client: Result<(SpiffeId, CertificateDer<'static>), io::Error>,
}

impl Outcome {
    /// The meshd error the server reported.
    pub fn server_error(&self) -> Option<meshd_identity::Error> {
        self.server
            .as_ref()
            .err()
            .and_then(meshd_identity::Error::from_io)
    }

    /// The meshd error the client reported.
    pub fn client_error(&self) -> Option<meshd_identity::Error> {
        self.client
            .as_ref()
            .err()
            .and_then(meshd_identity::Error::from_io)
    }
}

/// One full mTLS handshake on loopback plus a one-byte echo, so a server-side rejection of the
/// client certificate (which TLS 1.3 reports after the client finished) shows up on both sides.
pub async fn handshake(
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        // Without it, Nagle + delayed ACK add ~40 ms to the small writes after the handshake.
        tcp.set_nodelay(true)?;
        let mut tls = tls::accept(server, tcp).await?;
        let peer = tls::peer_identity(tls.get_ref().1)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(tls::ALPN_H2));
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        tls.write_all(&byte).await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(peer)
    });
    let client_result = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let mut tls = tls::connect(client, tcp).await?;
        let conn = tls.get_ref().1;
        let peer =
            tls::peer_identity(conn).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let leaf = conn.peer_certificates().unwrap()[0].clone();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        tls.write_all(b"x").await?;
        let mut byte = [0u8; 1];
        tls.read_exact(&mut byte).await?;
        assert_eq!(&byte, b"x");
        Ok::<_, io::Error>((peer, leaf))
    }
    .await;
    let server_result = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side hung")
        .unwrap();
    Outcome {
        server: server_result,
        client: client_result,
    }
}
