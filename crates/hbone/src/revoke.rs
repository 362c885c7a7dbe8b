//! Re-verification of established connections: a peer whose certificate chain stops verifying
//! (its root left the trust bundle, or a certificate in it expired) must not keep a connection
//! that takes new streams.
//!
//! Each connection keeps the chain its peer presented and re-checks it against every new
//! credential set the identity handle publishes, and again when a certificate in the chain
//! reaches its notAfter. ztunnel does the same for CRL revocations, tearing tunnels down.
//! What the connection then does (refuse new streams at once, let open ones finish within a
//! grace period) is the caller's; see the server and the pool.

use std::sync::Arc;

use meshd_identity::{CredentialSet, IdentityHandle, Purpose};
use rustls::pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use tokio::time::Instant;

/// The certificate chain a peer presented, as needed to verify it again later.
#[derive(Debug, Clone)]
pub(crate) struct PeerChain {
    certs: Vec<CertificateDer<'static>>,
    /// Every certificate's notAfter; the chain is re-checked just after each.
    expiries: Vec<OffsetDateTime>,
    purpose: Purpose,
}

impl PeerChain {
    /// The chain of a completed handshake; `purpose` is the peer's role (a client's chain is
    /// checked for clientAuth, a server's for serverAuth).
    pub(crate) fn new(certs: &[CertificateDer<'_>], purpose: Purpose) -> PeerChain {
        let certs: Vec<_> = certs.iter().map(|c| c.clone().into_owned()).collect();
        // The handshake already parsed these; one that does not parse now has no expiry to
        // wait for, and `verify` will refuse it.
        let expiries = certs
            .iter()
            .filter_map(|c| meshd_identity::x509::not_after(c).ok())
            .collect();
        PeerChain {
            certs,
            expiries,
            purpose,
        }
    }

    /// Verifies the chain as the handshake did, against `set`'s bundle at `now`.
    fn verify(&self, set: &CredentialSet, now: UnixTime) -> Result<(), meshd_identity::Error> {
        let (leaf, intermediates) = self
            .certs
            .split_first()
            .ok_or(meshd_identity::Error::NoPeerCertificate)?;
        set.bundle()
            .verify(leaf, intermediates, now, self.purpose)
            .map(|_| ())
    }

    /// When to check next for expiry: just after the earliest notAfter still ahead (validity
    /// is checked in whole seconds, so one second after it the certificate is expired).
    fn next_expiry_check(&self) -> Option<Instant> {
        let now = OffsetDateTime::now_utc();
        let next = self.expiries.iter().filter(|t| **t >= now).min()?;
        let wait = *next - now + time::Duration::SECOND;
        let wait = std::time::Duration::try_from(wait).unwrap_or_default();
        // Beyond Instant's range is as good as never.
        Instant::now().checked_add(wait)
    }
}

/// Resolves, with the reason, once `chain` no longer verifies against the current credential
/// set of `identity`: after a rotation that removed its root, or once a certificate in it
/// expired. Pending for as long as it verifies.
pub(crate) async fn revoked(identity: &IdentityHandle, chain: &PeerChain) -> meshd_identity::Error {
    let mut sets = identity.subscribe();
    // A fixed handle has no sender: then only expiry can end the chain's validity.
    let mut rotations = true;
    loop {
        let set: Arc<CredentialSet> = sets.borrow_and_update().clone();
        if let Err(e) = chain.verify(&set, UnixTime::now()) {
            return e;
        }
        let expiry = chain.next_expiry_check();
        tokio::select! {
            changed = sets.changed(), if rotations => {
                if changed.is_err() {
                    rotations = false;
                }
            }
            () = sleep_until_opt(expiry) => {}
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
