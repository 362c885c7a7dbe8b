//! Start-up faults that time or another agent cures: meshd keeps running, not ready (readiness
//! 500 naming the reason, systemd's STATUS saying it), serves nothing, and becomes ready by
//! itself once the certificate files are valid or the port is free. Configuration only a
//! person can fix still exits 78 at once. Real meshd processes, each test on a loopback range
//! of its own (`meshd_integration::mesh`).
//!
//! Each test: A (shop/web, dev CA identity) reaches B (shop/db) through A's listener 16001 →
//! B's echo server; no policies. B is the machine that starts in trouble.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_identity::DevCa;
use meshd_integration::certs;
use meshd_integration::mesh::{Identity, Mesh};
use meshd_integration::resources::NAMESPACE;
use meshd_integration::{Meshd, NotifySocket, Workspace, eventually, http};

/// B's explicit listener (to nowhere in particular: B's own echo server), so a test can see
/// that B's outbound side is not serving either.
const B_LISTENER: u16 = 16005;

struct Setup {
    mesh: Mesh,
    /// The mesh's files: `a.yaml`, `b.yaml`, `mesh/` (both nodes' configuration directory).
    ws: Arc<Workspace>,
    a: IpAddr,
    b: IpAddr,
    /// B's spiffe-helper directory, when B takes its identity from files.
    tls: PathBuf,
}

impl Setup {
    /// A and B on a loopback range of their own; B's identity from the spiffe-helper
    /// directory `tls/` when `files`, else from the dev CA.
    fn new(files: bool) -> Setup {
        let mut mesh = Mesh::web_db();
        mesh.shared_dir = true;
        let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
        let port = mesh.echo(Mesh::DB);
        // No labels: there are no policies to select by them.
        let db = mesh.workload_mut("db");
        db.labels.clear();
        db.ports.push(("pg".into(), port));
        let target = SocketAddr::new(b, port);
        mesh.node_mut("a").listener(16001, target);
        let tls = mesh.ws.path().join("tls");
        let node_b = mesh.node_mut("b");
        node_b.listener(B_LISTENER, target);
        if files {
            std::fs::create_dir(&tls).unwrap();
            node_b.identity = Identity::SpiffeHelper(tls.clone());
        }
        mesh.write();
        Setup {
            ws: Arc::clone(&mesh.ws),
            mesh,
            a,
            b,
            tls,
        }
    }

    fn b_config(&self) -> PathBuf {
        self.mesh.config("b")
    }

    fn command(&self, config: &Path) -> Command {
        let mut command = Command::new(meshd_integration::meshd_bin());
        command.args(["run", "--config"]).arg(config);
        command
    }

    /// Starts A and waits until it is ready.
    fn start_a(&self) -> Meshd {
        self.mesh.start("a")
    }

    /// B's readiness: (status, body); `None` until its endpoint is bound.
    fn try_ready(&self) -> Option<(u16, String)> {
        http(SocketAddr::new(self.b, 15021), "GET", "/healthz/ready")
    }

    /// B's readiness, which must answer.
    fn ready(&self) -> (u16, String) {
        self.try_ready()
            .expect("readiness answers while meshd waits")
    }

    /// Whether an application on A gets its echo from B through the mesh. A connection that
    /// stalls (B's HBONE port held by a socket that never accepts: A's meshd waits out its
    /// handshake timeout, later on a loaded machine) got no echo either.
    fn meshed(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((self.a, 16001)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
        if stream.write_all(b"ping").is_err() {
            return false;
        }
        let mut got = [0u8; 4];
        stream.read_exact(&mut got).is_ok() && &got == b"ping"
    }

    /// Nothing of B's data plane accepts: no HBONE listener, no explicit listener.
    fn assert_b_serves_nothing(&self) {
        for port in [15008, B_LISTENER] {
            let refused =
                TcpStream::connect_timeout(&SocketAddr::new(self.b, port), Duration::from_secs(2));
            assert!(refused.is_err(), "B accepts on {port} while not ready");
        }
    }

    /// The workspace CA, as `meshd ca` wrote it.
    fn ca(&self) -> DevCa {
        DevCa::load(&self.ws.ca()).unwrap()
    }

    /// Writes a valid SVID for shop/db into B's directory (each file by rename).
    fn write_valid(&self) {
        self.ca()
            .issue_to_dir("shop", "db", Duration::from_secs(3600), &self.tls)
            .unwrap();
    }

    /// Writes B's certificate, key and bundle (the workspace root), each by rename.
    fn write_files(&self, cert: &str, key: &str) {
        let bundle = self.ca().root_pem().to_string();
        for (file, text) in [
            ("svid_key.pem", key),
            ("svid.pem", cert),
            ("svid_bundle.pem", &bundle),
        ] {
            let tmp = self.tls.join(format!(".{file}.test"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.tls.join(file)).unwrap();
        }
    }
}

/// A shop/db leaf (B's identity) from the CA in `ca_dir`, valid from `from` to `until`
/// (relative to now); (certificate, key) PEM.
fn leaf(ca_dir: &Path, from: time::Duration, until: time::Duration) -> (String, String) {
    certs::leaf(ca_dir, NAMESPACE, "db", from, until)
}

/// The shared scenario: B starts on unusable identity files and must wait (running, readiness
/// 500 naming `reason`, nothing served, A's traffic refused); a valid SVID written over them
/// makes it ready by itself, and A's traffic then flows.
fn waits_for_valid_files(setup: &Setup, reason: &str) -> Meshd {
    let mut b = Meshd::spawn_starting(setup.command(&setup.b_config()));
    let _a = setup.start_a();
    let (status, body) = eventually("readiness names the reason", || {
        let (status, body) = setup.try_ready()?;
        body.contains(reason).then_some((status, body))
    });
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("waiting: identity: "), "{body}");
    // Still waiting a few retries later: running, not ready, serving nothing.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(b.wait_exit(Duration::ZERO), None, "meshd exited");
    assert_eq!(setup.ready().0, 500);
    assert!(b.ready.is_empty() && !b.wait_ready(Duration::ZERO));
    setup.assert_b_serves_nothing();
    assert!(!setup.meshed(), "traffic reached B before it was ready");
    let log = b.stderr();
    assert_eq!(
        log.matches("not ready, retrying: identity: ").count(),
        1,
        "the reason is logged once, not at every retry:\n{log}"
    );

    setup.write_valid();
    assert!(b.wait_ready(Duration::from_secs(15)), "{}", b.stderr());
    assert_eq!(setup.ready(), (200, "ready\n".to_string()));
    eventually("traffic through B", || setup.meshed().then_some(()));
    b
}

/// Holds: a certificate whose notBefore is a day away (a clock that lags at boot) keeps B
/// running and not ready, and says so to systemd (STATUS, and the start timeout extended);
/// a valid certificate written over it makes B ready (READY=1) and it carries traffic.
#[test]
fn a_certificate_not_yet_valid_at_start_is_waited_for() {
    let setup = Setup::new(true);
    let day = time::Duration::days(1);
    let (cert, key) = leaf(&setup.ws.ca(), day, day * 2);
    setup.write_files(&cert, &key);
    let mut notify = NotifySocket::new(setup.ws.path());
    let mut command = setup.command(&setup.b_config());
    command.env("NOTIFY_SOCKET", &notify.path);
    let mut b = Meshd::spawn_starting(command);
    let waiting = notify.wait_for("STATUS=waiting: identity: ");
    assert!(
        waiting.contains("svid.pem: certificate is not valid before")
            && waiting.contains("EXTEND_TIMEOUT_USEC=30000000"),
        "{waiting}"
    );
    assert!(!notify.seen().iter().any(|m| m.contains("READY=1")));
    let (status, body) = setup.ready();
    assert_eq!(status, 500);
    assert!(body.contains("certificate is not valid before"), "{body}");
    setup.assert_b_serves_nothing();
    setup.write_valid();
    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("STATUS=serving configuration generation 1"));
    assert!(b.wait_ready(Duration::from_secs(5)));
    drop(b);

    // The same through the whole scenario, traffic included.
    let (cert, key) = leaf(&setup.ws.ca(), day, day * 2);
    setup.write_files(&cert, &key);
    waits_for_valid_files(&setup, "svid.pem: certificate is not valid before");
}

/// Holds: an expired certificate at start is waited out the same way.
#[test]
fn an_expired_certificate_at_start_is_waited_for() {
    let setup = Setup::new(true);
    let day = time::Duration::days(1);
    let (cert, key) = leaf(&setup.ws.ca(), -day * 2, -day);
    setup.write_files(&cert, &key);
    waits_for_valid_files(&setup, "svid.pem: certificate expired at");
}

/// Holds: a half-finished rotation (the new key written, the certificate still the old one)
/// is waited out, not fatal.
#[test]
fn a_key_of_another_certificate_at_start_is_waited_for() {
    let setup = Setup::new(true);
    let hour = time::Duration::hours(1);
    let (cert, _) = leaf(&setup.ws.ca(), -hour, hour);
    let (_, other_key) = leaf(&setup.ws.ca(), -hour, hour);
    setup.write_files(&cert, &other_key);
    waits_for_valid_files(
        &setup,
        "svid_key.pem: private key does not match the certificate's public key",
    );
}

/// Holds: a certificate from a CA the bundle does not hold yet (the bundle not yet rotated) is
/// waited out, not fatal.
#[test]
fn a_chain_the_bundle_does_not_vouch_for_at_start_is_waited_for() {
    let setup = Setup::new(true);
    let other_ca = setup.ws.path().join("other-ca");
    DevCa::init("cluster.local", &other_ca).unwrap();
    let hour = time::Duration::hours(1);
    let (cert, key) = leaf(&other_ca, -hour, hour);
    setup.write_files(&cert, &key);
    waits_for_valid_files(
        &setup,
        "svid.pem: certificate does not chain to a trusted root of trust domain cluster.local",
    );
}

/// Holds: a policy dropped into the configuration directory while B waits for its
/// certificate is in force once B is ready (the directory is read again after a wait), and
/// later changes still apply.
#[test]
fn a_configuration_change_while_waiting_is_in_force_once_ready() {
    let setup = Setup::new(true);
    let day = time::Duration::days(1);
    let (cert, key) = leaf(&setup.ws.ca(), -day * 2, -day);
    setup.write_files(&cert, &key);
    let mut b = Meshd::spawn_starting(setup.command(&setup.b_config()));
    let _a = setup.start_a();
    eventually("B waits", || {
        let (_, body) = setup.try_ready()?;
        body.contains("certificate expired at").then_some(())
    });
    let deny = setup.ws.write(
        "mesh/deny.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny-web, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
",
    );
    setup.write_valid();
    assert!(b.wait_ready(Duration::from_secs(15)), "{}", b.stderr());
    assert!(
        !setup.meshed(),
        "the DENY written while waiting is not in force"
    );
    // SIGHUP rather than the watcher: the ready line is printed a moment before the
    // configuration directory is watched, and a change in between would wait for the next.
    std::fs::remove_file(deny).unwrap();
    b.signal("HUP");
    eventually("the DENY's removal is applied", || {
        setup.meshed().then_some(())
    });
}

/// Holds: a meshd waiting at start stops at once on SIGTERM, with status 0 (systemd's stop
/// must not wait for a certificate).
#[test]
fn a_waiting_meshd_stops_on_sigterm() {
    let setup = Setup::new(true);
    let day = time::Duration::days(1);
    let (cert, key) = leaf(&setup.ws.ca(), -day * 2, -day);
    setup.write_files(&cert, &key);
    let mut b = Meshd::spawn_starting(setup.command(&setup.b_config()));
    eventually("B waits", || {
        let (_, body) = setup.try_ready()?;
        body.contains("certificate expired at").then_some(())
    });
    b.signal("TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(5)),
        Some(0),
        "{}",
        b.stderr()
    );
}

#[test]
fn a_certificate_file_that_hangs_does_not_stop_sigterm() {
    // B's certificate replaced by a FIFO no one writes (in life, a hung network filesystem):
    // the identity reload blocks on it in a thread of the blocking pool. SIGTERM must still
    // end meshd: its runtime does not wait for that thread forever.
    let setup = Setup::new(true);
    setup.write_valid();
    let mut b = Meshd::spawn(setup.command(&setup.b_config()));
    let cert = setup.tls.join("svid.pem");
    std::fs::remove_file(&cert).unwrap();
    let made = Command::new("mkfifo").arg(&cert).status().unwrap();
    assert!(made.success(), "mkfifo");
    // The certificate watcher debounces for 2 s, then reads: the read is hung after that.
    std::thread::sleep(Duration::from_secs(4));
    b.signal("TERM");
    // Drain (5 s) and then the runtime's shutdown bound; a meshd still running is killed
    // when `b` drops.
    let exit = b.wait_exit(Duration::from_secs(15));
    assert_eq!(exit, Some(0), "{}", b.stderr());
}

/// The scenario for a port another process holds: B runs, not ready, readiness names the
/// port; the reason is logged once across the retries; once freed, B is ready and carries
/// traffic.
fn waits_for_port(port: u16, what: &str) {
    let setup = Setup::new(false);
    let held = SocketAddr::new(setup.b, port);
    let holder = TcpListener::bind(held).unwrap();
    let mut b = Meshd::spawn_starting(setup.command(&setup.b_config()));
    let _a = setup.start_a();
    let reason = format!("cannot listen on {held}{what}: Address already in use");
    let body = eventually("readiness names the port", || {
        let (status, body) = setup.try_ready()?;
        (status == 500 && body.contains(&reason)).then_some(body)
    });
    assert!(body.contains("waiting: "), "{body}");
    // 100 + 200 + 400 + 800 ms: at least four tries.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(b.wait_exit(Duration::ZERO), None, "meshd exited");
    assert!(!b.wait_ready(Duration::ZERO));
    assert!(!setup.meshed(), "traffic reached B before it was ready");
    let log = b.stderr();
    assert_eq!(
        log.matches("not ready, retrying: cannot listen on").count(),
        1,
        "logged once per distinct error:\n{log}"
    );

    drop(holder);
    assert!(b.wait_ready(Duration::from_secs(15)), "{}", b.stderr());
    assert!(b.ready.contains(&held.to_string()), "{}", b.ready);
    assert_eq!(setup.ready(), (200, "ready\n".to_string()));
    eventually("traffic through B", || setup.meshed().then_some(()));
}

/// Holds: the HBONE port held by another process at start is retried until free.
#[test]
fn an_hbone_port_in_use_at_start_is_retried_until_free() {
    waits_for_port(15008, "");
}

/// Holds: an explicit listener's port held by another process is retried until free.
#[test]
fn a_listener_port_in_use_at_start_is_retried_until_free() {
    waits_for_port(B_LISTENER, "");
}

/// Holds: an operator port (metrics) held by another process is retried until free, with
/// readiness (bound first) saying so.
#[test]
fn an_operator_port_in_use_at_start_is_retried_until_free() {
    waits_for_port(15020, " (Metrics)");
}

/// Runs B on `config` and expects exit 78 within a few seconds; its stderr.
fn exits_78(setup: &Setup, config: &Path) -> String {
    let mut b = Meshd::spawn_starting(setup.command(config));
    let code = b.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(78), "{}", b.stderr());
    b.stderr()
}

/// Holds: what only a person can fix still exits 78 at once, even while the certificate
/// would be waited for: an unknown key, an unsafe listener, an identity directory below a
/// regular file (it can never exist).
#[test]
fn configuration_a_person_must_fix_still_exits_78() {
    let setup = Setup::new(true);
    let day = time::Duration::days(1);
    let (cert, key) = leaf(&setup.ws.ca(), day, day * 2);
    setup.write_files(&cert, &key);
    let config = setup.b_config();
    let text = std::fs::read_to_string(&config).unwrap();
    let started = Instant::now();

    std::fs::write(&config, format!("{text}noSuchKey: 1\n")).unwrap();
    let stderr = exits_78(&setup, &config);
    assert!(stderr.contains("noSuchKey"), "{stderr}");

    std::fs::write(
        &config,
        text.replace("listen:\n", "listen:\n  socks5: 0.0.0.0:0\n"),
    )
    .unwrap();
    let stderr = exits_78(&setup, &config);
    assert!(
        stderr.contains("listen.socks5: 0.0.0.0:0 is not a loopback address"),
        "{stderr}"
    );

    let not_a_dir = setup.ws.path().join("a.yaml");
    let tls = setup.tls.display().to_string();
    std::fs::write(
        &config,
        text.replace(&tls, &not_a_dir.join("tls").display().to_string()),
    )
    .unwrap();
    let stderr = exits_78(&setup, &config);
    assert!(
        stderr.contains(&format!(
            "identity: spiffeHelper.dir: {} is a file, so {} can never exist",
            not_a_dir.display(),
            not_a_dir.join("tls").display()
        )),
        "{stderr}"
    );

    // A workload identity keyed by no service account, or pinned to another's ID.
    std::fs::write(
        &config,
        format!("{text}workloadIdentities: {{web: {{spiffeHelper: {{dir: {tls}}}}}}}\n"),
    )
    .unwrap();
    let stderr = exits_78(&setup, &config);
    assert!(
        stderr.contains("workloadIdentities.\"web\": the key must be <namespace>/<serviceAccount>"),
        "{stderr}"
    );
    std::fs::write(
        &config,
        format!("{text}workloadIdentities: {{shop/web: {{spiffeHelper: {{dir: {tls}, spiffeId: spiffe://cluster.local/ns/shop/sa/db}}}}}}\n"),
    )
    .unwrap();
    let stderr = exits_78(&setup, &config);
    assert!(
        stderr.contains("workloadIdentities.\"shop/web\".spiffeHelper.spiffeId: spiffe://cluster.local/ns/shop/sa/db is not this service account's identity spiffe://cluster.local/ns/shop/sa/web"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Holds: a workload identity whose directory holds another service account's SVID (shop/db's
/// where shop/web's is expected) keeps B waiting, not ready, the reason naming the workload's
/// identity and both IDs; shop/web's SVID written there makes it ready.
#[test]
fn a_workload_identity_of_another_service_account_at_start_is_waited_for() {
    let setup = Setup::new(true);
    setup.write_valid();
    let web = setup.ws.path().join("web-tls");
    let ca = setup.ca();
    ca.issue_to_dir("shop", "db", Duration::from_secs(3600), &web)
        .unwrap();
    let config = setup.b_config();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "{text}workloadIdentities: {{shop/web: {{spiffeHelper: {{dir: {}}}}}}}\n",
            web.display()
        ),
    )
    .unwrap();
    let mut b = Meshd::spawn_starting(setup.command(&config));
    let (status, body) = eventually("readiness names the workload identity", || {
        let (status, body) = setup.try_ready()?;
        body.contains("workload identity spiffe://cluster.local/ns/shop/sa/web")
            .then_some((status, body))
    });
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("spiffe://cluster.local/ns/shop/sa/db"),
        "{body}"
    );
    setup.assert_b_serves_nothing();

    ca.issue_to_dir("shop", "web", Duration::from_secs(3600), &web)
        .unwrap();
    assert!(b.wait_ready(Duration::from_secs(15)), "{}", b.stderr());
    assert_eq!(setup.ready(), (200, "ready\n".to_string()));
}
