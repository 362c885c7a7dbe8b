//! The workload certificate from the Istio CA, renewed over mutual TLS and persisted.
//!
//! The first certificate is asked for with the bearer token (a VM's token from istioctl lives
//! one hour); every renewal authenticates with the current certificate instead (istiod's
//! `ClientCertAuthenticator`), so the VM stays in the mesh after the token expires, and the
//! key, chain and root are written to `certDir` atomically so a restart does too. ztunnel never
//! renews by mTLS; pilot-agent on a VM does, and so does this module.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshd_identity::dev_ca::write_atomic;
use meshd_identity::{Credentials, ISTIO_CERT_CHAIN_FILE, ISTIO_KEY_FILE, ISTIO_ROOT_CERT_FILE};
use meshd_identity::{IdentitySource, IstioCaSource, SpiffeId};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::proto::istio::v1::auth::IstioCertificateRequest;
use crate::proto::istio::v1::auth::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::settings::ControlPlaneSettings;
use crate::{Error, backoff::Backoff, transport};

/// Renewal retry: from 0.5 s doubling to 150 s, ztunnel's CA client backoff.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(150);
/// How far Istio's CA backdates `notBefore` (`ClockSkewGracePeriod`,
/// security/pkg/pki/util/generate_cert.go).
pub const CLOCK_SKEW_GRACE: Duration = Duration::from_secs(120);
/// Shortest wait between two successful renewals, whatever a CA's backdating: no hot loop.
const MIN_RENEW_GAP: Duration = Duration::from_secs(1);
/// A persisted certificate with less than this left is not worth starting with.
const MIN_REMAINING: Duration = Duration::from_secs(60);

/// How a CreateCertificate call authenticates.
#[derive(Debug)]
pub enum Auth<'a> {
    /// `authorization: Bearer <token file>` (the first certificate).
    Token,
    /// Mutual TLS with the current certificate (renewal; no token needed).
    Certificate(&'a Credentials),
}

/// A certificate the CA issued, checked and ready to persist.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Leaf then intermediates, PEM.
    pub chain_pem: String,
    /// The new private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The mesh roots, PEM.
    pub root_pem: String,
    /// The parsed leaf and key.
    pub credentials: Credentials,
}

/// What the operator sees of the CA client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaStatus {
    /// Expiry of the certificate in use.
    pub not_after: Option<OffsetDateTime>,
    /// When the certificate in use was issued (by this process) or loaded.
    pub since: Option<OffsetDateTime>,
    /// How the last issuance authenticated (`token` or `mtls`), or `persisted`.
    pub source: String,
    /// The last failure, until the next success.
    pub last_error: Option<String>,
}

/// A client of the Istio CA for one identity.
#[derive(Debug, Clone)]
pub struct CaClient {
    settings: ControlPlaneSettings,
    expected: SpiffeId,
}

impl CaClient {
    /// A client for the identity `settings` names.
    pub fn new(settings: ControlPlaneSettings) -> Result<Self, Error> {
        settings.validate()?;
        let expected = settings.spiffe_id()?;
        Ok(CaClient { settings, expected })
    }

    /// The identity the CA must issue.
    pub fn expected(&self) -> &SpiffeId {
        &self.expected
    }

    /// The identity source that loads what this client persists.
    pub fn identity_source(&self) -> IdentitySource {
        IdentitySource::IstioCa(IstioCaSource {
            cert_dir: self.settings.cert_dir.clone(),
            spiffe_id: Some(self.expected.clone()),
        })
    }

    /// One CreateCertificate: new P-256 key, CSR with the SPIFFE ID as URI SAN, validity
    /// `ttl`; the returned leaf must carry exactly the expected ID.
    pub async fn issue(&self, auth: Auth<'_>) -> Result<Issued, Error> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(Error::Csr)?;
        let mut params = CertificateParams::default();
        let san = self.expected.to_string().try_into().map_err(Error::Csr)?;
        params.subject_alt_names = vec![SanType::URI(san)];
        let csr = params.serialize_request(&key).map_err(Error::Csr)?;
        let csr = csr.pem().map_err(Error::Csr)?;

        let (client_cert, with_token) = match auth {
            Auth::Token => (None, true),
            Auth::Certificate(c) => (Some(c), false),
        };
        let target = self.settings.ca_target()?;
        let md = transport::call_metadata(&self.settings, with_token)?;
        let channel = transport::channel(&target, &self.settings.root_cert, client_cert).await?;
        let mut client = IstioCertificateServiceClient::new(channel);
        let request = IstioCertificateRequest {
            csr,
            validity_duration: i64::try_from(self.settings.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: None,
        };
        let mut req = tonic::Request::new(request);
        *req.metadata_mut() = md;
        let resp = client
            .create_certificate(req)
            .await
            .map_err(|s| Error::grpc("CreateCertificate", s))?
            .into_inner();
        self.accept(resp.cert_chain, key.serialize_pem())
    }

    /// Checks a CreateCertificate answer: `[leaf, intermediates..., root]`, each PEM.
    fn accept(&self, chain: Vec<String>, key_pem: String) -> Result<Issued, Error> {
        let (root_pem, chain_pem) = match chain.as_slice() {
            [] => return Err(Error::CaResponse("empty certificate chain".into())),
            [leaf] => {
                let root = std::fs::read_to_string(&self.settings.root_cert)
                    .map_err(|e| Error::io(&self.settings.root_cert, e))?;
                (root, leaf.clone())
            }
            [certs @ .., root] => (root.clone(), certs.iter().map(|c| pem_line(c)).collect()),
        };
        let credentials = Credentials::from_pem(chain_pem.as_bytes(), key_pem.as_bytes()).map_err(
            |e| match e {
                meshd_identity::Error::MultipleUriSans { .. }
                | meshd_identity::Error::NoUriSan
                | meshd_identity::Error::NotSpiffeUri { .. } => Error::SanMismatch {
                    want: self.expected.to_string(),
                    got: e.to_string(),
                },
                other => Error::Identity(other),
            },
        )?;
        if credentials.id() != &self.expected {
            return Err(Error::SanMismatch {
                want: self.expected.to_string(),
                got: credentials.id().to_string(),
            });
        }
        meshd_identity::pem::parse_certificates(root_pem.as_bytes())
            .map_err(|e| Error::CaResponse(format!("root: {e}")))?;
        Ok(Issued {
            chain_pem,
            key_pem,
            root_pem: pem_line(&root_pem),
            credentials,
        })
    }

    /// Writes key, root then chain atomically (each a temporary file renamed over the old):
    /// the chain last, so a watcher that sees the new chain finds its key already there.
    pub fn persist(&self, issued: &Issued) -> Result<(), Error> {
        let dir = &self.settings.cert_dir;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        write_atomic(&dir.join(ISTIO_KEY_FILE), issued.key_pem.as_bytes(), 0o600)?;
        write_atomic(
            &dir.join(ISTIO_ROOT_CERT_FILE),
            issued.root_pem.as_bytes(),
            0o644,
        )?;
        write_atomic(
            &dir.join(ISTIO_CERT_CHAIN_FILE),
            issued.chain_pem.as_bytes(),
            0o644,
        )?;
        Ok(())
    }

    /// The persisted certificate, if it is this identity's and not about to expire.
    pub fn load_persisted(&self) -> Option<Credentials> {
        let dir = &self.settings.cert_dir;
        let read = |f: &str| std::fs::read(dir.join(f)).ok();
        let creds = Credentials::from_pem(&read(ISTIO_CERT_CHAIN_FILE)?, &read(ISTIO_KEY_FILE)?)
            .map_err(
                |e| tracing::warn!(dir = %dir.display(), "persisted certificate unusable: {e}"),
            )
            .ok()?;
        read(ISTIO_ROOT_CERT_FILE)?;
        let left = creds.not_after() - OffsetDateTime::now_utc();
        (creds.id() == &self.expected && left > MIN_REMAINING).then_some(creds)
    }

    /// A usable certificate in `certDir`: the persisted one if still valid, else a new one
    /// asked for with the token. Returns the credentials now on disk.
    pub async fn bootstrap(&self) -> Result<(Credentials, &'static str), Error> {
        if let Some(c) = self.load_persisted() {
            return Ok((c, "persisted"));
        }
        let issued = self.issue(Auth::Token).await?;
        self.persist(&issued)?;
        Ok((issued.credentials, "token"))
    }

    /// Renews forever at half-life ([`until_half_life`]) over mTLS with the current certificate; on failure retries
    /// with backoff, keeping the current certificate until it expires, and falls back to the
    /// token once it has (if a token file is configured). Never returns.
    pub async fn renew_forever(self, mut current: Credentials, status: watch::Sender<CaStatus>) {
        let mut retry = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut gap = Duration::ZERO;
        loop {
            tokio::time::sleep(until_half_life(&current).max(gap)).await;
            gap = MIN_RENEW_GAP;
            loop {
                let expired = current.not_after() <= OffsetDateTime::now_utc();
                let result = if expired && self.settings.token_file.is_some() {
                    self.issue(Auth::Token).await.map(|i| (i, "token"))
                } else {
                    self.issue(Auth::Certificate(&current))
                        .await
                        .map(|i| (i, "mtls"))
                };
                match result.and_then(|(i, how)| self.persist(&i).map(|()| (i, how))) {
                    Ok((issued, how)) => {
                        tracing::info!(id = %self.expected, not_after = %issued.credentials.not_after(), how, "Istio CA certificate renewed");
                        current = issued.credentials;
                        retry.reset();
                        status.send_replace(CaStatus {
                            not_after: Some(current.not_after()),
                            since: Some(OffsetDateTime::now_utc()),
                            source: how.to_string(),
                            last_error: None,
                        });
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(id = %self.expected, expired, "Istio CA renewal failed: {e}");
                        status.send_modify(|s| s.last_error = Some(e.to_string()));
                        tokio::time::sleep(retry.next_delay()).await;
                    }
                }
            }
        }
    }

    /// The certificate directory.
    pub fn cert_dir(&self) -> &Path {
        &self.settings.cert_dir
    }

    /// The settings.
    pub fn settings(&self) -> &ControlPlaneSettings {
        &self.settings
    }
}

/// Time until half of the certificate's lifetime has passed (zero if it has). The lifetime is
/// counted from `notBefore` plus Istio's backdating ([`CLOCK_SKEW_GRACE`]), i.e. from when the
/// CA issued it: counted from `notBefore` itself, a certificate of a few seconds would be past
/// half-life on arrival and renewed in a loop. A persisted certificate loaded at start that is
/// already past half-life is renewed at once.
pub fn until_half_life(c: &Credentials) -> Duration {
    let start = (c.not_before() + CLOCK_SKEW_GRACE).min(c.not_after());
    let at = start + (c.not_after() - start) / 2;
    Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
}

fn pem_line(pem: &str) -> String {
    let mut s = pem.trim_end().to_string();
    s.push('\n');
    s
}

/// Paths of the persisted files, for status pages.
pub fn persisted_files(cert_dir: &Path) -> [PathBuf; 3] {
    [
        cert_dir.join(ISTIO_CERT_CHAIN_FILE),
        cert_dir.join(ISTIO_KEY_FILE),
        cert_dir.join(ISTIO_ROOT_CERT_FILE),
    ]
}

#[cfg(test)]
#[path = "ca_tests.rs"]
mod tests;
