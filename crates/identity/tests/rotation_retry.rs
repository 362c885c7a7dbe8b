//! The file watcher and certificates refused for their dates: a set that is not valid yet
//! (issuer clock ahead of ours) is retried until it is, while a permanently bad set is counted
//! and logged once, however many rescans see it.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use meshd_identity::{
    CredentialSet, Error, FilesSource, IdentityManager, IdentitySource, ManagerOptions,
};
use time::OffsetDateTime;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

/// Short enough that many rescans happen while a test waits.
const RESCAN: Duration = Duration::from_millis(100);

/// Replaces cert and key by atomic renames, as a certificate agent does.
fn install(dir: &Path, leaf: &Leaf) {
    for (name, body) in [("key.pem", &leaf.key_pem), ("cert.pem", &leaf.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, body).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A manager on `dir` serving `leaf` from `ca`, rescanning every [`RESCAN`].
async fn manager(dir: &Path, ca: &Ca, leaf: &Leaf) -> IdentityManager {
    install(dir, leaf);
    std::fs::write(dir.join("bundle.pem"), &ca.pem).unwrap();
    let source = FilesSource {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        bundle: dir.join("bundle.pem"),
        federated_bundles: Default::default(),
        spiffe_id: Some(id(WEB)),
    };
    let options = ManagerOptions {
        debounce: Duration::from_millis(50),
        rescan: RESCAN,
        ..ManagerOptions::default()
    };
    IdentityManager::start_with(&IdentitySource::Files(source), options)
        .await
        .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn serial(leaf: &Leaf) -> Vec<u8> {
    meshd_identity::x509::inspect_leaf(&leaf.der)
        .unwrap()
        .serial
}

#[tokio::test]
async fn not_yet_valid_set_is_picked_up_once_valid() {
    // An issuer whose clock runs 3 s ahead: refused at first, served once our clock catches up,
    // without any further file change; counted as one failure, not one per rescan.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let old = ca.issue(&LeafSpec::svid(WEB));
    let manager = manager(dir.path(), &ca, &old).await;
    let (handle, stats) = (manager.handle(), manager.stats());

    let mut spec = LeafSpec::svid(WEB);
    spec.not_before = OffsetDateTime::now_utc() + Duration::from_secs(3);
    let early = ca.issue(&spec);
    install(dir.path(), &early);
    wait_for(
        "the early set to be refused",
        Duration::from_secs(5),
        || stats.failed_rotations() == 1,
    )
    .await;
    assert_eq!(handle.current().credentials().serial(), serial(&old));

    wait_for(
        "the early set to be served",
        Duration::from_secs(10),
        || handle.current().credentials().serial() == serial(&early),
    )
    .await;
    assert_eq!(stats.rotations(), 1);
    assert_eq!(
        stats.failed_rotations(),
        1,
        "the retries were not recounted"
    );
}

#[tokio::test]
async fn permanently_bad_set_is_counted_once() {
    // A certificate with someone else's key never becomes valid: one failure, however many
    // rescans look at it, and the old certificate stays.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let old = ca.issue(&LeafSpec::svid(WEB));
    let manager = manager(dir.path(), &ca, &old).await;
    let stats = manager.stats();

    let (a, b) = (
        ca.issue(&LeafSpec::svid(WEB)),
        ca.issue(&LeafSpec::svid(WEB)),
    );
    install(
        dir.path(),
        &Leaf {
            key_pem: b.key_pem.clone(),
            ..a
        },
    );
    wait_for(
        "the mismatched set to be refused",
        Duration::from_secs(5),
        || stats.failed_rotations() == 1,
    )
    .await;
    // Ten rescans.
    tokio::time::sleep(RESCAN * 10).await;
    assert_eq!(stats.failed_rotations(), 1);
    assert_eq!(
        manager.handle().current().credentials().serial(),
        serial(&old)
    );
}

#[tokio::test]
async fn expired_set_is_counted_once() {
    // Time never cures an expired certificate, so it is not retried either.
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("root");
    let old = ca.issue(&LeafSpec::svid(WEB));
    let manager = manager(dir.path(), &ca, &old).await;
    let stats = manager.stats();

    let mut spec = LeafSpec::svid(WEB);
    spec.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    spec.not_after = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    install(dir.path(), &ca.issue(&spec));
    wait_for(
        "the expired set to be refused",
        Duration::from_secs(5),
        || stats.failed_rotations() == 1,
    )
    .await;
    tokio::time::sleep(RESCAN * 10).await;
    assert_eq!(stats.failed_rotations(), 1);
}

#[test]
fn intermediate_not_yet_valid() {
    // An intermediate whose notBefore is ahead of our clock is "not valid yet" (typed, so the
    // watcher retries it), not a generic untrusted chain.
    let root = Ca::new("root");
    let now = OffsetDateTime::now_utc();
    let not_before = (now + Duration::from_secs(3600))
        .replace_nanosecond(0)
        .unwrap();
    let inter = root.intermediate("intermediate", not_before, now + Duration::from_secs(7200));
    let leaf = inter.issue(&LeafSpec::svid(WEB));
    let creds =
        meshd_identity::Credentials::new(vec![leaf.der.clone(), inter.der.clone()], leaf.key())
            .unwrap();
    let err = CredentialSet::new(creds, root.bundle(TD), None).unwrap_err();
    assert_eq!(err, Error::NotYetValid { not_before });
    assert_eq!(err.valid_from(), Some(not_before));
}

#[test]
fn intermediate_expired() {
    // The same for an intermediate past its notAfter: typed, and not retried.
    let root = Ca::new("root");
    let now = OffsetDateTime::now_utc();
    let not_after = (now - Duration::from_secs(60))
        .replace_nanosecond(0)
        .unwrap();
    let inter = root.intermediate("intermediate", now - Duration::from_secs(7200), not_after);
    let leaf = inter.issue(&LeafSpec::svid(WEB));
    let creds =
        meshd_identity::Credentials::new(vec![leaf.der.clone(), inter.der.clone()], leaf.key())
            .unwrap();
    let err = CredentialSet::new(creds, root.bundle(TD), None).unwrap_err();
    assert_eq!(err, Error::Expired { not_after });
    assert_eq!(err.valid_from(), None);
}

#[test]
fn a_certificate_file_that_hangs_does_not_stall_the_runtime() {
    // A certificate path that blocks its reader (here a FIFO with no writer; in life a hung
    // network filesystem) must stall only the reload, not the runtime the proxy shares with
    // it: on one thread, a timer still fires while the read hangs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let fifo = path.join("cert.pem");
    let (ticks, ticked) = std::sync::mpsc::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let worker = std::thread::spawn(move || {
        runtime.block_on(async {
            let ca = Ca::new("root");
            let manager = manager(&path, &ca, &ca.issue(&LeafSpec::svid(WEB))).await;
            std::fs::remove_file(path.join("cert.pem")).unwrap();
            let made = std::process::Command::new("mkfifo")
                .arg(path.join("cert.pem"))
                .status()
                .unwrap();
            assert!(made.success(), "mkfifo");
            manager.reload();
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = ticks.send(());
        });
    });
    // A stalled runtime keeps reopening the FIFO on every rescan: its thread is left behind
    // (the test process ends without it) rather than joined, so the failure is not a hang.
    assert!(
        ticked.recv_timeout(Duration::from_secs(10)).is_ok(),
        "the runtime stalled while a certificate file hung"
    );
    // Release the reader on the blocking pool (opening the write end completes its open;
    // closing it gives EOF), so the runtime's shutdown, which waits for it, can finish.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    worker.join().unwrap();
}
