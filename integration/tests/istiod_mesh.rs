//! VMs join an istiod-managed mesh: real `meshd run --istio-bundle DIR` processes against the
//! istiod harness (Istio's own discovery server and CA, `integration/istiod/`), each with the
//! directory `istioctl x workload entry configure` writes. Workloads and policies are applied
//! to the harness's fake cluster as Istio YAML; meshd gets its certificate from the Istio CA
//! with the bundle's token and enforces what istiod converts and pushes.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use meshd_integration::istiod::Istiod;
use meshd_integration::mesh::{Mesh, Node, Port};
use meshd_integration::resources::{NAMESPACE, Policy, Rule, Workload, principal};
use meshd_integration::vm_bundle::VmBundle;
use meshd_integration::{Meshd, echo_roundtrip, echo_server, http, meshd_bin};

/// The harness's host on the mesh's loopback range.
const ISTIOD_HOST: u8 = 9;
/// Explicit listeners on web's machine: to db's pg and admin echo servers.
const TO_PG: u16 = 16001;
const TO_ADMIN: u16 = 16002;
/// How long a pushed change may take to be enforced in these tests (the issue asks for 1 s;
/// the bound is generous for a loaded 2-core machine, the figure is measured below).
const PUSH_BOUND: Duration = Duration::from_secs(10);

/// Two VMs (web, db) joined to one istiod, with echo servers on two ports of db.
struct Fleet {
    mesh: Mesh,
    istiod: Istiod,
    web: IpAddr,
    pg: u16,
    admin: u16,
}

/// The label istiod reads to mark a WorkloadEntry's workload as reached over HBONE
/// (`networking.istio.io/tunnel: http`, pilot's `setTunnelProtocol`).
fn in_ambient(workload: Workload) -> Workload {
    workload.label("networking.istio.io/tunnel", "http")
}

impl Fleet {
    fn new() -> Fleet {
        let mut mesh = Mesh::new();
        let (web, db) = (mesh.ip(1), mesh.ip(2));
        let istiod = Istiod::start(mesh.ip(ISTIOD_HOST));
        let pg = echo_server(SocketAddr::new(db, 0)).port();
        let admin = echo_server(SocketAddr::new(db, 0)).port();
        for workload in [
            in_ambient(Workload::new("web", web).label("app", "web")),
            in_ambient(Workload::new("db", db).label("app", "db")),
        ] {
            istiod.apply(&workload.yaml());
        }
        for (name, ip, sa) in [("a", web, "web"), ("b", db, "db")] {
            let node = mesh.node(Node::new(name, ip, sa));
            // The workloads come from istiod; the machine serves the one at its address.
            node.workloads.clear();
            node.setting("local", &format!("{{addresses: ['{ip}']}}"));
        }
        mesh.node_mut("a")
            .listener(TO_PG, SocketAddr::new(db, pg))
            .listener(TO_ADMIN, SocketAddr::new(db, admin));
        let fleet = Fleet {
            mesh,
            istiod,
            web,
            pg,
            admin,
        };
        for (name, ip, sa) in [("a", web, "web"), ("b", db, "db")] {
            VmBundle::for_istiod(&fleet.istiod, NAMESPACE, sa, sa, ip).write(&fleet.bundle(name));
        }
        fleet.mesh.write();
        fleet
    }

    fn bundle(&self, node: &str) -> PathBuf {
        self.mesh.ws.path().join(format!("bundle-{node}"))
    }

    fn cert_dir(&self, node: &str) -> PathBuf {
        self.mesh.ws.path().join(format!("istio-certs-{node}"))
    }

    /// Starts node `name` with its bundle and waits until it is ready.
    fn start(&mut self, name: &str) -> Meshd {
        let ip = self.mesh.get(name).ip;
        let cert_dir = self.cert_dir(name);
        self.mesh.node_mut(name).setting(
            "controlPlane",
            &format!("{{certDir: '{}', instanceIp: '{ip}'}}", cert_dir.display()),
        );
        self.mesh.write_node(name);
        let mut command = self.mesh.command(name);
        command.arg("--istio-bundle").arg(self.bundle(name));
        Meshd::spawn(command)
    }
}

/// One echo round trip through `port` of web's machine; `None` when the mesh refused it.
fn through(fleet: &Fleet, port: u16, message: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect((fleet.web, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    echo_roundtrip(&mut stream, message)
}

/// Polls until `through` gives `expect` (allowed or refused); the time it took.
fn until(fleet: &Fleet, port: u16, allowed: bool) -> Duration {
    let start = Instant::now();
    loop {
        let got = through(fleet, port, b"ping").is_some();
        if got == allowed {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PUSH_BOUND,
            "port {port}: still {} after {PUSH_BOUND:?}",
            if got { "allowed" } else { "refused" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn vms_join_with_a_token_and_enforce_istiods_policies() {
    let mut fleet = Fleet::new();
    let b = fleet.start("b");
    let a = fleet.start("a");

    // Each VM holds a certificate from the Istio CA for its service account, persisted.
    for (node, meshd, sa) in [("a", &a, "web"), ("b", &b, "db")] {
        let chain = std::fs::read_to_string(fleet.cert_dir(node).join("cert-chain.pem"))
            .unwrap_or_else(|e| panic!("{node}: no certificate from the Istio CA: {e}"));
        assert!(chain.contains("BEGIN CERTIFICATE"), "{node}: {chain}");
        let log = meshd.wait_for_log("certificate from the Istio CA");
        let id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}");
        assert!(log.contains(&id), "{node}: not issued as {id}: {log}");
    }

    // No policy in istiod: web reaches both of db's ports over HBONE.
    assert_eq!(
        through(&fleet, TO_PG, b"no policy").as_deref(),
        Some(&b"no policy"[..])
    );
    assert!(through(&fleet, TO_ADMIN, b"x").is_some());

    // An ALLOW for web on pg only, applied in the cluster: istiod converts and pushes it, db's
    // meshd enforces it.
    fleet.istiod.apply(
        &Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web")).port(fleet.pg))
            .yaml(),
    );
    let took = until(&fleet, TO_ADMIN, false);
    eprintln!("ALLOW enforced {took:?} after the apply returned");
    assert!(
        through(&fleet, TO_PG, b"still").is_some(),
        "pg stays allowed"
    );
    let denied = b.wait_for_log("connection denied");
    assert!(
        denied.contains("db-allow-web") || denied.contains("ALLOW"),
        "{denied}"
    );

    // `meshd authz check` over the state db's meshd persisted: the same decisions, and the
    // deciding policy named with its source (the state is written within a second of a push).
    let state = fleet.cert_dir("b").join("istiod-state.pb");
    let empty = fleet.mesh.ws.path().join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    let check = |port: u16| {
        let out = std::process::Command::new(meshd_bin())
            .args(["authz", "check", "--from", &principal("web")])
            .arg("--to")
            .arg(format!("{NAMESPACE}/db:{port}"))
            .arg("--config-dir")
            .arg(&empty)
            .arg("--istiod-state")
            .arg(&state)
            .env_remove("MESHD_CONFIG")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let start = Instant::now();
    let mut shown = check(fleet.admin);
    while !shown.starts_with("DENY") && start.elapsed() < PUSH_BOUND {
        std::thread::sleep(Duration::from_millis(200));
        shown = check(fleet.admin);
    }
    assert!(shown.starts_with("DENY"), "{shown}");
    let allowed = check(fleet.pg);
    assert!(allowed.starts_with("ALLOW"), "{allowed}");
    assert!(allowed.contains("istiod:shop/db-allow-web"), "{allowed}");

    // The policy deleted in the cluster: istiod removes it, admin is allowed again.
    fleet
        .istiod
        .delete("AuthorizationPolicy", NAMESPACE, "db-allow-web");
    until(&fleet, TO_ADMIN, true);

    // The control plane as operators see it.
    let (code, dump) =
        http(fleet.mesh.get("b").addr(Port::Admin), "GET", "/config_dump").expect("config_dump");
    assert_eq!(code, 200, "{dump}");
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let cp = &dump["controlPlane"];
    let (code, view) = http(
        fleet.mesh.get("b").addr(Port::Admin),
        "GET",
        "/status/control-plane",
    )
    .expect("status view");
    assert_eq!(code, 200, "{view}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&view).unwrap(),
        *cp
    );
    assert_eq!(cp["stream"], "connected", "{cp}");
    assert_eq!(cp["ready"], true, "{cp}");
    for url in [
        "type.googleapis.com/istio.workload.Address",
        "type.googleapis.com/istio.security.Authorization",
    ] {
        let of_type = cp["types"]
            .as_array()
            .and_then(|types| types.iter().find(|t| t["typeUrl"] == url))
            .unwrap_or_else(|| panic!("no {url} in {cp}"));
        assert!(of_type["acks"].as_u64().unwrap_or(0) >= 1, "{url}: {cp}");
        assert_eq!(of_type["nacks"], 0, "{url}: {cp}");
    }
    assert_eq!(cp["certificate"]["source"], "token", "{cp}");
    let istiod_counts = cp["sources"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["source"] == "istiod"))
        .cloned()
        .unwrap_or_default();
    assert!(
        istiod_counts["workloads"].as_u64().unwrap_or(0) >= 2,
        "{cp}"
    );

    // `meshd status control-plane`: the same, as a table.
    let admin = fleet.mesh.get("b").addr(Port::Admin).to_string();
    let out = std::process::Command::new(meshd_bin())
        .args(["status", "control-plane", "--admin", &admin])
        .env_remove("MESHD_ADMIN")
        .env_remove("MESHD_CONFIG")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "connected since",
        "istio.workload.Address",
        "from the Istio CA (token)",
    ] {
        assert!(shown.contains(needle), "no {needle:?} in:\n{shown}");
    }

    // ztunnel's xDS series, labelled by type URL, and meshd's refusals by reason.
    let (code, metrics) =
        http(fleet.mesh.get("b").addr(Port::Metrics), "GET", "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for series in [
        "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"}",
        "istio_xds_message_bytes_total{url=\"type.googleapis.com/istio.security.Authorization\"}",
        "meshd_istiod_refused_resources{reason=\"waypoint\"} 0",
    ] {
        assert!(metrics.contains(series), "no {series} in:\n{metrics}");
    }
}
