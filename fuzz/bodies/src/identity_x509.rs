//! X.509 SVID inspection and trust-bundle verification on arbitrary DER: what a TLS client or
//! server meets before the peer is authenticated.
//!
//! Input: one control byte, then certificates as concatenated DER (leaf first, then
//! intermediates), split by each certificate's own outer length; bytes that do not form a
//! complete DER SEQUENCE go in as one last "certificate". The control byte picks the peer's role
//! (bit 0) and the verification time (bits 1–2), so certificates made by `meshd ca` (seeds in
//! the corpus, roots in `fixtures/`) verify completely at the fixed time and expire or are not
//! yet valid at the others. The bundle trusts the fixture roots of two trust domains; every
//! input certificate is also tried as a trust anchor, as a bundle file would be.

use std::sync::OnceLock;

use meshd_identity::{Purpose, TrustBundle, TrustDomain, pem, x509};
use rustls_pki_types::{CertificateDer, UnixTime};

/// 2026-11-27T23:00:00Z, under an hour after the fixtures were made: inside the validity of
/// every seed but `expired-short` (1 s).
pub const FIXTURE_TIME: u64 = 1_795_820_400;
const CLUSTER_ROOT: &[u8] = include_bytes!("../fixtures/cluster.local-ca.pem");
const PARTNER_ROOT: &[u8] = include_bytes!("../fixtures/partner.example-ca.pem");
const MAX_CERTS: usize = 6;

fn bundle() -> &'static TrustBundle {
    static BUNDLE: OnceLock<TrustBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let mut bundle = TrustBundle::default();
        for (domain, pem_bytes) in [
            ("cluster.local", CLUSTER_ROOT),
            ("partner.example", PARTNER_ROOT),
        ] {
            let roots = pem::parse_certificates(pem_bytes)
                .unwrap_or_else(|e| panic!("fixture root {domain}: {e}"));
            let domain =
                TrustDomain::new(domain).unwrap_or_else(|e| panic!("trust domain {domain}: {e}"));
            if let Err(e) = bundle.insert(domain, roots) {
                panic!("fixture root: {e}");
            }
        }
        bundle
    })
}

/// The length of the DER element at the start of `data`, header included, if it is complete.
fn der_len(data: &[u8]) -> Option<usize> {
    let (&first, rest) = data.get(1..)?.split_first()?;
    let (len, header) = match first {
        0..=0x7f => (usize::from(first), 2),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let bytes = rest.get(..n)?;
            let len = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, 2 + n)
        }
        _ => return None,
    };
    let total = header.checked_add(len)?;
    (total <= data.len()).then_some(total)
}

/// Splits concatenated DER into certificates.
pub fn split_der(mut data: &[u8]) -> Vec<CertificateDer<'static>> {
    let mut certs = Vec::new();
    while !data.is_empty() && certs.len() < MAX_CERTS {
        let take = match der_len(data) {
            Some(n) if data.first() == Some(&0x30) && certs.len() + 1 < MAX_CERTS => n,
            _ => data.len(),
        };
        certs.push(CertificateDer::from(data[..take].to_vec()));
        data = &data[take..];
    }
    certs
}

/// Inspects and verifies one input; panics only if meshd (or a library under it) does.
pub fn run(data: &[u8]) {
    let Some((&control, der)) = data.split_first() else {
        return;
    };
    let purpose = if control & 1 == 0 {
        Purpose::ClientAuth
    } else {
        Purpose::ServerAuth
    };
    let now = match (control >> 1) & 3 {
        0 => FIXTURE_TIME,
        1 => 0,
        2 => FIXTURE_TIME + 20 * 365 * 86_400,
        _ => u64::MAX,
    };
    let certs = split_der(der);
    let Some((leaf, intermediates)) = certs.split_first() else {
        return;
    };
    let inspected = x509::inspect_leaf(leaf);
    let verified = bundle().verify(
        leaf,
        intermediates,
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
        purpose,
    );
    // A verified leaf is an inspected leaf with the same facts: verification adds checks only.
    if let Ok(info) = &verified {
        assert_eq!(
            inspected.as_ref().ok(),
            Some(info),
            "verify accepted what inspect_leaf refused"
        );
        assert!(x509::check_validity(info, i64::try_from(now).unwrap_or(i64::MAX)).is_ok());
    }
    for cert in &certs {
        let _ = x509::not_after(cert);
        if let Ok(domain) = TrustDomain::new("cluster.local") {
            let _ = TrustBundle::new(domain, vec![cert.clone()]);
        }
    }
}
