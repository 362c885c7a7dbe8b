//! Trust bundles: roots per trust domain, and the SPIFFE-aware chain check both TLS sides use.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::x509::{LeafInfo, check_validity, inspect_leaf};
use crate::{Error, TrustDomain, pem, tls};

/// Which EKU a chain check demands: the peer's role in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The peer is a TLS server (id-kp-serverAuth).
    ServerAuth,
    /// The peer is a TLS client (id-kp-clientAuth).
    ClientAuth,
}

/// Trusted roots, one set per trust domain; a certificate is checked only against the roots of
/// its own trust domain, so federating a domain never lets its CA mint identities in another.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    domains: BTreeMap<TrustDomain, DomainRoots>,
}

#[derive(Debug, Clone)]
struct DomainRoots {
    roots: Vec<CertificateDer<'static>>,
    store: Arc<RootCertStore>,
    // Built once per bundle rather than per handshake: construction copies every root subject.
    client_verifier: Arc<dyn ClientCertVerifier>,
}

impl TrustBundle {
    /// A bundle trusting `roots` for one trust domain.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let mut bundle = TrustBundle::default();
        bundle.insert(trust_domain, roots)?;
        Ok(bundle)
    }

    /// Trusts `roots` for `trust_domain`, replacing any roots it had.
    pub fn insert(
        &mut self,
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<(), Error> {
        let mut store = RootCertStore::empty();
        for root in &roots {
            store.add(root.clone()).map_err(|e| Error::BadBundle {
                reason: format!("root for {trust_domain} unusable as trust anchor: {e}"),
            })?;
        }
        if store.is_empty() {
            return Err(Error::BadBundle {
                reason: format!("no roots for trust domain {trust_domain}"),
            });
        }
        let store = Arc::new(store);
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(store.clone(), tls::crypto_provider())
                .build()
                .map_err(|e| Error::BadBundle {
                    reason: e.to_string(),
                })?;
        self.domains.insert(
            trust_domain,
            DomainRoots {
                roots,
                store,
                client_verifier,
            },
        );
        Ok(())
    }

    /// Trusts the roots in a PEM file for `trust_domain`; errors name the file.
    pub fn insert_pem_file(&mut self, trust_domain: TrustDomain, path: &Path) -> Result<(), Error> {
        let roots = pem::read_certificates(path)?;
        self.insert(trust_domain, roots)
            .map_err(|e| e.in_file(path))
    }

    /// The trust domains this bundle accepts.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.domains.keys()
    }

    /// Whether certificates of `trust_domain` can be accepted at all.
    pub fn contains(&self, trust_domain: &TrustDomain) -> bool {
        self.domains.contains_key(trust_domain)
    }

    /// The roots trusted for `trust_domain`.
    pub fn roots(&self, trust_domain: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.domains.get(trust_domain).map(|d| d.roots.as_slice())
    }

    /// Verifies a peer's chain as an X.509 SVID and returns the leaf's facts.
    ///
    /// Order: SVID shape (CA flag, exactly one SPIFFE URI SAN), trust domain known, leaf
    /// validity period, then the chain to that domain's roots with the EKU of `purpose`. The
    /// shape checks run first so each defect gets its own error rather than webpki's first.
    pub fn verify(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        purpose: Purpose,
    ) -> Result<LeafInfo, Error> {
        let info = inspect_leaf(leaf)?;
        let td = info.id.trust_domain();
        let Some(domain) = self.domains.get(&td) else {
            return Err(Error::UntrustedTrustDomain {
                trust_domain: td.to_string(),
            });
        };
        // UnixTime is u64 seconds; i64 overflows only ~292 billion years out.
        let now_secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        check_validity(&info, now_secs)?;

        let result = match purpose {
            Purpose::ServerAuth => {
                let parsed =
                    ParsedCertificate::try_from(leaf).map_err(|e| Error::BadCertificate {
                        reason: e.to_string(),
                    })?;
                rustls::client::verify_server_cert_signed_by_trust_anchor(
                    &parsed,
                    &domain.store,
                    intermediates,
                    now,
                    tls::crypto_provider().signature_verification_algorithms.all,
                )
            }
            Purpose::ClientAuth => domain
                .client_verifier
                .verify_client_cert(leaf, intermediates, now)
                .map(|_| ()),
        };
        result.map_err(|e| chain_error(e, &td))?;
        Ok(info)
    }
}

/// Maps webpki's chain failures onto meshd's variants.
fn chain_error(err: rustls::Error, td: &TrustDomain) -> Error {
    use rustls::CertificateError as C;
    match err {
        // A signature that does not verify under a same-named root is, for the operator, the
        // same fact as an unknown issuer: this certificate was not issued by a trusted root.
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            Error::UnknownIssuer {
                trust_domain: td.to_string(),
            }
        }
        // The leaf's own dates were checked before webpki ran, so these are an intermediate's.
        // Typed, because "not valid yet" is cured by time alone and the watcher retries it.
        rustls::Error::InvalidCertificate(C::NotValidYetContext { not_before, .. }) => {
            Error::NotYetValid {
                not_before: unix_to_datetime(not_before),
            }
        }
        rustls::Error::InvalidCertificate(C::ExpiredContext { not_after, .. }) => Error::Expired {
            not_after: unix_to_datetime(not_after),
        },
        other => Error::Untrusted {
            reason: other.to_string(),
        },
    }
}

/// webpki's certificate times as the type meshd's errors carry; times beyond `OffsetDateTime`'s
/// range (year 9999) saturate rather than fail, since they only label an error.
fn unix_to_datetime(t: UnixTime) -> time::OffsetDateTime {
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}
