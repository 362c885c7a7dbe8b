//! The SPIRE harness (integration/spire.rs: real `spire-server` and `spire-agent` v1.13.3) is
//! what the identity tests say it is: registration entries created through the server's admin
//! socket reach the agent, and a workload calling the agent's Workload API gets an
//! X.509-SVID with the registered SPIFFE ID that chains to the server's bundle, and only the
//! SVIDs its selectors match.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshd_identity::{Error, FilesSource, IdentityManager, IdentitySource, SpiffeId, SpireSource};
use std::net::SocketAddr;

use meshd_integration::loopback::Loopback;
use meshd_integration::mesh::{Identity, Mesh};
use meshd_integration::spire::{Spire, SpireOptions};
use meshd_integration::spire_watch::{
    my_uid, presented, runtime, spire_sync_wait, wait_new_serial,
};
use meshd_integration::{Meshd, Workspace, eventually, http};

/// meshd's own loader and verifier over what the agent handed out, with `bundle` as the roots.
fn load(svids: &Path, bundle: &Path, id: &str) -> Result<meshd_identity::CredentialSet, Error> {
    FilesSource {
        cert: svids.join("svid.0.pem"),
        key: svids.join("svid.0.key"),
        bundle: bundle.to_path_buf(),
        federated_bundles: Default::default(),
        spiffe_id: Some(SpiffeId::new(id).expect("a valid SPIFFE ID")),
    }
    .load()
}

#[test]
fn the_agent_hands_a_registered_workload_an_svid_that_chains_to_the_server_bundle() {
    let lo = Loopback::take();
    let ttl = Duration::from_secs(600);
    let spire = Spire::start_with(
        lo.host(1),
        SpireOptions {
            x509_svid_ttl: ttl,
            ..SpireOptions::default()
        },
    );
    let mine = "spiffe://spire.test/ns/shop/sa/web";
    let others = "spiffe://spire.test/ns/shop/sa/db";
    let uid = my_uid();
    let entry = spire.create_entry(mine, &[&format!("unix:uid:{uid}")]);
    let other_entry = spire.create_entry(others, &[&format!("unix:uid:{}", uid + 4242)]);

    // Both entries are registered, under the agent.
    let shown = spire.server_cli(&["entry", "show"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    for (id, spiffe_id) in [(&entry, mine), (&other_entry, others)] {
        assert!(
            shown.contains(id.as_str()),
            "entry {id} not listed:\n{shown}"
        );
        assert!(
            shown.contains(spiffe_id),
            "{spiffe_id} not listed:\n{shown}"
        );
    }
    assert!(shown.contains(spire.agent_id()), "{shown}");

    let ws = Workspace::new();
    let svids = ws.path().join("svids");
    let fetched = spire.fetch_x509(&svids);
    // Only the entry whose selectors match this process: one SVID, the registered ID.
    assert!(fetched.contains(mine), "{fetched}");
    assert!(!fetched.contains(others), "{fetched}");
    assert!(
        !svids.join("svid.1.pem").exists(),
        "a second SVID: {fetched}"
    );

    // The server's bundle, read through its admin socket: meshd's verifier accepts the SVID
    // with the registered ID (chain, validity, key match, exactly one SPIFFE URI SAN).
    let bundle = ws.write("spire-bundle.pem", &spire.bundle_pem());
    let set = load(&svids, &bundle, mine).expect("the agent's SVID verifies against the bundle");
    assert_eq!(set.id().to_string(), mine);
    // The lifetime the server was configured to sign (it backdates notBefore a little).
    let credentials = set.credentials();
    let lifetime = credentials.not_after() - credentials.not_before();
    assert!(
        lifetime.whole_seconds() >= ttl.as_secs() as i64
            && lifetime.whole_seconds() <= ttl.as_secs() as i64 + 60,
        "SVID lifetime {lifetime}, server TTL {ttl:?}"
    );
    // The bundle the agent hands out with it is the server's.
    let handed = std::fs::read_to_string(svids.join("bundle.0.pem")).expect("bundle.0.pem");
    assert_eq!(handed.trim(), spire.bundle_pem().trim());

    // An independent verifier agrees.
    let verify = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&bundle)
        .arg(svids.join("svid.0.pem"))
        .output()
        .expect("run openssl (Debian package openssl)");
    assert!(
        verify.status.success(),
        "openssl verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    // Refusals: the same SVID against roots that did not sign it, and under another ID.
    let foreign = ws.ca().join(meshd_identity::dev_ca::CA_CERT_FILE);
    let refused = load(&svids, &foreign, mine).expect_err("another CA's roots");
    assert!(
        matches!(refused.cause(), Error::UnknownIssuer { .. }),
        "{refused:?}"
    );
    let refused = load(&svids, &bundle, others).expect_err("an ID it does not carry");
    assert!(
        matches!(refused.cause(), Error::IdentityMismatch { .. }),
        "{refused:?}"
    );
}

#[test]
fn a_restarted_agent_serves_again_and_a_short_ttl_rotates() {
    let lo = Loopback::take();
    // Short enough that the agent renews during the test (it renews at half life).
    let ttl = Duration::from_secs(20);
    let mut spire = Spire::start_with(
        lo.host(1),
        SpireOptions {
            x509_svid_ttl: ttl,
            ..SpireOptions::default()
        },
    );
    let id = "spiffe://spire.test/ns/shop/sa/web";
    spire.create_entry(id, &[&format!("unix:uid:{}", my_uid())]);
    let ws = Workspace::new();
    let bundle = ws.write("spire-bundle.pem", &spire.bundle_pem());
    spire.fetch_x509(&ws.path().join("first"));
    load(&ws.path().join("first"), &bundle, id).expect("first SVID");

    // Agent gone: the Workload API socket does not answer.
    spire.kill_agent();
    let down = spire.try_fetch_x509(&ws.path().join("down"));
    assert!(down.is_err(), "fetched from a killed agent: {down:?}");

    // Back with the SVID it kept on disk (a join token attests once), same ID.
    spire.restart_agent();
    let dir = ws.path().join("restarted");
    spire.fetch_x509(&dir);
    let restarted = load(&dir, &bundle, id).expect("an SVID after the restart verifies");

    // Then, from this same agent run, a renewed SVID before the old one expires: the agent
    // renews at half life, so within one TTL of the restart.
    let deadline = Instant::now() + ttl + ttl / 2;
    for n in 0.. {
        assert!(
            Instant::now() < deadline,
            "no renewed SVID within {:?} (TTL {ttl:?}); agent log:\n{}",
            ttl + ttl / 2,
            spire.agent_log()
        );
        std::thread::sleep(Duration::from_secs(1));
        let dir = ws.path().join(format!("renewed-{n}"));
        spire.fetch_x509(&dir);
        let renewed = load(&dir, &bundle, id).expect("a renewed SVID verifies");
        if renewed.credentials().serial() != restarted.credentials().serial() {
            assert!(renewed.not_after() > restarted.not_after(), "renewed later");
            assert!(
                restarted.not_after() > time_now(),
                "renewed only after the old SVID expired"
            );
            break;
        }
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn spire_source(spire: &Spire, id: Option<&str>) -> IdentitySource {
    IdentitySource::Spire(SpireSource {
        socket: format!("unix://{}", spire.workload_socket().display()),
        spiffe_id: id.map(|id| SpiffeId::new(id).expect("a valid SPIFFE ID")),
    })
}

#[test]
fn identity_spire_follows_the_agent_through_rotation_and_an_agent_restart() {
    let lo = Loopback::take();
    let ttl = Duration::from_secs(20);
    let mut spire = Spire::start_with(
        lo.host(1),
        SpireOptions {
            x509_svid_ttl: ttl,
            ..SpireOptions::default()
        },
    );
    let id = "spiffe://spire.test/ns/mesh/sa/meshd";
    spire.create_entry(id, &[&format!("unix:uid:{}", my_uid())]);
    // What a workload would fetch first: the entry has reached the agent.
    let ws = Workspace::new();
    spire.fetch_x509(&ws.path().join("probe"));

    let rt = runtime();
    let manager = rt
        .block_on(IdentityManager::start(&spire_source(&spire, Some(id))))
        .expect("meshd's identity from the agent");
    let handle = manager.handle();
    let first = handle.current();
    assert_eq!(first.id().to_string(), id);
    // The roots meshd took from the stream are the server's.
    let bundle = ws.write("spire-bundle.pem", &spire.bundle_pem());
    let server_roots =
        meshd_identity::pem::parse_certificates(&std::fs::read(&bundle).expect("read the bundle"))
            .expect("PEM");
    let td = meshd_identity::TrustDomain::new("spire.test").expect("trust domain");
    assert_eq!(first.bundle().roots(&td), Some(server_roots.as_slice()));

    // The agent renews at half life: meshd swaps the renewed SVID in.
    let renewed = wait_new_serial(&handle, first.credentials().serial(), ttl + ttl / 2, &spire);
    assert_eq!(renewed.id().to_string(), id);
    assert!(renewed.not_after() > first.not_after());
    assert!(manager.stats().rotations() >= 1);

    // Agent gone mid-run: meshd keeps the SVID it has.
    spire.kill_agent();
    std::thread::sleep(Duration::from_secs(3));
    let kept = handle.current();
    assert!(
        kept.not_after() > time_now(),
        "the kept SVID is still valid"
    );
    assert_eq!(kept.id().to_string(), id);

    // Back: meshd reconnects and takes the restarted agent's SVID.
    spire.restart_agent();
    let after = wait_new_serial(&handle, kept.credentials().serial(), ttl * 2, &spire);
    assert_eq!(after.id().to_string(), id);
    drop(manager);
}

#[test]
fn identity_spire_refuses_to_start_without_a_usable_svid_and_says_why() {
    let lo = Loopback::take();
    let spire = Spire::start(lo.host(1));
    let rt = runtime();
    let start = |source: &IdentitySource| match rt.block_on(IdentityManager::start(source)) {
        Ok(_) => panic!("started without a usable SVID"),
        Err(e) => e,
    };
    let is_agent_error = |e: &Error| matches!(e.cause(), Error::WorkloadApi { .. });

    // Registered for nobody here: the agent has no SVID for meshd (yet) — wait, not fatal.
    let none = start(&spire_source(&spire, None));
    assert!(
        is_agent_error(&none) && none.curable_by_new_files(),
        "{none}"
    );

    // An SVID exists, but not the configured ID.
    spire.create_entry(
        "spiffe://spire.test/ns/mesh/sa/other",
        &[&format!("unix:uid:{}", my_uid())],
    );
    let ws = Workspace::new();
    spire.fetch_x509(&ws.path().join("probe"));
    let wrong = start(&spire_source(
        &spire,
        Some("spiffe://spire.test/ns/mesh/sa/meshd"),
    ));
    assert!(
        is_agent_error(&wrong) && wrong.curable_by_new_files(),
        "{wrong}"
    );
    assert!(wrong.to_string().contains("sa/other"), "{wrong}");

    // No agent at the socket: wait (not ready), with the socket named.
    let away = IdentitySource::Spire(SpireSource {
        socket: format!("unix://{}", ws.path().join("no-agent.sock").display()),
        spiffe_id: None,
    });
    let err = start(&away);
    assert!(is_agent_error(&err) && err.curable_by_new_files(), "{err}");
    assert!(err.to_string().contains("no-agent.sock"), "{err}");

    // Not a Unix socket: a configuration error, fatal.
    for socket in [
        "tcp://127.0.0.1:8081",
        "unix://relative.sock",
        "/run/spire/agent.sock",
    ] {
        let source = IdentitySource::Spire(SpireSource {
            socket: socket.into(),
            spiffe_id: None,
        });
        let err = source.check_paths().expect_err(socket);
        assert!(matches!(err, Error::Config { .. }), "{socket}: {err}");
    }
}

#[test]
fn meshd_waits_for_the_agent_then_serves_and_rotates_its_spire_svid() {
    let mut mesh = Mesh::web_db();
    let b = mesh.ip(Mesh::DB);
    let ttl = Duration::from_secs(20);
    // The mesh's trust domain, so the SVID is the identity the mesh expects of db.
    let spire = Spire::start_with(
        mesh.ip(200),
        SpireOptions {
            trust_domain: "cluster.local".into(),
            x509_svid_ttl: ttl,
            ..SpireOptions::default()
        },
    );
    let id = "spiffe://cluster.local/ns/shop/sa/db";
    mesh.node_mut("b").identity = Identity::Spire {
        socket: spire.workload_socket(),
        spiffe_id: id.into(),
    };
    mesh.write();
    let mut command = Command::new(meshd_integration::meshd_bin());
    command.args(["run", "--config"]).arg(mesh.config("b"));
    let mut meshd = Meshd::spawn_starting(command);

    // Nothing registered for meshd yet: running, not ready, the agent's answer as the reason.
    let ready = SocketAddr::new(b, 15021);
    let body = eventually("readiness names the SPIRE agent", || {
        let (status, body) = http(ready, "GET", "/healthz/ready")?;
        (status == 500 && body.contains("SPIRE agent at unix://")).then_some(body)
    });
    assert!(body.contains("waiting: identity: "), "{body}");
    assert_eq!(meshd.wait_exit(Duration::ZERO), None, "meshd exited");

    // Registered: meshd takes its SVID by itself and becomes ready with it.
    spire.create_entry(id, &[&format!("unix:uid:{}", my_uid())]);
    assert!(
        meshd.wait_ready(spire_sync_wait()),
        "not ready once registered:\n{}\nagent log:\n{}",
        meshd.stderr(),
        spire.agent_log()
    );
    let admin = SocketAddr::new(b, 15000);
    let (identity, serial) = presented(admin).expect("meshd status certs");
    assert_eq!(identity, id);

    // The agent renews at half life; meshd presents the renewed SVID.
    let deadline = Instant::now() + ttl + ttl / 2;
    loop {
        let (identity, now) = presented(admin).expect("meshd status certs");
        assert_eq!(identity, id);
        if now != serial {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "meshd still presents serial {serial} after {:?}:\n{}",
            ttl + ttl / 2,
            meshd.stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
