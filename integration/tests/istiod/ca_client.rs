//! Just enough of a client for the tests of the istiod harness itself: TLS to its port as a
//! VM would (root-cert.pem, istiod's name, ALPN h2, optionally a client certificate) and one
//! unary gRPC call, `istio.v1.auth.IstioCertificateService/CreateCertificate`, with the
//! request and response messages encoded by hand (two fields each, from Istio's
//! `security/v1alpha1/ca.proto`). meshd's own CA client lives in crates/xds.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// istiod's certificate service path (ca.proto: package istio.v1.auth).
const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// gRPC status UNAUTHENTICATED.
pub const UNAUTHENTICATED: u32 = 16;

/// A client certificate chain and key, PEM.
pub struct ClientIdentity {
    pub chain_pem: String,
    pub key_pem: String,
}

/// TLS client settings trusting `root_pem`, offering h2, with an optional client certificate.
pub fn tls_config(root_pem: &str, client: Option<&ClientIdentity>) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(root_pem) {
        roots.add(cert).expect("root certificate");
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(certs(&id.chain_pem), key(&id.key_pem))
            .expect("client certificate"),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// Connects with TLS to `addr`, verifying the server as `name`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    config: rustls::ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_string()).expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// Why a call gave no certificate.
#[derive(Debug)]
pub enum Refused {
    /// istiod answered with this gRPC status (code, message).
    Status(u32, String),
    /// The connection failed under the call (e.g. a TLS alert for a client certificate).
    Transport(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Status(code, message) => write!(f, "gRPC status {code}: {message}"),
            Refused::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

/// The outcome of a call: the certificate chain, or why there is none.
pub type CallResult = Result<Vec<String>, Refused>;

fn transport(e: impl std::fmt::Display) -> Refused {
    Refused::Transport(e.to_string())
}

/// Sends `CreateCertificate{csr, validity_duration}` with the optional bearer token and the
/// `clusterid` header, as ztunnel's CA client does.
pub async fn create_certificate(
    tls: TlsStream<TcpStream>,
    token: Option<&str>,
    cluster_id: &str,
    csr_pem: &str,
    validity_secs: i64,
) -> CallResult {
    let (client, connection) = h2::client::handshake(tls).await.map_err(transport)?;
    tokio::spawn(connection);
    let mut client = client.ready().await.map_err(transport)?;
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://{}{CREATE_CERTIFICATE}",
            "istiod.istio-system.svc"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("clusterid", cluster_id);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = request.body(()).expect("request");
    let (response, mut send) = client.send_request(request, false).map_err(transport)?;
    send.send_data(frame(&encode_request(csr_pem, validity_secs)), true)
        .map_err(transport)?;
    let response = response.await.map_err(transport)?;
    let headers_status = grpc_status(response.headers());
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(transport)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(transport)?;
    let (code, message) = trailers
        .as_ref()
        .and_then(grpc_status)
        .or(headers_status)
        .ok_or_else(|| transport("no grpc-status in the trailers or headers"))?;
    if code != 0 {
        return Err(Refused::Status(code, message));
    }
    let mut data = data.freeze();
    // One message: compressed flag, 4-byte length, the message.
    if data.len() < 5 {
        return Err(transport("no gRPC message in the response"));
    }
    data.advance(1);
    let len = data.get_u32() as usize;
    Ok(decode_chain(data.slice(..len)))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(u32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

/// A gRPC length-prefixed message frame (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// IstioCertificateRequest: `string csr = 1; int64 validity_duration = 2;`.
fn encode_request(csr: &str, validity_secs: i64) -> Vec<u8> {
    let mut out = vec![0x0a];
    put_varint(&mut out, csr.len() as u64);
    out.extend_from_slice(csr.as_bytes());
    out.push(0x10);
    put_varint(&mut out, validity_secs as u64);
    out
}

/// IstioCertificateResponse: `repeated string cert_chain = 1;` (other fields skipped).
fn decode_chain(mut message: Bytes) -> Vec<String> {
    let mut chain = Vec::new();
    while message.has_remaining() {
        let tag = get_varint(&mut message);
        match tag & 7 {
            0 => {
                get_varint(&mut message);
            }
            2 => {
                let len = get_varint(&mut message) as usize;
                let bytes = message.split_to(len);
                if tag >> 3 == 1 {
                    chain.push(String::from_utf8(bytes.to_vec()).expect("PEM text"));
                }
            }
            other => panic!("unexpected wire type {other} in IstioCertificateResponse"),
        }
    }
    chain
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(buf: &mut Bytes) -> u64 {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = buf.get_u8();
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            break;
        }
    }
    v
}

/// A P-256 key and a CSR for it naming `san_uri` (which istiod's CA ignores: the SAN it
/// signs is the caller's authenticated identity); (CSR PEM, key PEM).
pub fn csr(san_uri: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        san_uri.to_string().try_into().expect("URI"),
    )];
    let csr = params.serialize_request(&key).expect("CSR");
    (csr.pem().expect("CSR PEM"), key.serialize_pem())
}

/// The URI SANs of the first certificate of a PEM chain.
pub fn uri_sans(chain_pem: &str) -> Vec<String> {
    let der = certs(chain_pem).into_iter().next().expect("a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("X.509");
    let san = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// The DNS SANs of the first certificate of a DER chain.
pub fn dns_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("X.509");
    let san = cert
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("a SAN");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

pub fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

fn key(pem: &str) -> PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("PEM key")
}
