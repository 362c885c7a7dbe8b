//! Federation decided in SPIRE, seen by meshd processes: two SPIRE deployments (cluster.local
//! and other.test, each a server and an agent), each server holding the other's bundle
//! (`spire-server bundle set`), entries federating with the other domain (`-federatesWith`).
//! web's meshd is in other.test (the Workload API of its agent), db's in cluster.local (the
//! Delegated Identity API of its agent): traffic flows while db's entry federates with
//! other.test; when SPIRE stops federating it, db's bundle loses other.test and the live
//! connection from web is closed (the revocation path: a bundle change re-verifies live peers),
//! new ones refused; when SPIRE federates again, web is accepted again. Then the same on the
//! client's side, through the Workload API: web's entry stops federating with cluster.local,
//! web's meshd closes its tunnel to db (the pool re-verifies the server's chain) and comes back
//! when it federates again.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshd_integration::mesh::{Identity, Mesh, Node};
use meshd_integration::resources::{NAMESPACE, Policy, Rule, Workload};
use meshd_integration::spire::{ENTRY_PROPAGATION, EntryOptions, Spire, SpireOptions};
use meshd_integration::spire_watch::{my_uid, start_ready};
use meshd_integration::{Workspace, echo_roundtrip};

const HOME: &str = "cluster.local";
const OTHER: &str = "other.test";
const MESHD: &str = "spiffe://cluster.local/ns/mesh/sa/meshd";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const WEB: &str = "spiffe://other.test/ns/shop/sa/web";
const DB_UID: &str = "unix:uid:1002";
const ANNOTATION: &str = "security.meshd.io/trust-domain";
/// web's explicit listener to db's echo port.
const LISTENER: u16 = 16001;

fn spire(mesh: &Mesh, host: u8, td: &str, delegates: Option<Vec<String>>) -> Spire {
    Spire::start_with(
        mesh.ip(host),
        SpireOptions {
            trust_domain: td.into(),
            authorized_delegates: delegates,
            ..SpireOptions::default()
        },
    )
}

fn federates(td: &str) -> EntryOptions {
    EntryOptions {
        federates_with: vec![td.into()],
        ..EntryOptions::default()
    }
}

/// A message through web's listener: whether it came back.
fn through(web: std::net::IpAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect((web, LISTENER)) else {
        return false;
    };
    echo_roundtrip(&mut stream, b"across domains").as_deref() == Some(&b"across domains"[..])
}

/// Polls `check` until it holds or [`ENTRY_PROPAGATION`] passes (an agent sync is up to 5 s).
fn within(what: &str, mut check: impl FnMut() -> bool, logs: impl Fn() -> String) {
    let deadline = Instant::now() + ENTRY_PROPAGATION;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "never happened: {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts `held` is closed (EOF or a reset) within [`ENTRY_PROPAGATION`]: a read timing out
/// (WouldBlock) means it is still open.
fn assert_closed(held: &mut TcpStream, what: &str, logs: impl Fn() -> String) {
    held.set_read_timeout(Some(ENTRY_PROPAGATION))
        .expect("read timeout");
    let mut byte = [0u8; 1];
    let read = held.read(&mut byte);
    let closed = match &read {
        Ok(n) => *n == 0,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    assert!(closed, "{what}: {read:?}\n{}", logs());
}

#[test]
fn a_trust_domain_spire_stops_federating_closes_live_connections_and_comes_back() {
    let mut mesh = Mesh::new();
    let (web_ip, db_ip) = (mesh.ip(1), mesh.ip(2));
    mesh.workload(Workload::new("web", web_ip).annotation(ANNOTATION, OTHER));
    mesh.workload(
        Workload::new("db", db_ip)
            .label("app", "db")
            .annotation(ANNOTATION, HOME),
    );
    let port = mesh.serve_echo("db", "echo");
    mesh.policy(
        Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(format!("{OTHER}/ns/{NAMESPACE}/sa/web"))),
    );

    let home = spire(&mesh, 200, HOME, Some(vec![MESHD.into()]));
    let other = spire(&mesh, 201, OTHER, None);
    home.trust_bundle_of(&other);
    other.trust_bundle_of(&home);
    let caller = format!("unix:uid:{}", my_uid());
    home.create_entry(MESHD, &[&caller]);
    let db_entry = home.create_entry_with(DB, &[DB_UID], &federates(OTHER));
    let web_entry = other.create_entry_with(WEB, &[&caller], &federates(HOME));
    let ws = Workspace::new();
    home.fetch_x509(&ws.path().join("home"));
    other.fetch_x509(&ws.path().join("other"));

    let a = mesh.node(Node::new("a", web_ip, "web"));
    a.identity = Identity::Spire {
        socket: other.workload_socket(),
        spiffe_id: WEB.into(),
    };
    a.setting("trustDomain", OTHER);
    a.listener(LISTENER, SocketAddr::new(db_ip, port));
    let b = mesh.node(Node::new("b", db_ip, "db"));
    b.identity = Identity::SpireDelegated {
        admin_socket: home.admin_socket(),
        selectors: vec![DB_UID.into()],
    };
    mesh.write();
    let nodes = start_ready(&mesh, &["b", "a"]);
    let logs = || format!("db:\n{}\nweb:\n{}", nodes[0].stderr(), nodes[1].stderr());

    // Federated both ways: web (other.test) reaches db (cluster.local), a connection is held.
    assert!(through(web_ip), "{}", logs());
    let mut held = TcpStream::connect((web_ip, LISTENER)).expect("connect listener");
    assert!(echo_roundtrip(&mut held, b"held").is_some(), "{}", logs());

    // SPIRE stops federating db with other.test: db's set drops the bundle and re-verifies its
    // live peers; web's connection is closed, and new ones are refused.
    home.update_entry(&db_entry, DB, &[DB_UID], &[]);
    assert_closed(
        &mut held,
        "the held connection survived the bundle change",
        logs,
    );
    assert!(
        !through(web_ip),
        "a new connection was accepted\n{}",
        logs()
    );
    // db says why: web's certificate, of a trust domain it no longer holds a bundle for.
    let db_log = nodes[0].stderr();
    assert!(
        db_log
            .lines()
            .any(|l| l.contains("client certificate no longer verifies") && l.contains(WEB)),
        "{}",
        logs()
    );

    // Federated again: web is accepted again.
    home.update_entry(&db_entry, DB, &[DB_UID], &[OTHER]);
    within("web reaches db again", || through(web_ip), logs);

    // The same from the client's side, through the Workload API: SPIRE stops federating web
    // with cluster.local, web's bundle loses it, and web's meshd re-verifies db's certificate
    // on its pooled connection: the held tunnel is closed, new ones fail.
    let mut held = TcpStream::connect((web_ip, LISTENER)).expect("connect listener");
    assert!(echo_roundtrip(&mut held, b"held").is_some(), "{}", logs());
    other.update_entry(&web_entry, WEB, &[caller.as_str()], &[]);
    assert_closed(
        &mut held,
        "web's held connection survived its bundle change",
        logs,
    );
    assert!(
        !through(web_ip),
        "web reached db without cluster.local's bundle\n{}",
        logs()
    );
    let web_log = nodes[1].stderr();
    assert!(
        web_log
            .lines()
            .any(|l| l.contains("peer certificate no longer verifies") && l.contains(DB)),
        "{}",
        logs()
    );
    other.update_entry(&web_entry, WEB, &[caller.as_str()], &[HOME]);
    within(
        "web reaches db once federated again",
        || through(web_ip),
        logs,
    );
}
