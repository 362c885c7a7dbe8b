//! Federation both ways: meshd processes in two trust domains (td-a and td-b, each with a CA of
//! its own, each given the other's roots as `federatedBundles`) reach each other's workloads,
//! which say their trust domain with `security.meshd.io/trust-domain`, and authorize each
//! other by principal across domains, beside a workload of the local domain. Then the
//! rejections: a trust domain meshd holds no bundle for, and a peer with the right name in the
//! wrong trust domain. (An invalid annotation is a load error: crates/manifests/tests.)

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use meshd_identity::DevCa;
use meshd_integration::echo_roundtrip;
use meshd_integration::mesh::{Identity, Mesh, Node};
use meshd_integration::resources::{NAMESPACE, Policy, Rule, Workload};

const TD_A: &str = "td-a";
const TD_B: &str = "td-b";
const ANNOTATION: &str = "security.meshd.io/trust-domain";
/// Lifetime of the tests' SVIDs: longer than any test, well inside the CA's.
const SVID_TTL: Duration = Duration::from_secs(3600);

/// A CA per trust domain in the mesh's workspace (`ca-<td>/`), made on first use.
fn ca(mesh: &Mesh, td: &str) -> DevCa {
    let dir = mesh.ws.path().join(format!("ca-{td}"));
    if dir.exists() {
        DevCa::load(&dir).unwrap()
    } else {
        DevCa::init(td, &dir).unwrap()
    }
}

/// The roots of `td` as a PEM file, for another domain's `federatedBundles`.
fn roots(mesh: &Mesh, td: &str) -> PathBuf {
    mesh.ws
        .write(&format!("roots-{td}.pem"), ca(mesh, td).root_pem())
}

/// Node `name` at `ip` serving workload `shop/<sa>`, with an SVID for `shop/<sa>` issued in
/// `issuer`'s trust domain, meshd's `trustDomain` that one too, trusting `federated` besides.
fn node(mesh: &mut Mesh, name: &str, ip: IpAddr, sa: &str, issuer: &str, federated: &[&str]) {
    let svid = mesh.ws.path().join(format!("svid-{name}"));
    ca(mesh, issuer)
        .issue_to_dir(NAMESPACE, sa, SVID_TTL, &svid)
        .unwrap();
    let bundles = (federated.iter())
        .map(|td| (td.to_string(), roots(mesh, td)))
        .collect();
    let node = mesh.node(Node::new(name, ip, sa));
    node.identity = Identity::Federated(svid, bundles);
    node.setting("trustDomain", issuer);
}

/// The mesh of every test: web (node a, td-a), db (node b, td-b) and batch (node c, td-a,
/// unannotated: the local domain of a and c), each with an echo server; db allows only
/// `td-a/ns/shop/sa/web`, web only `td-b/ns/shop/sa/db`. Nodes are added by the test.
struct Domains {
    mesh: Mesh,
    web: IpAddr,
    db: IpAddr,
    batch: IpAddr,
    web_port: u16,
    db_port: u16,
    batch_port: u16,
}

impl Domains {
    fn new(db_domain: &str) -> Domains {
        let mut mesh = Mesh::new();
        let (web, db, batch) = (mesh.ip(1), mesh.ip(2), mesh.ip(3));
        mesh.workload(
            Workload::new("web", web)
                .label("app", "web")
                .annotation(ANNOTATION, TD_A),
        );
        mesh.workload(
            Workload::new("db", db)
                .label("app", "db")
                .annotation(ANNOTATION, db_domain),
        );
        mesh.workload(Workload::new("batch", batch));
        let web_port = mesh.serve_echo("web", "echo");
        let db_port = mesh.serve_echo("db", "echo");
        let batch_port = mesh.serve_echo("batch", "echo");
        mesh.policy(
            Policy::allow("db-allow-web")
                .selector("app", "db")
                .rule(Rule::from(format!("{TD_A}/ns/{NAMESPACE}/sa/web"))),
        );
        mesh.policy(
            Policy::allow("web-allow-db")
                .selector("app", "web")
                .rule(Rule::from(format!("{TD_B}/ns/{NAMESPACE}/sa/db"))),
        );
        Domains {
            mesh,
            web,
            db,
            batch,
            web_port,
            db_port,
            batch_port,
        }
    }
}

/// Sends a message through `listener` and says whether it came back.
fn through(listener: (IpAddr, u16), message: &[u8]) -> bool {
    let mut stream = TcpStream::connect(listener).expect("connect listener");
    echo_roundtrip(&mut stream, message).as_deref() == Some(message)
}

#[test]
fn two_trust_domains_carry_traffic_both_ways_with_policies_by_principal() {
    let mut d = Domains::new(TD_B);
    let (web, db, batch) = (d.web, d.db, d.batch);
    node(&mut d.mesh, "a", web, "web", TD_A, &[TD_B]);
    node(&mut d.mesh, "b", db, "db", TD_B, &[TD_A]);
    node(&mut d.mesh, "c", batch, "batch", TD_A, &[TD_B]);
    (d.mesh.node_mut("a"))
        .listener(16001, format!("{db}:{}", d.db_port))
        .listener(16002, format!("{batch}:{}", d.batch_port));
    (d.mesh.node_mut("b")).listener(16001, format!("{web}:{}", d.web_port));
    (d.mesh.node_mut("c")).listener(16001, format!("{db}:{}", d.db_port));
    d.mesh.write();
    let b = d.mesh.start("b");
    let _c = d.mesh.start("c");
    let a = d.mesh.start("a");

    // td-a → td-b: a expects db's td-b identity and b allows td-a's web by principal.
    assert!(through((web, 16001), b"a to b"), "{}", a.stderr());
    b.wait_for_log(&format!("spiffe://{TD_A}/ns/shop/sa/web"));
    // td-b → td-a: b expects web's td-a identity, a allows td-b's db by principal.
    assert!(through((db, 16001), b"b to a"), "{}", b.stderr());
    a.wait_for_log(&format!("spiffe://{TD_B}/ns/shop/sa/db"));
    // Beside them, a workload of the local domain (no annotation): td-a, as a's mesh.
    assert!(through((web, 16002), b"a to c"), "{}", a.stderr());

    // Another td-a client, not the one db's policy names: refused by b.
    assert!(!through((batch, 16001), b"c to b"));
    let log_b = b.wait_for_log("connection denied");
    assert!(
        log_b.contains("ALLOW policies apply to the destination, but none matched"),
        "{log_b}"
    );
}

#[test]
fn a_workload_in_a_trust_domain_without_a_bundle_is_refused() {
    // a trusts only td-a: db's td-b certificate cannot be verified, so no tunnel is opened.
    let mut d = Domains::new(TD_B);
    let (web, db) = (d.web, d.db);
    node(&mut d.mesh, "a", web, "web", TD_A, &[]);
    node(&mut d.mesh, "b", db, "db", TD_B, &[TD_A]);
    (d.mesh.node_mut("a")).listener(16001, format!("{db}:{}", d.db_port));
    d.mesh.write();
    let _b = d.mesh.start("b");
    let a = d.mesh.start("a");

    assert!(!through((web, 16001), b"a to b"));
    let log_a = a.wait_for_log(
        "peer certificate rejected: trust domain td-b is not trusted (no bundle configured for it)",
    );
    assert!(log_a.contains("decision=\"refused\""), "{log_a}");
    assert!(log_a.contains("dst.workload=\"db\""), "{log_a}");
}

#[test]
fn the_right_name_in_the_wrong_trust_domain_is_refused() {
    // db says it is in td-b, but its meshd holds spiffe://td-a/ns/shop/sa/db (a CA a trusts,
    // the right namespace and service account): not the identity db claims, so refused.
    let mut d = Domains::new(TD_B);
    let (web, db) = (d.web, d.db);
    node(&mut d.mesh, "a", web, "web", TD_A, &[TD_B]);
    node(&mut d.mesh, "b", db, "db", TD_A, &[]);
    (d.mesh.node_mut("a")).listener(16001, format!("{db}:{}", d.db_port));
    d.mesh.write();
    let _b = d.mesh.start("b");
    let a = d.mesh.start("a");

    assert!(!through((web, 16001), b"a to b"));
    a.wait_for_log(&format!(
        "peer certificate rejected: peer identity spiffe://{TD_A}/ns/shop/sa/db does not match the expected spiffe://{TD_B}/ns/shop/sa/db"
    ));
}

#[test]
fn a_namespace_mapped_by_trust_domains_is_reached_in_that_domain() {
    // db carries no annotation; a's `trustDomains: {shop: td-b}` puts shop's workloads in td-b
    // (web, local to a, keeps its td-a annotation).
    let mut d = Domains::new(TD_B);
    d.mesh.workload_mut("db").annotations.clear();
    let (web, db) = (d.web, d.db);
    node(&mut d.mesh, "a", web, "web", TD_A, &[TD_B]);
    node(&mut d.mesh, "b", db, "db", TD_B, &[TD_A]);
    (d.mesh.node_mut("a"))
        .listener(16001, format!("{db}:{}", d.db_port))
        .setting("trustDomains", &format!("{{shop: {TD_B}}}"));
    d.mesh.write();
    let b = d.mesh.start("b");
    let a = d.mesh.start("a");

    assert!(through((web, 16001), b"a to b"), "{}", a.stderr());
    b.wait_for_log(&format!("spiffe://{TD_A}/ns/shop/sa/web"));
}

#[test]
fn the_annotation_wins_over_trust_domains() {
    // a maps shop to td-c: db's td-b annotation wins (reached), batch has none, so a expects
    // spiffe://td-c/ns/shop/sa/batch, which c (td-a) does not hold: refused.
    let mut d = Domains::new(TD_B);
    let (web, db, batch) = (d.web, d.db, d.batch);
    node(&mut d.mesh, "a", web, "web", TD_A, &[TD_B]);
    node(&mut d.mesh, "b", db, "db", TD_B, &[TD_A]);
    node(&mut d.mesh, "c", batch, "batch", TD_A, &[TD_B]);
    (d.mesh.node_mut("a"))
        .listener(16001, format!("{db}:{}", d.db_port))
        .listener(16002, format!("{batch}:{}", d.batch_port))
        .setting("trustDomains", "{shop: td-c}");
    d.mesh.write();
    let _b = d.mesh.start("b");
    let _c = d.mesh.start("c");
    let a = d.mesh.start("a");

    assert!(through((web, 16001), b"a to b"), "{}", a.stderr());
    assert!(!through((web, 16002), b"a to c"));
    a.wait_for_log(&format!(
        "peer certificate rejected: peer identity spiffe://{TD_A}/ns/shop/sa/batch does not match the expected spiffe://td-c/ns/shop/sa/batch"
    ));
}
