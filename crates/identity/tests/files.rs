//! Identity sources on real files: loading, the dev CA, key formats, and live rotation.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use meshd_identity::dev_ca::{
    CA_CERT_FILE, CA_KEY_FILE, SVID_BUNDLE_FILE, SVID_FILE, SVID_KEY_FILE,
};
use meshd_identity::{
    DevCa, DevCaSource, Error, FilesSource, ISTIO_CERT_CHAIN_FILE, ISTIO_KEY_FILE,
    ISTIO_ROOT_CERT_FILE, IdentityManager, IdentitySource, IssuedSvid, IstioCaSource,
    ManagerOptions, SpiffeHelperSource, TrustDomain, tls, x509,
};
use time::OffsetDateTime;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

/// Writes cert/key/bundle PEM as plain files in `dir` and returns the matching source.
fn files_in(dir: &Path, cert: &str, key: &str, bundle: &str) -> FilesSource {
    write(&dir.join("cert.pem"), cert);
    write(&dir.join("key.pem"), key);
    write(&dir.join("bundle.pem"), bundle);
    FilesSource {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        bundle: dir.join("bundle.pem"),
        federated_bundles: Default::default(),
        spiffe_id: Some(id(WEB)),
    }
}

#[test]
fn files_source_loads_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid(WEB));
    let src = files_in(dir.path(), &leaf.cert_pem, &leaf.key_pem, &ca.pem);
    let set = src.load().unwrap();
    assert_eq!(set.id(), &id(WEB));
    assert_eq!(set.credentials().leaf(), &leaf.der);
    assert_eq!(src.watch_dirs(), vec![dir.path().to_path_buf()]);
}

#[test]
fn files_source_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid(WEB));
    let other = ca.issue(&LeafSpec::svid(WEB));

    // Key from another certificate: blamed on the key file.
    let src = files_in(dir.path(), &leaf.cert_pem, &other.key_pem, &ca.pem);
    assert_eq!(
        src.load().unwrap_err(),
        Error::KeyMismatch.in_file(dir.path().join("key.pem"))
    );

    // Expired leaf: blamed on the certificate file.
    let mut spec = LeafSpec::svid(WEB);
    spec.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    spec.not_after = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let expired = ca.issue(&spec);
    let src = files_in(dir.path(), &expired.cert_pem, &expired.key_pem, &ca.pem);
    let err = src.load().unwrap_err();
    assert!(matches!(err.cause(), Error::Expired { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", dir.path().join("cert.pem").display()))
    );

    // Not chaining to the bundle.
    let stranger = Ca::new("stranger");
    let src = files_in(dir.path(), &leaf.cert_pem, &leaf.key_pem, &stranger.pem);
    assert_eq!(
        src.load().unwrap_err().cause(),
        &Error::UnknownIssuer {
            trust_domain: TD.into()
        }
    );

    // A different identity than configured.
    let src = files_in(dir.path(), &leaf.cert_pem, &leaf.key_pem, &ca.pem);
    let src = FilesSource {
        spiffe_id: Some(id("spiffe://cluster.local/ns/default/sa/db")),
        ..src
    };
    assert_eq!(
        src.load().unwrap_err(),
        Error::IdentityMismatch {
            expected: "spiffe://cluster.local/ns/default/sa/db".into(),
            found: WEB.into()
        }
    );

    // Missing file.
    let src = FilesSource {
        bundle: dir.path().join("absent.pem"),
        ..src
    };
    assert!(
        matches!(src.load().unwrap_err(), Error::Io { path, .. } if path == dir.path().join("absent.pem"))
    );
}

/// Pulls the inner privateKey OCTET STRING out of a PKCS#8 PrivateKeyInfo: for RSA that is the
/// PKCS#1 RSAPrivateKey, for EC the SEC1 ECPrivateKey.
fn pkcs8_inner(der: &[u8]) -> Vec<u8> {
    fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = if b[1] < 0x80 {
            (b[1] as usize, 2)
        } else {
            let n = (b[1] & 0x7f) as usize;
            (
                b[2..2 + n]
                    .iter()
                    .fold(0usize, |acc, x| acc << 8 | *x as usize),
                2 + n,
            )
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }
    let (_, seq, _) = tlv(der);
    let (_, _version, rest) = tlv(seq);
    let (_, _alg, rest) = tlv(rest);
    let (tag, inner, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    inner.to_vec()
}

fn pem_block(label: &str, der: &[u8]) -> String {
    // Minimal base64 so the test needs no extra crate.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in der.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    let body: Vec<String> = out
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        body.join("\n")
    )
}

#[test]
fn pkcs1_and_sec1_keys_load() {
    // Operators' CAs hand out all three key encodings; each must load and match its leaf.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let ec = ca.issue(&LeafSpec::svid(WEB));
    let sec1 = pem_block("EC PRIVATE KEY", &pkcs8_inner(&ec.key_der));
    let set = files_in(dir.path(), &ec.cert_pem, &sec1, &ca.pem)
        .load()
        .unwrap();
    assert_eq!(set.id(), &id(WEB));

    let rsa_key =
        rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![uri(WEB)];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::from_secs(60);
    params.not_after = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let rsa_cert = ca.sign(&params, &rsa_key);
    let pkcs1 = pem_block("RSA PRIVATE KEY", &pkcs8_inner(&rsa_key.serialize_der()));
    let set = files_in(dir.path(), &rsa_cert, &pkcs1, &ca.pem)
        .load()
        .unwrap();
    assert_eq!(set.id(), &id(WEB));
}

#[test]
fn dev_ca_init_load_issue() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let ca = DevCa::init("example.org", &ca_dir).unwrap();
    assert!(ca_dir.join(CA_CERT_FILE).exists() && ca_dir.join(CA_KEY_FILE).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ca_dir.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "CA key readable by others: {mode:o}");
    }

    // init refuses to clobber a CA and says which file is in the way.
    let err = DevCa::init("example.org", &ca_dir).unwrap_err();
    assert!(err.to_string().contains(CA_KEY_FILE), "{err}");

    let loaded = DevCa::load(&ca_dir).unwrap();
    assert_eq!(
        loaded.trust_domain(),
        &TrustDomain::new("example.org").unwrap()
    );
    assert_eq!(loaded.root_pem(), ca.root_pem());

    // An SVID from the reloaded CA: URI SAN only, CA:false, both EKUs, requested lifetime.
    let out = dir.path().join("svid");
    let svid = loaded
        .issue_to_dir("shop", "cart", Duration::from_secs(3600), &out)
        .unwrap();
    assert_eq!(svid.id.to_string(), "spiffe://example.org/ns/shop/sa/cart");
    for name in [SVID_FILE, SVID_KEY_FILE, SVID_BUNDLE_FILE] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    let src = SpiffeHelperSource {
        dir: out.clone(),
        federated_bundles: Default::default(),
        spiffe_id: Some(svid.id.clone()),
    };
    let set = src.load().unwrap();
    assert_eq!(set.not_after(), svid.not_after);
    let leaf = set.credentials().leaf();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    assert!(!cert.is_ca());
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "URI SAN only");
    let eku = cert.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.value.digital_signature() && !ku.value.key_cert_sign());
    assert_eq!(x509::inspect_leaf(leaf).unwrap().id, svid.id);

    // Errors name the path.
    let err = DevCa::load(&dir.path().join("nope")).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn dev_ca_source_issues_and_renews_at_half_life() {
    let dir = tempfile::tempdir().unwrap();
    let source = IdentitySource::DevCa(DevCaSource {
        ttl: Duration::from_secs(2),
        namespace: "shop".into(),
        service_account: "cart".into(),
        ..DevCaSource::new(dir.path().join("ca"))
    });
    let manager = IdentityManager::start(&source).await.unwrap();
    let handle = manager.handle();
    let first = handle.current();
    assert_eq!(
        first.id().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert!(
        dir.path().join("ca").join(CA_CERT_FILE).exists(),
        "CA created on first start"
    );

    let mut rx = handle.subscribe();
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let second = handle.current();
    assert_ne!(second.credentials().serial(), first.credentials().serial());
    assert_eq!(second.id(), first.id());
    assert_eq!(manager.stats().rotations(), 1);
    assert_eq!(manager.stats().failed_rotations(), 0);

    // A second manager on the same directory reuses the CA rather than making a new root.
    let again = IdentityManager::start(&source).await.unwrap();
    assert_eq!(
        again
            .handle()
            .current()
            .bundle()
            .roots(&TrustDomain::new(TD).unwrap()),
        second.bundle().roots(&TrustDomain::new(TD).unwrap())
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation under load.

struct Rotation {
    dir: PathBuf,
    ca: DevCa,
    version: usize,
}

impl Rotation {
    fn svid(&self) -> IssuedSvid {
        self.ca
            .issue("default", "web", Duration::from_secs(3600))
            .unwrap()
    }

    /// Replaces the plain files by writing hidden temporaries and renaming them over.
    fn atomic_rename(&self, svid: &IssuedSvid) {
        for (name, body) in [
            ("key.pem", &svid.key_pem),
            ("cert.pem", &svid.cert_pem),
            ("bundle.pem", &svid.bundle_pem),
        ] {
            let tmp = self.dir.join(format!(".{name}.tmp"));
            write(&tmp, body);
            std::fs::rename(&tmp, self.dir.join(name)).unwrap();
        }
    }

    /// Kubernetes projected-volume layout: files in `..<version>/`, `..data` -> that dir,
    /// `name` -> `..data/name`; swapped by renaming a fresh `..data_tmp` link over `..data`.
    fn data_swap(&mut self, cert: &str, key: &str, bundle: &str) {
        self.version += 1;
        let version_dir = format!("..v{}", self.version);
        std::fs::create_dir(self.dir.join(&version_dir)).unwrap();
        write(&self.dir.join(&version_dir).join("cert.pem"), cert);
        write(&self.dir.join(&version_dir).join("key.pem"), key);
        write(&self.dir.join(&version_dir).join("bundle.pem"), bundle);
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&version_dir, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        for name in ["cert.pem", "key.pem", "bundle.pem"] {
            let link = self.dir.join(name);
            if !link.is_symlink() {
                // First swap: turn the plain files into links into ..data, each atomically.
                let tmp_link = self.dir.join(format!(".{name}.link"));
                std::os::unix::fs::symlink(format!("..data/{name}"), &tmp_link).unwrap();
                std::fs::rename(&tmp_link, &link).unwrap();
            }
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_never_fails_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut rot = Rotation {
        dir: dir.path().to_path_buf(),
        ca: DevCa::generate(TD).unwrap(),
        version: 0,
    };
    let initial = rot.svid();
    let source = files_in(
        dir.path(),
        &initial.cert_pem,
        &initial.key_pem,
        &initial.bundle_pem,
    );
    let options = ManagerOptions {
        debounce: Duration::from_millis(100),
        ..ManagerOptions::default()
    };
    let manager = IdentityManager::start_with(&IdentitySource::Files(source), options)
        .await
        .unwrap();
    let server_config = tls::server_config(&manager.handle()).unwrap();

    // The client: a fixed identity from the same CA, expecting the server's identity.
    let client_set = rot
        .ca
        .issue("default", "client", Duration::from_secs(3600))
        .unwrap()
        .credential_set()
        .unwrap();
    let client_config =
        tls::client_config(&meshd_identity::IdentityHandle::fixed(client_set), &id(WEB)).unwrap();

    // Handshakes back to back for the whole test; the serial each one saw is recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let last_serial = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let (stop, handshakes, last_serial) =
            (stop.clone(), handshakes.clone(), last_serial.clone());
        let (server_config, client_config) = (server_config.clone(), client_config.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let outcome = handshake(server_config.clone(), client_config.clone()).await;
                match (outcome.server, outcome.client) {
                    (Ok(_), Ok((peer, leaf))) => {
                        assert_eq!(peer, id(WEB));
                        *last_serial.lock().unwrap() = x509::inspect_leaf(&leaf).unwrap().serial;
                        handshakes.fetch_add(1, Ordering::Relaxed);
                    }
                    (s, c) => {
                        failures.push(format!("server: {:?}, client: {:?}", s.err(), c.err()))
                    }
                }
            }
            failures
        })
    };

    let serial_of = |svid: &IssuedSvid| {
        let set = svid.credential_set().unwrap();
        set.credentials().serial().to_vec()
    };
    // After a valid rotation the manager serves the new serial and a fresh handshake shows it.
    let expect_served = |serial: Vec<u8>| {
        let handle = manager.handle();
        let (handshakes, last_serial) = (handshakes.clone(), last_serial.clone());
        async move {
            wait_for("the manager to swap", || {
                handle.current().credentials().serial() == serial.as_slice()
            })
            .await;
            let seen = handshakes.load(Ordering::Relaxed);
            wait_for("a handshake after the swap", || {
                handshakes.load(Ordering::Relaxed) > seen + 1
            })
            .await;
            assert_eq!(
                *last_serial.lock().unwrap(),
                serial,
                "new handshakes present the new certificate"
            );
        }
    };
    let stats = manager.stats();
    expect_served(serial_of(&initial)).await;

    // 1. Atomic renames of plain files.
    let b = rot.svid();
    rot.atomic_rename(&b);
    expect_served(serial_of(&b)).await;

    // 2. A half-written certificate in place: rejected, the old one stays; then completed.
    let c = rot.svid();
    let failed = stats.failed_rotations();
    write(
        &dir.path().join("cert.pem"),
        &c.cert_pem[..c.cert_pem.len() / 2],
    );
    wait_for("the half-written file to be rejected", || {
        stats.failed_rotations() > failed
    })
    .await;
    expect_served(serial_of(&b)).await;
    rot.atomic_rename(&c);
    expect_served(serial_of(&c)).await;

    // 3. Switch to the Kubernetes `..data` layout, then 4. swap `..data` to a new version.
    let d = rot.svid();
    rot.data_swap(&d.cert_pem, &d.key_pem, &d.bundle_pem);
    expect_served(serial_of(&d)).await;
    let e = rot.svid();
    rot.data_swap(&e.cert_pem, &e.key_pem, &e.bundle_pem);
    expect_served(serial_of(&e)).await;

    // 5. A swap to an invalid set (certificate with another workload's key): rejected.
    let f = rot.svid();
    let g = rot.svid();
    let failed = stats.failed_rotations();
    rot.data_swap(&f.cert_pem, &g.key_pem, &f.bundle_pem);
    wait_for("the mismatched set to be rejected", || {
        stats.failed_rotations() > failed
    })
    .await;
    expect_served(serial_of(&e)).await;

    // 6. And a valid swap afterwards still goes through.
    let h = rot.svid();
    rot.data_swap(&h.cert_pem, &h.key_pem, &h.bundle_pem);
    expect_served(serial_of(&h)).await;

    stop.store(true, Ordering::Relaxed);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "connections failed during rotation: {failures:#?}"
    );
    assert_eq!(stats.rotations(), 5, "B, C, D, E, H");
    eprintln!(
        "{} handshakes during rotation",
        handshakes.load(Ordering::Relaxed)
    );
    assert!(manager.not_after() == h.not_after);
}

/// The istioCa source reads Istio's file names in its certDir and rotates when meshd-xds
/// replaces them (atomically, with the same helper it uses).
#[tokio::test]
async fn istio_ca_source_loads_istio_names_and_rotates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate(TD).unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let put = |svid: &IssuedSvid| {
        for (name, pem, mode) in [
            (ISTIO_ROOT_CERT_FILE, &svid.bundle_pem, 0o644),
            (ISTIO_KEY_FILE, &svid.key_pem, 0o600),
            (ISTIO_CERT_CHAIN_FILE, &svid.cert_pem, 0o644),
        ] {
            meshd_identity::dev_ca::write_atomic(&certs.join(name), pem.as_bytes(), mode).unwrap();
        }
    };
    let first = ca.issue("bar", "vm", Duration::from_secs(3600)).unwrap();
    put(&first);
    let source = IdentitySource::IstioCa(IstioCaSource {
        cert_dir: certs.clone(),
        spiffe_id: Some(first.id.clone()),
    });
    source.check_paths().unwrap();
    let manager = IdentityManager::start(&source).await.unwrap();
    let handle = manager.handle();
    assert_eq!(handle.current().id(), &first.id);

    let mut rx = handle.subscribe();
    let second = ca.issue("bar", "vm", Duration::from_secs(3600)).unwrap();
    put(&second);
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.current().not_after(), second.not_after);
}
