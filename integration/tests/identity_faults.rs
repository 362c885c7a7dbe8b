//! Faults in the identity files across three machines (see `machines.rs`): garbage in place of
//! a certificate, a trust bundle rotated to a new root with an overlap window, and a
//! certificate that is not valid yet (clock skew). Each test names what must hold: which
//! connections fail and how, and that the others carry on with their bytes intact.
//!
//! Machines: `sleep` 10.215.0.1, `httpbin` 10.215.0.2, `notsleep` 10.215.0.3; no policies.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::path::Path;
use std::thread;
use std::time::Duration;

use meshd_integration::certs;
use meshd_integration::machines::{Cluster, Machine, NAMESPACE, SEED_CAST, write_atomic};
use meshd_integration::traffic::echo_transfer;
use meshd_integration::{echo_on, echo_roundtrip, eventually, meshd};

const SLEEP: usize = 0;
const HTTPBIN: usize = 1;
const NOTSLEEP: usize = 2;
const ECHO: u16 = 8000;

fn cluster(label: &str) -> Cluster {
    let c = Cluster::new(label, &SEED_CAST, "");
    for m in &c.machines {
        echo_on(m.listen(ECHO));
    }
    c
}

/// A hashed 256 KiB echo from `from` to `to` over the mesh.
fn transfer(from: &Machine, to: &Machine, seed: u64) -> Result<(), String> {
    let stream = from.connect(to.addr(ECHO)).map_err(|e| e.to_string())?;
    echo_transfer(stream, 256 << 10, seed)
}

/// How many times `m`'s log says `needle`.
fn count(m: &Machine, needle: &str) -> usize {
    m.meshd().stderr().matches(needle).count()
}

/// Holds: garbage written over a machine's certificate and key is rejected with a warning and
/// counted as a failed rotation; the machine keeps its certificate (same serial), its open
/// connection carries on, and a peer that never met it before still completes a handshake.
/// Valid files afterwards are picked up.
#[test]
fn certificate_files_replaced_with_garbage_keep_the_old_certificate() {
    let c = cluster("garbage");
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    let before = httpbin.serial();
    let mut held = sleep.connect(httpbin.addr(ECHO)).unwrap();
    assert!(echo_roundtrip(&mut held, b"before").is_some());

    let tls = httpbin.tls_dir();
    write_atomic(
        &tls.join("svid.pem"),
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
    );
    write_atomic(&tls.join("svid_key.pem"), "\u{0}\u{1}garbage\u{ff}");
    httpbin
        .meshd()
        .wait_for_log("rejected changed identity files; the previous certificate stays in force");
    eventually("the failed rotation is counted", || {
        httpbin
            .metrics()
            .contains("meshd_certificate_rotations_total{result=\"failure\"} ")
            .then_some(())
    });
    assert_eq!(httpbin.serial(), before, "the old certificate stays");
    assert!(
        echo_roundtrip(&mut held, b"after").is_some(),
        "held connection"
    );
    transfer(notsleep, httpbin, 1).expect("a new handshake with the old certificate");
    transfer(httpbin, sleep, 2).expect("and as a client");

    meshd(&[
        "ca",
        "issue",
        "--ca",
        &c.ws.ca().display().to_string(),
        "--namespace",
        NAMESPACE,
        "--service-account",
        "httpbin",
        "--out",
        &tls.display().to_string(),
    ]);
    eventually("valid files are picked up", || {
        (httpbin.serial() != before).then_some(())
    });
    transfer(sleep, httpbin, 3).unwrap();
}

/// Issues `sa`'s SVID from the CA in `ca` and installs its certificate and key (not the
/// bundle) into `m`'s identity directory, key first, each by rename.
fn install_leaf(c: &Cluster, ca: &Path, m: &Machine) {
    let out = c.ws.path().join(format!("issued-{}", m.name));
    meshd(&[
        "ca",
        "issue",
        "--ca",
        &ca.display().to_string(),
        "--namespace",
        NAMESPACE,
        "--service-account",
        m.sa,
        "--out",
        &out.display().to_string(),
    ]);
    for file in ["svid_key.pem", "svid.pem"] {
        let text = std::fs::read_to_string(out.join(file)).unwrap();
        write_atomic(&m.tls_dir().join(file), &text);
    }
}

/// Whether an application on `from` gets its echo from `to` through the mesh.
fn meshed(from: &Machine, to: &Machine) -> bool {
    let Ok(mut stream): Result<TcpStream, _> = from.connect(to.addr(ECHO)) else {
        return false;
    };
    echo_roundtrip(&mut stream, b"ping").is_some()
}

/// Holds: with both roots in every bundle (the overlap window) a machine moved to a leaf of
/// the new root talks to machines still on the old one, both ways; once the old root is
/// removed from a machine's bundle, peers with old-root certificates are refused by it both as
/// client and as server, with a certificate error in the log, while new-root peers carry on.
#[test]
fn trust_bundle_rotated_to_a_new_root_with_an_overlap_window() {
    let c = cluster("bundle");
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    let new_ca = c.ws.path().join("ca2");
    meshd(&[
        "ca",
        "init",
        "--trust-domain",
        "cluster.local",
        "--out",
        &new_ca.display().to_string(),
    ]);
    let old_root = std::fs::read_to_string(c.ws.ca().join("ca-cert.pem")).unwrap();
    let new_root = std::fs::read_to_string(new_ca.join("ca-cert.pem")).unwrap();

    // Overlap: every machine trusts both roots; notsleep moves to a new-root leaf.
    for m in &c.machines {
        write_atomic(
            &m.tls_dir().join("svid_bundle.pem"),
            &format!("{old_root}{new_root}"),
        );
    }
    for m in &c.machines {
        eventually(&format!("{} loads the two-root bundle", m.name), || {
            (count(m, "rotated identity") >= 1).then_some(())
        });
    }
    let old_serial = notsleep.serial();
    install_leaf(&c, &new_ca, notsleep);
    eventually("notsleep's new-root leaf in force", || {
        (notsleep.serial() != old_serial).then_some(())
    });
    for (i, (from, to)) in [
        (sleep, notsleep),
        (notsleep, sleep),
        (notsleep, httpbin),
        (httpbin, notsleep),
        (sleep, httpbin),
    ]
    .into_iter()
    .enumerate()
    {
        transfer(from, to, i as u64)
            .unwrap_or_else(|e| panic!("overlap: {} → {}: {e}", from.name, to.name));
    }

    // The old root leaves sleep and notsleep (sleep first moves to a new-root leaf); httpbin
    // keeps its old-root leaf.
    let old_serial = sleep.serial();
    install_leaf(&c, &new_ca, sleep);
    eventually("sleep's new-root leaf in force", || {
        (sleep.serial() != old_serial).then_some(())
    });
    let rotations: Vec<usize> = [sleep, notsleep]
        .iter()
        .map(|m| count(m, "rotated identity"))
        .collect();
    for m in [sleep, notsleep] {
        write_atomic(&m.tls_dir().join("svid_bundle.pem"), &new_root);
    }
    for (m, before) in [sleep, notsleep].into_iter().zip(rotations) {
        eventually(&format!("{} loads the new-root bundle", m.name), || {
            (count(m, "rotated identity") > before).then_some(())
        });
    }
    // Open HBONE connections to old-root peers are given a grace period (5 s) before they are
    // closed, so refusal is awaited rather than expected at once.
    for (from, to) in [
        (sleep, httpbin),
        (httpbin, sleep),
        (notsleep, httpbin),
        (httpbin, notsleep),
    ] {
        eventually(&format!("{} → {} refused", from.name, to.name), || {
            (!meshed(from, to)).then_some(())
        });
    }
    transfer(sleep, notsleep, 10).expect("new-root peers carry on");
    transfer(notsleep, sleep, 11).expect("new-root peers carry on");
    // The refusing side names the certificate problem; the refused side gets TLS's alert.
    let refused = httpbin.meshd().stderr();
    assert!(
        refused.contains("received fatal alert: CertificateUnknown"),
        "{refused}"
    );
    let log = sleep.meshd().stderr();
    let reasons: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("tls error with 10.215.0.2:"))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|l| l.contains("certificate does not chain to a trusted root")),
        "sleep's failed handshakes with httpbin name the certificate problem:\n{}",
        reasons.join("\n")
    );
}

/// Issues `m`'s SVID from the workspace CA with notBefore `starts_in` from now, as a machine
/// whose clock runs behind the issuer's would see it; (certificate, key) PEM.
fn not_yet_valid_leaf(c: &Cluster, m: &Machine, starts_in: Duration) -> (String, String) {
    let starts_in = time::Duration::try_from(starts_in).unwrap();
    certs::leaf(
        &c.ws.ca(),
        NAMESPACE,
        m.sa,
        starts_in,
        time::Duration::days(1),
    )
}

/// Holds: a certificate whose notBefore is still in the future (clock skew between issuer and
/// machine) is not put in force: the machine says so, keeps its certificate and its traffic
/// (bytes intact), and switches once the new certificate becomes valid, without another
/// change to the files.
#[test]
fn a_certificate_not_yet_valid_waits_until_it_is() {
    let c = cluster("skew");
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    let before = httpbin.serial();
    let (cert, key) = not_yet_valid_leaf(&c, httpbin, Duration::from_secs(4));
    write_atomic(&httpbin.tls_dir().join("svid_key.pem"), &key);
    write_atomic(&httpbin.tls_dir().join("svid.pem"), &cert);
    httpbin
        .meshd()
        .wait_for_log("changed identity files are not valid yet (clock skew?)");
    assert_eq!(httpbin.serial(), before, "not in force before notBefore");
    let mut n = 0;
    while httpbin.serial() == before {
        transfer(sleep, httpbin, n).expect("traffic while the new certificate waits");
        transfer(httpbin, notsleep, n).expect("as a client too");
        n += 1;
        assert!(n < 200, "the new certificate never came into force");
        thread::sleep(Duration::from_millis(50));
    }
    transfer(notsleep, httpbin, 1000).expect("a new handshake with the new certificate");
}
