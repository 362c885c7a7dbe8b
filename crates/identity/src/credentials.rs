//! A workload's X.509 SVID with its key, and the validated set (SVID + trust bundle) meshd serves.

use std::fmt;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use time::OffsetDateTime;

use crate::bundle::{Purpose, TrustBundle};
use crate::x509::{LeafInfo, inspect_leaf};
use crate::{Error, SpiffeId, pem, tls};

/// An X.509 SVID: leaf + intermediates, its private key, and the facts read from the leaf.
///
/// Construction checks the SVID's shape and that the key belongs to the leaf; chaining and
/// expiry need a bundle and a clock, so [`CredentialSet::new`] does those.
pub struct Credentials {
    leaf: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    info: LeafInfo,
    certified: Arc<CertifiedKey>,
}

impl Credentials {
    /// Builds credentials from DER; `chain[0]` is the leaf.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, Error> {
        let leaf = chain.first().ok_or(Error::NoCertificate)?.clone();
        let info = inspect_leaf(&leaf)?;
        let signing_key = tls::crypto_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| Error::BadPrivateKey {
                reason: e.to_string(),
            })?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(Error::KeyMismatch);
            }
            // aws-lc-rs reports the public key of every key type it loads, so "unknown" means
            // something is off; refuse rather than serve a key we could not check.
            Err(e) => {
                return Err(Error::BadPrivateKey {
                    reason: format!("cannot check the key against the certificate: {e}"),
                });
            }
        }
        Ok(Credentials {
            leaf,
            chain,
            key,
            info,
            certified: Arc::new(certified),
        })
    }

    /// Builds credentials from PEM text (certificate chain, then private key).
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        Credentials::new(
            pem::parse_certificates(chain_pem)?,
            pem::parse_private_key(key_pem)?,
        )
    }

    /// The SPIFFE ID carried by the leaf.
    pub fn id(&self) -> &SpiffeId {
        &self.info.id
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// Leaf followed by intermediates, as sent in the handshake.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn private_key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// Start of the leaf's validity period.
    pub fn not_before(&self) -> OffsetDateTime {
        self.info.not_before
    }

    /// End of the leaf's validity period.
    pub fn not_after(&self) -> OffsetDateTime {
        self.info.not_after
    }

    /// The leaf's serial number (big-endian bytes); distinguishes rotations in logs and tests.
    pub fn serial(&self) -> &[u8] {
        &self.info.serial
    }

    /// The leaf's issuer (distinguished name).
    pub fn issuer(&self) -> &str {
        &self.info.issuer
    }

    /// The rustls form used by the certificate resolvers.
    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            leaf: self.leaf.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            info: self.info.clone(),
            certified: self.certified.clone(),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Credentials")
            .field("id", &self.info.id.to_string())
            .field("not_before", &self.info.not_before)
            .field("not_after", &self.info.not_after)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// The unit meshd swaps atomically: an SVID and the bundle it is validated against.
#[derive(Debug, Clone)]
pub struct CredentialSet {
    credentials: Credentials,
    bundle: TrustBundle,
}

impl CredentialSet {
    /// Validates `credentials` against `bundle` now: the leaf chains to the roots of its own
    /// trust domain for both serverAuth and clientAuth (HBONE uses the same SVID both ways), is
    /// within its validity period, and carries `expected` if given.
    pub fn new(
        credentials: Credentials,
        bundle: TrustBundle,
        expected: Option<&SpiffeId>,
    ) -> Result<Self, Error> {
        CredentialSet::new_at(credentials, bundle, expected, UnixTime::now())
    }

    /// As [`CredentialSet::new`], at a given time (for tests and for checking ahead).
    pub fn new_at(
        credentials: Credentials,
        bundle: TrustBundle,
        expected: Option<&SpiffeId>,
        now: UnixTime,
    ) -> Result<Self, Error> {
        if let Some(expected) = expected
            && expected != credentials.id()
        {
            return Err(Error::IdentityMismatch {
                expected: expected.to_string(),
                found: credentials.id().to_string(),
            });
        }
        let intermediates = credentials.chain.get(1..).unwrap_or_default();
        for purpose in [Purpose::ServerAuth, Purpose::ClientAuth] {
            bundle.verify(credentials.leaf(), intermediates, now, purpose)?;
        }
        Ok(CredentialSet {
            credentials,
            bundle,
        })
    }

    /// The local SVID.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The trusted roots, per trust domain.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The local SPIFFE ID.
    pub fn id(&self) -> &SpiffeId {
        self.credentials.id()
    }

    /// When the local SVID expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.credentials.not_after()
    }

    /// Whether `other` holds the same certificate chain, private key and roots of every trust
    /// domain: a source that sends its current set again (a SPIRE agent after a reconnect) has
    /// not rotated anything.
    pub fn same_as(&self, other: &CredentialSet) -> bool {
        let (a, b) = (&self.credentials, &other.credentials);
        a.chain == b.chain
            && a.key.secret_der() == b.key.secret_der()
            && self.bundle.trust_domains().eq(other.bundle.trust_domains())
            && self
                .bundle
                .trust_domains()
                .all(|td| self.bundle.roots(td) == other.bundle.roots(td))
    }
}
