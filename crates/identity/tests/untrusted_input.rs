//! Input meshd does not control (config values, CLI flags, files written by other programs)
//! never panics and never widens trust: each bad input is its own scenario with its exact error.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use meshd_identity::pem::MAX_PEM_FILE;
use meshd_identity::{
    DevCa, DevCaSource, Error, FilesSource, IdentityManager, IdentitySource, TrustBundle,
    parse_duration,
};
use rustls_pki_types::UnixTime;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DAY: u64 = 86_400;

fn ttl_error(reason: &str) -> Error {
    Error::Config {
        field: "ttl".into(),
        reason: reason.into(),
    }
}

fn outlives(ca: &DevCa, ttl: &str) -> Error {
    ttl_error(&format!(
        "{ttl} would outlive the CA root, which expires at {}",
        ca.root_not_after()
    ))
}

// ---------------------------------------------------------------------------------------------
// Dev CA lifetimes.

#[test]
fn dev_ca_ttl_past_year_9999() {
    // `meshd ca issue --ttl 9999999d` (27 000 years): refused, where date arithmetic panicked.
    let ca = DevCa::generate(TD).unwrap();
    let ttl = parse_duration("9999999d").unwrap();
    assert_eq!(
        ca.issue("ns", "sa", ttl).unwrap_err(),
        outlives(&ca, "9999999d")
    );
}

#[test]
fn dev_ca_ttl_largest_duration() {
    // Duration::MAX does not even fit a date offset; still an error, not a panic.
    let ca = DevCa::generate(TD).unwrap();
    let secs = u64::MAX;
    assert_eq!(
        ca.issue("ns", "sa", Duration::from_secs(secs)).unwrap_err(),
        outlives(&ca, &format!("{secs}s"))
    );
    assert_eq!(
        ca.issue("ns", "sa", Duration::MAX).unwrap_err(),
        outlives(&ca, &format!("{secs}s"))
    );
}

#[test]
fn dev_ca_ttl_past_the_root() {
    // An SVID may not outlive the root that vouches for it (ten years for the dev CA).
    let ca = DevCa::generate(TD).unwrap();
    let ttl = Duration::from_secs(11 * 365 * DAY);
    assert_eq!(
        ca.issue("ns", "sa", ttl).unwrap_err(),
        outlives(&ca, "4015d")
    );
    // Up to the root's end is fine.
    assert!(
        ca.issue("ns", "sa", Duration::from_secs(9 * 365 * DAY))
            .is_ok()
    );
}

#[test]
fn dev_ca_ttl_zero() {
    // A certificate that is never valid is refused up front.
    let ca = DevCa::generate(TD).unwrap();
    assert_eq!(
        ca.issue("ns", "sa", Duration::ZERO).unwrap_err(),
        ttl_error("must be longer than zero")
    );
}

#[test]
fn dev_ca_issue_from_disk_with_huge_ttl() {
    // The `meshd ca issue` path: CA loaded from disk (its root's end read back from the file),
    // nothing written when the TTL is refused.
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::init(TD, &dir.path().join("ca")).unwrap();
    let out = dir.path().join("out");
    let err = DevCa::issue_from(
        &dir.path().join("ca"),
        "ns",
        "sa",
        parse_duration("9999999d").unwrap(),
        &out,
    )
    .unwrap_err();
    assert_eq!(err, outlives(&ca, "9999999d"));
    assert!(!out.exists());
}

#[tokio::test]
async fn dev_ca_source_with_huge_ttl_fails_to_start() {
    // The same TTL from a config file: a startup error (exit 78), not a panic.
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::init(TD, &dir.path().join("ca")).unwrap();
    let source = IdentitySource::DevCa(DevCaSource {
        ttl: parse_duration("9999999d").unwrap(),
        ..DevCaSource::new(dir.path().join("ca"))
    });
    let err = IdentityManager::start(&source).await.err().unwrap();
    assert_eq!(err, outlives(&ca, "9999999d"));
}

#[test]
fn ttl_text_garbage() {
    // Each malformed TTL names the field and the input; none panics.
    for (text, reason) in [
        ("", "must be longer than zero"),
        ("0s", "must be longer than zero"),
        ("0d0h", "must be longer than zero"),
        ("10", "missing unit (s, m, h or d)"),
        ("h", "expected a number before each unit"),
        ("1h-", "expected a number followed by s, m, h or d"),
        ("-1h", "expected a number followed by s, m, h or d"),
        ("1.5h", "expected a number followed by s, m, h or d"),
        ("١h", "expected a number followed by s, m, h or d"),
        (
            "18446744073709551616s",
            "expected a number before each unit",
        ),
        ("213503982334602d", "too long"),
        ("18446744073709551615s1s", "too long"),
    ] {
        assert_eq!(
            parse_duration(text).unwrap_err(),
            ttl_error(&format!("{text:?}: {reason}")),
            "{text:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Certificate, key and bundle files.

/// A valid set in `dir`, with one of the three files then overwritten by the test.
fn valid_files(dir: &Path) -> FilesSource {
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid(WEB));
    std::fs::write(dir.join("cert.pem"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), &leaf.key_pem).unwrap();
    std::fs::write(dir.join("bundle.pem"), &ca.pem).unwrap();
    let src = FilesSource {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        bundle: dir.join("bundle.pem"),
        federated_bundles: Default::default(),
        spiffe_id: None,
    };
    src.load().unwrap();
    src
}

fn load_with(file: &str, contents: &[u8]) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let src = valid_files(dir.path());
    std::fs::write(dir.path().join(file), contents).unwrap();
    let err = src.load().unwrap_err();
    let Error::InFile { path, .. } = &err else {
        panic!("error does not name the file: {err:?}")
    };
    assert_eq!(path, &dir.path().join(file));
    err.cause().clone()
}

const EMPTY_CERT_BLOCK: &[u8] = b"-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n";
const GARBAGE_CERT_BLOCK: &[u8] =
    b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZSBpbiBhIGNlcnRpZmljYXRl\n-----END CERTIFICATE-----\n";

#[test]
fn empty_bundle_file() {
    // A bundle with zero roots must never mean "trust everything".
    assert_eq!(load_with("bundle.pem", b""), Error::NoCertificate);
}

#[test]
fn bundle_without_certificate_blocks() {
    // Only a key in the bundle file: zero roots, refused like an empty file.
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    assert_eq!(
        load_with("bundle.pem", key.as_bytes()),
        Error::NoCertificate
    );
}

#[test]
fn bundle_block_with_empty_der() {
    // A CERTIFICATE block with nothing in it is not a root.
    let err = load_with("bundle.pem", EMPTY_CERT_BLOCK);
    assert!(
        matches!(&err, Error::BadBundle { reason } if reason.starts_with("root for cluster.local unusable as trust anchor: ")),
        "{err:?}"
    );
}

#[test]
fn bundle_block_with_garbage_der() {
    // Base64 that decodes to non-DER: refused, never skipped.
    let err = load_with("bundle.pem", GARBAGE_CERT_BLOCK);
    assert!(
        matches!(&err, Error::BadBundle { reason } if reason.starts_with("root for cluster.local unusable as trust anchor: ")),
        "{err:?}"
    );
}

#[test]
fn empty_certificate_file() {
    assert_eq!(load_with("cert.pem", b""), Error::NoCertificate);
}

#[test]
fn certificate_block_with_garbage_der() {
    let err = load_with("cert.pem", GARBAGE_CERT_BLOCK);
    assert!(matches!(err, Error::BadCertificate { .. }), "{err:?}");
}

#[test]
fn binary_noise_as_certificate() {
    // Random bytes (a binary written to the wrong path) hold no PEM block.
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(load_with("cert.pem", &noise), Error::NoCertificate);
}

#[test]
fn empty_key_file() {
    assert_eq!(load_with("key.pem", b""), Error::NoPrivateKey);
}

#[test]
fn key_block_with_garbage_der() {
    let key = b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n";
    let err = load_with("key.pem", key);
    assert!(matches!(err, Error::BadPrivateKey { .. }), "{err:?}");
}

#[test]
fn oversized_bundle_file() {
    // One byte over the limit is refused before parsing, with the limit in the error.
    let mut big = vec![b'#'; usize::try_from(MAX_PEM_FILE).unwrap() + 1];
    big.splice(0..0, Ca::new("root").pem.bytes());
    assert_eq!(
        load_with("bundle.pem", &big),
        Error::FileTooLarge {
            limit: MAX_PEM_FILE
        }
    );
}

#[cfg(unix)]
#[test]
fn endless_file_as_bundle() {
    // A path pointing at a device that never ends (/dev/zero) fails at the limit instead of
    // reading until memory runs out.
    let dir = tempfile::tempdir().unwrap();
    let src = FilesSource {
        bundle: "/dev/zero".into(),
        ..valid_files(dir.path())
    };
    assert_eq!(
        src.load().unwrap_err(),
        Error::FileTooLarge {
            limit: MAX_PEM_FILE
        }
        .in_file("/dev/zero")
    );
}

#[test]
fn empty_trust_bundle_trusts_nothing() {
    // The default bundle has no trust domains: every certificate is refused, none waved through.
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid(WEB));
    let err = TrustBundle::default()
        .verify(
            &leaf.der,
            &[],
            UnixTime::now(),
            meshd_identity::Purpose::ClientAuth,
        )
        .unwrap_err();
    assert_eq!(
        err,
        Error::UntrustedTrustDomain {
            trust_domain: TD.into()
        }
    );
    // And an explicitly empty root list is refused when building the bundle.
    assert_eq!(
        TrustBundle::new(meshd_identity::TrustDomain::new(TD).unwrap(), Vec::new()).unwrap_err(),
        Error::BadBundle {
            reason: "no roots for trust domain cluster.local".into()
        }
    );
}
