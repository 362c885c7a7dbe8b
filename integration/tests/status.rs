//! `meshd status` and the admin page against real meshd processes on loopback (each test on a
//! range of its own, `meshd_integration::mesh`): every view on the command line, as JSON, every rejection, and the page in
//! a real headless Chromium driven through chromedriver.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

#[path = "status_page.rs"]
mod status_page;

#[path = "status_traffic.rs"]
mod status_traffic;

#[path = "admin_attacks.rs"]
mod admin_attacks;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::{Command, Output};

use meshd_integration::loopback::Loopback;
use meshd_integration::mesh::Mesh;
use meshd_integration::resources::{PeerAuth, Policy, Rule, Service, principal};
use meshd_integration::{Meshd, Workspace, echo_roundtrip, echo_server, eventually, meshd_bin};

/// The db service's VIP (shown by the views and the page).
pub const DB_VIP: &str = "240.240.50.10";

/// Two machines: A (web, host .1 of the mesh's loopback range) and B (db, .2). B serves db's
/// `pg` port (allowed for web) and its `admin` port (denied by `shop/deny-admin`); A reaches
/// them through explicit listeners 16001 and 16002.
pub struct Nodes {
    mesh: Mesh,
    /// A's address.
    pub a: IpAddr,
    /// B's address.
    pub b: IpAddr,
}

impl Nodes {
    /// Writes the configuration of both nodes.
    fn new() -> Nodes {
        let (mut mesh, db_port, admin_port) = Mesh::web_db_pg_admin();
        let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
        mesh.service(
            Service::new("db", "db.shop.mesh.internal")
                .address(DB_VIP)
                .port_to(5432, "pg", db_port)
                .resolution("STATIC")
                .selector("app", "db"),
        );
        mesh.policy(
            Policy::allow("db-allow-web")
                .selector("app", "db")
                .rule(Rule::from(principal("web"))),
        );
        mesh.policy(
            Policy::deny("deny-admin")
                .selector("app", "db")
                .rule(Rule::to_port(admin_port)),
        );
        mesh.policy(
            Policy::deny("audit-paths")
                .dry_run()
                .rule(Rule::any().path("/admin")),
        );
        mesh.peer_auth(
            PeerAuth::new("db-strict", "PERMISSIVE")
                .selector("app", "db")
                .port(db_port, "STRICT"),
        );
        mesh.node_mut("a")
            .listener(16001, SocketAddr::new(b, db_port))
            .listener(16002, SocketAddr::new(b, admin_port));
        mesh.write();
        Nodes { mesh, a, b }
    }

    /// Starts node `a` or `b` and waits until it is ready.
    pub fn start(&self, node: &str) -> Meshd {
        self.mesh.start(node)
    }

    /// An allowed connection from web to db, left open after one round trip.
    pub fn allowed(&self) -> TcpStream {
        let mut stream = TcpStream::connect((self.a, 16001)).unwrap();
        let payload = vec![7u8; 3000];
        assert_eq!(
            echo_roundtrip(&mut stream, &payload).as_deref(),
            Some(&payload[..])
        );
        stream
    }

    /// A connection from web to db's admin port, which `shop/deny-admin` denies at B.
    pub fn denied(&self) {
        let mut stream = TcpStream::connect((self.a, 16002)).unwrap();
        let _ = stream.write_all(b"hello");
        assert_eq!(echo_roundtrip(&mut stream, b"x"), None, "must be closed");
    }
}

fn status(args: &[&str]) -> Output {
    Command::new(meshd_bin())
        .arg("status")
        .args(args)
        .env_remove("MESHD_ADMIN")
        .env_remove("MESHD_CONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `meshd status VIEW --admin B:15000`, which must succeed: its standard output.
fn view(mesh: &Nodes, args: &[&str]) -> String {
    let admin = format!("{}:15000", mesh.b);
    let mut all = args.to_vec();
    all.extend(["--admin", &admin]);
    let out = status(&all);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "meshd status {all:?}: {stderr}");
    stdout
}

#[test]
fn every_view_on_the_command_line_and_as_json() {
    let mesh = Nodes::new();
    let _b = mesh.start("b");
    let _a = mesh.start("a");
    let open = mesh.allowed();
    mesh.denied();

    let summary = view(&mesh, &[]);
    assert!(
        summary.contains("identity           spiffe://cluster.local/ns/shop/sa/db"),
        "{summary}"
    );
    assert!(summary.contains("generation         1"), "{summary}");

    let workloads = view(&mesh, &["workloads"]);
    let db = workloads
        .lines()
        .find(|l| l.starts_with("shop/db"))
        .unwrap();
    assert!(
        db.contains("yes") && db.contains("shop/db-allow-web ALLOW"),
        "{workloads}"
    );
    assert!(
        db.contains("shop/deny-admin DENY") && db.contains(":STRICT"),
        "{workloads}"
    );
    assert!(
        workloads.lines().any(|l| l.starts_with("shop/web  no")),
        "{workloads}"
    );

    let services = view(&mesh, &["services"]);
    assert!(
        services.contains("db.shop.mesh.internal") && services.contains(DB_VIP),
        "{services}"
    );
    assert!(services.contains(&format!("{} ok", mesh.b)), "{services}");

    let policies = view(&mesh, &["policies"]);
    let audit = policies
        .lines()
        .find(|l| l.contains("shop/audit-paths"))
        .unwrap();
    assert!(audit.contains("dry-run"), "{policies}");
    assert!(audit.contains("resources.yaml:"), "{policies}");
    assert!(policies.contains("shop/db-strict"), "{policies}");

    let certs = view(&mesh, &["certs"]);
    assert!(
        certs.contains("issuer      O=cluster.local, CN=meshd dev CA"),
        "{certs}"
    );
    assert!(certs.contains("cluster.local  O=cluster.local"), "{certs}");
    assert!(!certs.contains("PRIVATE KEY"), "{certs}");

    // B sees web's tunnel open, with its bytes so far.
    eventually("the open connection's bytes in the view", || {
        let json: serde_json::Value =
            serde_json::from_str(&view(&mesh, &["connections", "--json"])).unwrap();
        (json["connections"][0]["bytesIn"] == 3000 && json["connections"][0]["bytesOut"] == 3000)
            .then_some(())
    });
    let connections = view(&mesh, &["connections"]);
    assert!(connections.contains("2.9 KiB  2.9 KiB"), "{connections}");
    assert!(
        connections.contains("inbound    spiffe://cluster.local/ns/shop/sa/web"),
        "{connections}"
    );
    assert!(connections.contains("h2+mTLS"), "{connections}");

    let denials = view(&mesh, &["denials"]);
    assert!(denials.contains("shop/deny-admin"), "{denials}");
    assert!(denials.contains("denied"), "{denials}");

    // The same as JSON, in the documented shape.
    let json: serde_json::Value =
        serde_json::from_str(&view(&mesh, &["denials", "--json"])).unwrap();
    assert_eq!(json["denials"][0]["policy"], "shop/deny-admin", "{json}");
    assert_eq!(
        json["denials"][0]["sourceIdentity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    drop(open);
    eventually("the closed connection leaves the view", || {
        view(&mesh, &["connections"])
            .starts_with("0 open")
            .then_some(())
    });
}

#[test]
fn meshd_not_running_or_a_wrong_address_is_a_clear_error() {
    let net = Loopback::take();
    let ip = net.host(1);
    // Nothing listens: exit 69, and the message says what to check.
    let nowhere = SocketAddr::new(ip, 15000);
    let out = status(&["--admin", &nowhere.to_string()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stdout.is_empty());
    assert!(stderr.contains(&format!("cannot reach meshd's admin endpoint at {nowhere}: connection refused (is meshd running?")), "{stderr}");

    // Something else answers (an echo server, not HTTP).
    let echo = echo_server(SocketAddr::new(ip, 0));
    let out = status(&["workloads", "--admin", &echo.to_string()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{echo} is not meshd's admin endpoint (wrong --admin address?)"
        )),
        "{stderr}"
    );

    // Not an address at all: the flag parser says so (exit 64, EX_USAGE).
    let out = status(&["--admin", "localhost"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("invalid value 'localhost' for '--admin"),
        "{stderr}"
    );

    // An unknown view.
    let out = status(&["secrets"]);
    assert_eq!(out.status.code(), Some(64));

    // The admin address comes from the daemon configuration; switched off, it says so.
    let ws = Workspace::new();
    let config = ws.write("off.yaml", "listen: {admin: null}\n");
    let out = status(&["--config", &config.display().to_string()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains("the admin endpoint is off (listen.admin is null)"),
        "{stderr}"
    );
    // And it is where the configuration says: nothing there yet.
    let there = SocketAddr::new(net.host(2), 15000);
    let config = ws.write("on.yaml", &format!("listen: {{admin: '{there}'}}\n"));
    let out = status(&["--config", &config.display().to_string()]);
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains(&format!("at {there}: connection refused")),
        "{stderr}"
    );
}
