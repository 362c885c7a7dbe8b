//! One TLS connection to istiod carrying gRPC: server verified against the configured root and
//! host name (which may differ from the address dialled), h2 only, and the per-call headers
//! (`authorization: Bearer`, `clusterid`) read fresh at each connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use meshd_identity::Credentials;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::Error;
use crate::settings::{ControlPlaneSettings, Target};

/// TCP connect and TLS handshake bound, as ztunnel's control-plane connector (5 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// h2 PING every 30 s, dead after 10 s without an answer (ztunnel's control-plane client).
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token file read: a Kubernetes JWT is a few KiB.
const MAX_TOKEN: u64 = 64 * 1024;

/// Builds a channel to `target` presenting `client` (if any) as the TLS client certificate.
/// The root file is read now, so a rotated root is used by the next connection.
pub(crate) async fn channel(
    target: &Target,
    root_cert: &Path,
    client: Option<&Credentials>,
) -> Result<Channel, Error> {
    let tls = Arc::new(client_config(root_cert, client)?);
    let server_name =
        ServerName::try_from(target.server_name.clone()).map_err(|e| Error::Connect {
            address: target.dial.clone(),
            reason: format!("server name {:?}: {e}", target.server_name),
        })?;
    let dial = target.dial.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let (tls, name, dial) = (tls.clone(), server_name.clone(), dial.clone());
        async move { connect(tls, name, &dial).await.map(TokioIo::new) }
    });
    // The URI only names the :authority; the connector decides where to dial.
    let uri = format!("http://{}", target.server_name);
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| Error::Connect {
            address: target.dial.clone(),
            reason: e.to_string(),
        })?
        .http2_keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_timeout(CONNECT_TIMEOUT);
    endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| Error::Connect {
            address: target.dial.clone(),
            reason: chain(&e),
        })
}

async fn connect(
    tls: Arc<ClientConfig>,
    name: ServerName<'static>,
    dial: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, std::io::Error> {
    let work = async {
        let tcp = TcpStream::connect(dial).await?;
        tcp.set_nodelay(true)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(std::io::Error::other("istiod did not negotiate ALPN h2"));
        }
        Ok(stream)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

fn client_config(root_cert: &Path, client: Option<&Credentials>) -> Result<ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for cert in meshd_identity::pem::read_certificates(root_cert)? {
        roots.add(cert).map_err(|e| Error::Bundle {
            file: root_cert.to_path_buf(),
            line: 0,
            key: "certificate".into(),
            reason: e.to_string(),
        })?;
    }
    let builder = ClientConfig::builder_with_provider(meshd_identity::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Error::Connect {
            address: String::new(),
            reason: e.to_string(),
        })?
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain().to_vec(), c.private_key().clone_key())
            .map_err(|e| Error::Connect {
                address: String::new(),
                reason: format!("client certificate: {e}"),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The headers of one call: `clusterid` always, `authorization: Bearer` when `with_token`.
pub(crate) fn call_metadata(
    settings: &ControlPlaneSettings,
    with_token: bool,
) -> Result<MetadataMap, Error> {
    let mut md = MetadataMap::new();
    let cluster =
        MetadataValue::try_from(settings.cluster_id.as_str()).map_err(|_| Error::Settings {
            field: "clusterId",
            reason: "not a valid header value".into(),
        })?;
    md.insert("clusterid", cluster);
    if with_token {
        let file = settings
            .token_file
            .as_deref()
            .ok_or_else(|| Error::NoCredential(settings.address.clone()))?;
        let token = read_token(file)?;
        let value =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| Error::Token {
                file: file.to_path_buf(),
                reason: "not a valid header value".into(),
            })?;
        md.insert("authorization", value);
    }
    Ok(md)
}

/// The token, trimmed; absent, empty or oversized is an error naming the file.
pub(crate) fn read_token(file: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(file).map_err(|e| Error::Token {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    if meta.len() > MAX_TOKEN {
        return Err(Error::Token {
            file: file.to_path_buf(),
            reason: format!("larger than {MAX_TOKEN} bytes"),
        });
    }
    let text = std::fs::read_to_string(file).map_err(|e| Error::Token {
        file: file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(Error::Token {
            file: file.to_path_buf(),
            reason: "is empty".into(),
        });
    }
    Ok(token.to_string())
}

/// An error and its causes on one line (tonic's transport errors hide the cause otherwise).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        cur = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_rejections() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        assert!(matches!(read_token(&missing), Err(Error::Token { .. })));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        match read_token(&empty) {
            Err(Error::Token { file, reason }) => {
                assert_eq!(file, empty);
                assert_eq!(reason, "is empty");
            }
            r => panic!("{r:?}"),
        }
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'a'; MAX_TOKEN as usize + 1]).unwrap();
        assert!(
            read_token(&big)
                .unwrap_err()
                .to_string()
                .contains("larger than")
        );
        let ok = dir.path().join("ok");
        std::fs::write(&ok, "eyJ.x.y").unwrap();
        assert_eq!(read_token(&ok).unwrap(), "eyJ.x.y");
        // A token that cannot be a header value is refused, not sent mangled.
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "a\u{1}b").unwrap();
        let mut s = ControlPlaneSettings::new("/r.pem", "a", "b");
        s.token_file = Some(bad);
        assert!(matches!(call_metadata(&s, true), Err(Error::Token { .. })));
        s.token_file = Some(ok);
        let md = call_metadata(&s, true).unwrap();
        assert_eq!(md.get("authorization").unwrap(), "Bearer eyJ.x.y");
        assert_eq!(md.get("clusterid").unwrap(), "Kubernetes");
    }
}
