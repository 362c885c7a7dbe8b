//! VMs joined to istiod (Istio's own discovery server and CA, `integration/istiod/`) through
//! the rough parts: a resource meshd must refuse, istiod going away and coming back, meshd
//! restarting without istiod or without its token, a local policy beside istiod's, and a
//! workload behind a waypoint. Each test is a [`Fleet::web_db`]: web reaches db's two echo
//! servers through listeners on its machine, db's meshd enforces what istiod pushes.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use meshd_integration::fleet::{Fleet, PUSH_BOUND, RECONNECT_BOUND, TO_ADMIN, TO_PG};
use meshd_integration::mesh::Port;
use meshd_integration::resources::{NAMESPACE, Policy, Rule, principal};
use meshd_integration::{eventually, http};

/// db's DENY of web on port `port`.
fn deny_web_on(port: u16) -> Policy {
    Policy::deny("db-deny-web")
        .selector("app", "db")
        .rule(Rule::from(principal("web")).port(port))
}

/// The Authorization watch of db's connection as istiod records it: (nonce sent, nonce
/// acknowledged, last NACK error).
fn db_authorization_watch(fleet: &Fleet) -> Option<(String, String, String)> {
    let clients = fleet.istiod.clients();
    let db = clients.iter().find(|c| {
        c["identity"]
            .as_str()
            .is_some_and(|id| id.ends_with(&format!("/ns/{NAMESPACE}/sa/db")))
    })?;
    let watch = &db["watched"]["type.googleapis.com/istio.security.Authorization"];
    let text = |key: &str| watch[key].as_str().unwrap_or_default().to_string();
    Some((text("nonceSent"), text("nonceAcked"), text("lastError")))
}

#[test]
fn a_resource_meshd_cannot_read_is_nacked_and_its_last_good_version_kept() {
    let fleet = Fleet::web_db();
    let _db = fleet.start("b");
    let _web = fleet.start("a");
    fleet.istiod.apply(&deny_web_on(fleet.pg).yaml());
    let took = fleet.until(TO_PG, false, PUSH_BOUND);
    eprintln!("DENY enforced {took:?} after the apply returned");

    // The same policy with port 0: istiod's converter passes "0" through as destination port
    // 0 (stringToPort drops only what does not parse or exceeds 65535), which meshd refuses.
    fleet.istiod.apply(&deny_web_on(0).yaml());
    let error = eventually("db's meshd NACKs the policy with port 0", || {
        db_authorization_watch(&fleet)
            .and_then(|(_, _, error)| (!error.is_empty()).then_some(error))
    });
    assert!(
        error.contains("db-deny-web"),
        "the NACK names the resource: {error}"
    );
    // The last good version stays in force: pg denied, admin allowed.
    assert!(
        fleet.through(TO_PG, b"pg").is_none(),
        "the last good DENY was dropped"
    );
    assert!(fleet.through(TO_ADMIN, b"admin").is_some());

    // A good version again is ACKed and replaces it.
    fleet.istiod.apply(&deny_web_on(fleet.admin).yaml());
    fleet.until(TO_ADMIN, false, PUSH_BOUND);
    fleet.until(TO_PG, true, PUSH_BOUND);
    let (sent, acked, error) = db_authorization_watch(&fleet).expect("db connected");
    assert_eq!(sent, acked, "the good version is ACKed");
    assert!(error.is_empty(), "an ACK clears the NACK: {error}");
}

#[test]
fn namespace_and_mesh_wide_denies_from_istiod_bind_without_a_selector() {
    let fleet = Fleet::web_db();
    let _db = fleet.start("b");
    let _web = fleet.start("a");
    // No selector: every workload of namespace shop (scope NAMESPACE in istiod's output).
    let namespace_wide =
        Policy::deny("shop-deny-web-pg").rule(Rule::from(principal("web")).port(fleet.pg));
    fleet.istiod.apply(&namespace_wide.yaml());
    fleet.until(TO_PG, false, PUSH_BOUND);
    assert!(fleet.through(TO_ADMIN, b"admin").is_some());
    fleet
        .istiod
        .delete("AuthorizationPolicy", NAMESPACE, "shop-deny-web-pg");
    fleet.until(TO_PG, true, PUSH_BOUND);
    // In the root namespace: every workload of the mesh (scope GLOBAL).
    let mut mesh_wide =
        Policy::deny("mesh-deny-web-admin").rule(Rule::from(principal("web")).port(fleet.admin));
    mesh_wide.namespace = "istio-system".into();
    fleet.istiod.apply(&mesh_wide.yaml());
    fleet.until(TO_ADMIN, false, PUSH_BOUND);
    assert!(fleet.through(TO_PG, b"pg").is_some());
}

#[test]
fn istiod_killed_keeps_the_last_state_and_deletions_while_away_apply_on_return() {
    let mut fleet = Fleet::web_db();
    let _db = fleet.start("b");
    let _web = fleet.start("a");
    fleet.istiod.apply(&deny_web_on(fleet.pg).yaml());
    fleet.until(TO_PG, false, PUSH_BOUND);

    fleet.istiod.kill();
    // Decisions still come from the last state.
    assert!(
        fleet.through(TO_PG, b"pg").is_none(),
        "DENY lost with istiod"
    );
    assert!(
        fleet.through(TO_ADMIN, b"admin").is_some(),
        "admin lost with istiod"
    );

    // The policy was deleted while meshd could not hear it: istiod comes back without it.
    let cluster = fleet.cluster_yaml();
    fleet.istiod.restart_with(&cluster);
    let took = fleet.until(TO_PG, true, RECONNECT_BOUND);
    eprintln!("deletion while away applied {took:?} after istiod came back");
    assert!(fleet.through(TO_ADMIN, b"admin").is_some());
}

#[test]
fn meshd_restarted_while_istiod_is_down_runs_on_its_persisted_state() {
    let mut fleet = Fleet::web_db();
    let db = fleet.start("b");
    let _web = fleet.start("a");
    fleet.istiod.apply(&deny_web_on(fleet.pg).yaml());
    fleet.until(TO_PG, false, PUSH_BOUND);

    // meshd writes what istiod sent beside its certificate (a second after a change): wait
    // for the DENY to be there, as a meshd restarted later would find it.
    let state = fleet.cert_dir("b").join("istiod-state.pb");
    eventually("db's meshd persists the DENY", || {
        let bytes = std::fs::read(&state).ok()?;
        bytes
            .windows(b"db-deny-web".len())
            .any(|w| w == b"db-deny-web")
            .then_some(())
    });
    fleet.istiod.kill();
    drop(db);
    let _db = fleet.start("b");
    let ready = fleet.mesh.get("b").addr(Port::Readiness);
    let (code, body) = http(ready, "GET", "/healthz/ready").expect("readiness answers");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("persisted"),
        "readiness names the persisted state: {body}"
    );
    assert!(
        fleet.through(TO_PG, b"pg").is_none(),
        "persisted DENY not enforced"
    );
    assert!(fleet.through(TO_ADMIN, b"admin").is_some());
}

#[test]
fn meshd_rejoins_with_its_persisted_certificate_after_the_token_is_gone() {
    let fleet = Fleet::web_db();
    let db = fleet.start("b");
    let _web = fleet.start("a");
    assert!(fleet.through(TO_PG, b"pg").is_some());

    // The VM's token expires in an hour: revoked here, and the file removed.
    let token_file = fleet.bundle("b").join("istio-token");
    let token = std::fs::read_to_string(&token_file).expect("istio-token");
    fleet.istiod.revoke(&token);
    std::fs::remove_file(&token_file).expect("remove istio-token");
    drop(db);
    let _db = fleet.start("b");
    // Connected again, authenticated by the certificate alone.
    eventually("db's meshd reconnects to istiod", || {
        db_authorization_watch(&fleet).filter(|(sent, acked, _)| !sent.is_empty() && sent == acked)
    });
    fleet.istiod.apply(&deny_web_on(fleet.pg).yaml());
    fleet.until(TO_PG, false, PUSH_BOUND);
}

/// The serial of the certificate node `name`'s meshd has in force (`/config_dump`).
fn serial(fleet: &Fleet, name: &str) -> String {
    let admin = fleet.mesh.get(name).addr(Port::Admin);
    let (code, body) = http(admin, "GET", "/config_dump").expect("config_dump");
    assert_eq!(code, 200, "{body}");
    let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump JSON");
    dump["certificate"]["serial"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// How many times node meshd `log` says it renewed its certificate.
fn renewals(log: &str) -> usize {
    log.matches("Istio CA certificate renewed").count()
}

#[test]
fn the_certificate_rotates_over_mtls_at_half_life_without_a_token() {
    let mut fleet = Fleet::web_db();
    // The shortest lifetime meshd asks for (controlPlane.ttl's minimum): renewed at half-life.
    // Istio's CA backdates notBefore by two minutes, so half-life counts from the issue.
    fleet.control_plane("b", "ttl: 60s");
    let db = fleet.start("b");
    let issued = Instant::now();
    let _web = fleet.start("a");
    let first = serial(&fleet, "b");
    assert!(!first.is_empty(), "no certificate serial in config_dump");
    let token_file = fleet.bundle("b").join("istio-token");
    let token = std::fs::read_to_string(&token_file).expect("istio-token");
    fleet.istiod.revoke(&token);
    std::fs::remove_file(&token_file).expect("remove istio-token");
    while serial(&fleet, "b") == first {
        assert!(
            issued.elapsed() < Duration::from_secs(60),
            "the certificate was not renewed within its 60 s"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let at = issued.elapsed();
    eprintln!("renewed {at:?} after the first certificate");
    // Half of 60 s, less the time meshd took to become ready after its certificate.
    assert!(
        at >= Duration::from_secs(25),
        "renewed after {at:?}, before half-life"
    );
    assert_eq!(
        renewals(&db.stderr()),
        1,
        "one renewal per half-life:\n{}",
        db.stderr()
    );
    assert!(
        fleet.through(TO_PG, b"pg").is_some(),
        "traffic after the renewal"
    );
}

#[test]
fn a_local_allow_cannot_widen_istiods_deny() {
    let fleet = Fleet::web_db();
    // A local file on db's machine allowing web everywhere.
    let local = Policy::allow("local-allow-web")
        .rule(Rule::from(principal("web")))
        .yaml();
    let dir = fleet.mesh.config_dir("b");
    std::fs::write(dir.join("local-allow.yaml"), local).expect("write the local policy");
    let _db = fleet.start("b");
    let _web = fleet.start("a");
    assert!(fleet.through(TO_PG, b"pg").is_some());
    fleet.istiod.apply(&deny_web_on(fleet.pg).yaml());
    fleet.until(TO_PG, false, PUSH_BOUND);
    assert!(
        fleet.through(TO_ADMIN, b"admin").is_some(),
        "the local ALLOW admits web elsewhere"
    );
}

#[test]
fn a_workload_behind_a_waypoint_is_refused_never_reached_directly() {
    let fleet = Fleet::web_db_with(|db| db.label("istio.io/use-waypoint", "waypoint"));
    // A listener on db's address standing for anything behind it: never connected to.
    let probe = TcpListener::bind(SocketAddr::new(fleet.db_ip(), 0)).expect("probe");
    probe.set_nonblocking(true).expect("nonblocking");
    fleet.istiod.apply(&waypoint_yaml(fleet.mesh.ip(10)));
    let _db = fleet.start("b");
    let web = fleet.start("a");
    let deadline = Instant::now() + PUSH_BOUND;
    while fleet.through(TO_PG, b"pg").is_some() {
        assert!(Instant::now() < deadline, "web still reaches db directly");
        std::thread::sleep(Duration::from_millis(50));
    }
    web.wait_for_log("waypoint");
    assert!(
        matches!(probe.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to db's address"
    );
}

/// A waypoint in the namespace: a Gateway of class istio-waypoint with an address, as the
/// waypoint controller leaves it once its deployment is ready.
fn waypoint_yaml(address: std::net::IpAddr) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: {NAMESPACE}
  labels: {{istio.io/waypoint-for: workload}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
status:
  addresses:
  - {{type: IPAddress, value: '{address}'}}
"
    )
}
