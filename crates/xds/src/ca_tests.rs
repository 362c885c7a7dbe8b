//! What the CA client accepts from a CreateCertificate answer and from `certDir`, with real
//! certificates from meshd's dev CA; each rejection by name. The calls themselves are tested
//! against Istio's CA in integration/tests/istiod_client.rs.

use std::time::Duration;

use meshd_identity::DevCa;

use super::*;

struct Fixture {
    _dir: tempfile::TempDir,
    ca: DevCa,
    client: CaClient,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("cluster.local").unwrap();
    let root = dir.path().join("root-cert.pem");
    std::fs::write(&root, ca.root_pem()).unwrap();
    let mut s = ControlPlaneSettings::new(&root, "vms", "db-vm");
    s.cert_dir = dir.path().join("certs");
    Fixture {
        _dir: dir,
        ca,
        client: CaClient::new(s).unwrap(),
    }
}

fn issue(ca: &DevCa, sa: &str, ttl: u64) -> meshd_identity::IssuedSvid {
    ca.issue("vms", sa, Duration::from_secs(ttl)).unwrap()
}

#[test]
fn a_chain_with_its_root_is_split_into_chain_and_root() {
    let f = fixture();
    let svid = issue(&f.ca, "db-vm", 3600);
    let issued = f
        .client
        .accept(
            vec![svid.cert_pem.clone(), svid.bundle_pem.clone()],
            svid.key_pem.clone(),
        )
        .unwrap();
    assert_eq!(issued.credentials.id(), f.client.expected());
    assert_eq!(issued.chain_pem.trim(), svid.cert_pem.trim());
    assert_eq!(issued.root_pem.trim(), svid.bundle_pem.trim());
    // A lone leaf: the root is the configured root-cert.pem.
    let lone = f
        .client
        .accept(vec![svid.cert_pem.clone()], svid.key_pem.clone())
        .unwrap();
    assert_eq!(lone.root_pem.trim(), f.ca.root_pem().trim());
}

#[test]
fn each_bad_answer_is_refused() {
    let f = fixture();
    let svid = issue(&f.ca, "db-vm", 3600);
    let other = issue(&f.ca, "other", 3600);
    let root = svid.bundle_pem.clone();
    // Nothing issued.
    assert!(matches!(
        f.client.accept(vec![], svid.key_pem.clone()),
        Err(Error::CaResponse(_))
    ));
    // Another identity than the one asked for.
    match f.client.accept(
        vec![other.cert_pem.clone(), root.clone()],
        other.key_pem.clone(),
    ) {
        Err(Error::SanMismatch { want, got }) => {
            assert_eq!(want, "spiffe://cluster.local/ns/vms/sa/db-vm");
            assert_eq!(got, "spiffe://cluster.local/ns/vms/sa/other");
        }
        r => panic!("{r:?}"),
    }
    // A leaf that is not for the key meshd generated.
    match f.client.accept(
        vec![svid.cert_pem.clone(), root.clone()],
        other.key_pem.clone(),
    ) {
        Err(Error::Identity(meshd_identity::Error::KeyMismatch)) => {}
        r => panic!("{r:?}"),
    }
    // Not a certificate.
    assert!(matches!(
        f.client
            .accept(vec!["garbage".into(), root.clone()], svid.key_pem.clone()),
        Err(Error::Identity(_))
    ));
    // A root that is not one.
    match f.client.accept(
        vec![svid.cert_pem.clone(), "garbage".into()],
        svid.key_pem.clone(),
    ) {
        Err(Error::CaResponse(m)) => assert!(m.starts_with("root:"), "{m}"),
        r => panic!("{r:?}"),
    }
}

#[test]
fn persisted_files_are_atomic_private_and_only_reused_when_valid_and_ours() {
    let f = fixture();
    assert!(f.client.load_persisted().is_none(), "nothing persisted yet");
    let svid = issue(&f.ca, "db-vm", 3600);
    let issued = f
        .client
        .accept(
            vec![svid.cert_pem.clone(), svid.bundle_pem.clone()],
            svid.key_pem.clone(),
        )
        .unwrap();
    f.client.persist(&issued).unwrap();
    let loaded = f.client.load_persisted().expect("valid and ours");
    assert_eq!(loaded.serial(), issued.credentials.serial());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |n: &str| {
            std::fs::metadata(f.client.cert_dir().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(ISTIO_KEY_FILE), 0o600);
        assert_eq!(mode(ISTIO_CERT_CHAIN_FILE), 0o644);
    }
    let leftovers: Vec<_> = std::fs::read_dir(f.client.cert_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Another identity's certificate in certDir is not reused.
    let other = issue(&f.ca, "other", 3600);
    std::fs::write(
        f.client.cert_dir().join(ISTIO_CERT_CHAIN_FILE),
        &other.cert_pem,
    )
    .unwrap();
    std::fs::write(f.client.cert_dir().join(ISTIO_KEY_FILE), &other.key_pem).unwrap();
    assert!(f.client.load_persisted().is_none());
    // Nor one about to expire.
    let short = issue(&f.ca, "db-vm", 30);
    std::fs::write(
        f.client.cert_dir().join(ISTIO_CERT_CHAIN_FILE),
        &short.cert_pem,
    )
    .unwrap();
    std::fs::write(f.client.cert_dir().join(ISTIO_KEY_FILE), &short.key_pem).unwrap();
    assert!(f.client.load_persisted().is_none());
    // Nor a chain whose key is gone.
    std::fs::remove_file(f.client.cert_dir().join(ISTIO_KEY_FILE)).unwrap();
    assert!(f.client.load_persisted().is_none());
}

/// A leaf of `ca`'s identity `db-vm` valid from `from` to `to` (relative to now).
fn leaf_between(from: i64, to: i64) -> Credentials {
    use rcgen::{CertificateParams, Issuer, KeyPair};
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::default();
    let now = OffsetDateTime::now_utc();
    p.not_before = now + time::Duration::seconds(from);
    p.not_after = now + time::Duration::seconds(to);
    let uri = "spiffe://cluster.local/ns/vms/sa/db-vm".to_string();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    let cert = p.signed_by(&key, &issuer).unwrap();
    Credentials::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap()
}

#[test]
fn half_life_is_counted_from_issuance() {
    // Istio's shape: notBefore two minutes back, ten seconds to live: half-life in 5 s.
    let d = until_half_life(&leaf_between(-120, 10));
    assert!(
        d > Duration::from_secs(3) && d <= Duration::from_secs(5),
        "{d:?}"
    );
    // A day's certificate issued now: in 12 h.
    let d = until_half_life(&leaf_between(-120, 86_400));
    assert!(
        d > Duration::from_secs(43_190) && d <= Duration::from_secs(43_200),
        "{d:?}"
    );
    // Loaded after a restart 20 h into its day: at once.
    assert_eq!(
        until_half_life(&leaf_between(-72_000, 14_400)),
        Duration::ZERO
    );
    // Expired: at once.
    assert_eq!(until_half_life(&leaf_between(-7_200, -60)), Duration::ZERO);
}
