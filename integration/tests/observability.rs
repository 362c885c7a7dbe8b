//! Metrics, access log, admin and readiness of real meshd processes on loopback (each test on
//! a range of its own, `meshd_integration::mesh`).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

#[path = "operator_flood.rs"]
mod operator_flood;

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};

use meshd_integration::mesh::{Identity, Mesh, Node, Plugin, Port};
use meshd_integration::resources::{Policy, Rule, Workload, principal};
use meshd_integration::{Meshd, echo_roundtrip, echo_server, eventually, http, meshd};

/// Two machines: A (web, host .1 of the mesh's loopback range) and B (db, .2) with an echo
/// server on db's allowed port and one on a denied port; A reaches them through explicit
/// listeners 16001 (allowed), 16002 (denied), and 16003 (a port no workload serves).
struct Nodes {
    mesh: Mesh,
    a: IpAddr,
    b: IpAddr,
}

impl Nodes {
    fn new() -> Nodes {
        Nodes::with(|_| {})
    }

    /// The mesh as `change` leaves it, written.
    fn with(change: impl FnOnce(&mut Mesh)) -> Nodes {
        let (mut mesh, db_port, admin_port) = Mesh::web_db_pg_admin();
        let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
        mesh.label("web", "version", "v1");
        mesh.label("db", "version", "v2");
        mesh.policy(
            Policy::allow("db-allow-web")
                .selector("app", "db")
                .rule(Rule::from(principal("web")).port(db_port)),
        );
        mesh.node_mut("a")
            .listener(16001, SocketAddr::new(b, db_port))
            .listener(16002, SocketAddr::new(b, admin_port))
            .listener(16003, SocketAddr::new(b, 9));
        change(&mut mesh);
        mesh.write();
        Nodes { mesh, a, b }
    }

    fn start(&self, node: &str, json: bool) -> Meshd {
        let mut command = self.mesh.command(node);
        if json {
            command.args(["--log-format", "json"]);
        }
        Meshd::spawn(command)
    }
}

fn scrape(ip: IpAddr) -> String {
    let (status, body) = http(SocketAddr::new(ip, 15020), "GET", "/metrics").expect("scrape");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the series `name` whose labels include every pair; `None` if there is none.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The access-log records (JSON lines with target `access`) of a meshd run with
/// `--log-format json`.
fn access_records(meshd: &Meshd) -> Vec<serde_json::Value> {
    meshd
        .stderr()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect()
}

#[test]
fn istio_series_for_allowed_denied_and_refused_connections_on_both_reporters() {
    let mesh = Nodes::new();
    let b = mesh.start("b", false);
    let a = mesh.start("a", false);

    // Allowed: 1000 bytes each way through A (reporter=source) and B (reporter=destination).
    let payload = vec![7u8; 1000];
    let mut allowed = TcpStream::connect((mesh.a, 16001)).unwrap();
    assert_eq!(
        echo_roundtrip(&mut allowed, &payload).as_deref(),
        Some(&payload[..])
    );
    // Bytes show while the connection is open.
    let labels_b = [
        ("reporter", "destination"),
        ("source_workload", "web"),
        ("source_workload_namespace", "shop"),
        ("source_principal", "spiffe://cluster.local/ns/shop/sa/web"),
        ("source_app", "web"),
        ("source_version", "v1"),
        ("destination_workload", "db"),
        ("destination_workload_namespace", "shop"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/db",
        ),
        ("destination_app", "db"),
        ("destination_version", "v2"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let mut last = String::new();
    let found = (0..100).any(|_| {
        last = scrape(mesh.b);
        std::thread::sleep(std::time::Duration::from_millis(50));
        series(&last, "istio_tcp_received_bytes_total", &labels_b) == Some(1000.0)
    });
    assert!(found, "B's received bytes before close: {last}");
    let text = scrape(mesh.b);
    assert_eq!(
        series(&text, "istio_tcp_sent_bytes_total", &labels_b),
        Some(1000.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "istio_tcp_connections_opened_total", &labels_b),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "istio_tcp_sockets_open",
            &[("reporter", "destination")]
        ),
        Some(1.0),
        "{text}"
    );
    drop(allowed);
    eventually("B's connection closed", || {
        (series(
            &scrape(mesh.b),
            "istio_tcp_connections_closed_total",
            &labels_b,
        ) == Some(1.0))
        .then_some(())
    });
    let labels_a = [
        ("reporter", "source"),
        ("source_workload", "web"),
        ("destination_workload", "db"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/db",
        ),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let text = scrape(mesh.a);
    assert_eq!(
        series(&text, "istio_tcp_sent_bytes_total", &labels_a),
        Some(1000.0),
        "{text}"
    );
    assert_eq!(
        series(&text, "istio_tcp_received_bytes_total", &labels_a),
        Some(1000.0),
        "{text}"
    );

    // Denied by policy on B: DENY on both sides, counted as failed.
    let mut denied = TcpStream::connect((mesh.a, 16002)).unwrap();
    assert_eq!(echo_roundtrip(&mut denied, b"no"), None);
    eventually("B's denial", || {
        series(
            &scrape(mesh.b),
            "istio_tcp_connections_failed_total",
            &[("reporter", "destination"), ("response_flags", "DENY")],
        )
        .filter(|v| *v >= 1.0)
    });
    eventually("A's denial", || {
        series(
            &scrape(mesh.a),
            "istio_tcp_connections_failed_total",
            &[("reporter", "source"), ("response_flags", "DENY")],
        )
        .filter(|v| *v >= 1.0)
    });
    let text = scrape(mesh.b);
    assert!(
        series(
            &text,
            "meshd_authorization_decisions_total",
            &[("result", "deny")]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        series(
            &text,
            "meshd_authorization_decisions_total",
            &[("result", "allow"), ("policy", "shop/db-allow-web")]
        )
        .is_some(),
        "{text}"
    );

    // Refused before policy on B (a port db does not serve): a refusal by reason.
    let mut refused = TcpStream::connect((mesh.a, 16003)).unwrap();
    assert_eq!(echo_roundtrip(&mut refused, b"no"), None);
    eventually("B's not_local refusal", || {
        series(
            &scrape(mesh.b),
            "meshd_connection_refusals_total",
            &[("reason", "not_local")],
        )
        .filter(|v| *v >= 1.0)
    });
    let text = scrape(mesh.b);
    assert_eq!(series(&text, "istio_build", &[]), Some(1.0), "{text}");
    assert!(
        series(&text, "process_open_fds", &[]).is_some() || text.contains("process_open_fds "),
        "{text}"
    );
    drop((a, b));
}

#[test]
fn json_access_log_has_one_record_per_refusal_class() {
    let mesh = Nodes::new();
    let b = mesh.start("b", true);
    let a = mesh.start("a", true);
    // allowed, denied (401), not_local (400)
    for port in [16001, 16002, 16003] {
        let mut stream = TcpStream::connect((mesh.a, port)).unwrap();
        let _ = echo_roundtrip(&mut stream, b"x");
    }
    // handshake: plain bytes on B's HBONE port (a TLS handshake failure) still get a record.
    let mut garbage = TcpStream::connect((mesh.b, 15008)).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(garbage);
    let records = eventually("B's records", || {
        let records = access_records(&b);
        let outcomes: Vec<String> = records
            .iter()
            .map(|r| r["outcome"].as_str().unwrap_or_default().to_string())
            .collect();
        ["allowed", "denied", "not_local", "handshake"]
            .iter()
            .all(|o| outcomes.iter().any(|x| x == o))
            .then_some(records)
    });
    let denied = records.iter().find(|r| r["outcome"] == "denied").unwrap();
    assert_eq!(denied["level"], "INFO", "denials are logged at info");
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["response_flags"], "DENY");
    assert_eq!(denied["direction"], "inbound");
    assert_eq!(
        denied["src.identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(
        denied["reason"].as_str().unwrap().contains("none matched"),
        "{denied}"
    );
    let allowed = records.iter().find(|r| r["outcome"] == "allowed").unwrap();
    assert_eq!(allowed["policy"], "shop/db-allow-web");
    assert_eq!(allowed["bytes_recv"], 1);
    assert_eq!(allowed["bytes_sent"], 1);
    assert_eq!(allowed["transport"], "h2");
    let a_records = eventually("A's records", || {
        let records = access_records(&a);
        (records.len() >= 3).then_some(records)
    });
    assert!(
        a_records.iter().all(|r| r["direction"] == "outbound"),
        "{a_records:?}"
    );
    assert!(
        a_records
            .iter()
            .any(|r| r["outcome"] == "denied" && r["response_flags"] == "DENY")
    );
    assert!(a_records.iter().any(|r| r["outcome"] == "unreachable"));
}

#[test]
fn config_dump_shows_the_snapshot_and_certificate_but_no_key() {
    let mesh = Nodes::new();
    let b = mesh.start("b", false);
    let (status, body) = http(SocketAddr::new(mesh.b, 15000), "GET", "/config_dump").unwrap();
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["generation"], 1);
    assert_eq!(
        dump["certificate"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/db"
    );
    assert!(
        dump["certificate"]["notAfter"]
            .as_str()
            .unwrap()
            .starts_with("20"),
        "{body}"
    );
    assert!(dump["certificate"]["secondsLeft"].as_i64().unwrap() > 0);
    let local = &dump["localWorkloads"][0];
    assert_eq!(local["workload"], "shop/db");
    assert_eq!(local["policies"][0]["policy"], "shop/db-allow-web");
    assert!(
        body.contains("resources.yaml:"),
        "resources name their source file: {body}"
    );
    // Never key material: not the PEM header, not the key's bytes.
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    let key_dir = mesh.mesh.ws.ca();
    for entry in std::fs::read_dir(&key_dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains("PRIVATE KEY") {
            let base64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
            assert!(
                !body.contains(&base64[..40.min(base64.len())]),
                "key bytes leaked"
            );
        }
    }
    // A broken file: the dump keeps generation 1 and shows the error.
    mesh.mesh.ws.write("mesh/broken.yaml", "kind: Nope\n");
    b.signal("HUP");
    let dump = eventually("the reload error in the dump", || {
        let (_, body) = http(SocketAddr::new(mesh.b, 15000), "GET", "/config_dump")?;
        let dump: serde_json::Value = serde_json::from_str(&body).ok()?;
        dump["lastReloadError"].is_string().then_some(dump)
    });
    assert_eq!(dump["generation"], 1);
    assert!(
        dump["lastReloadError"]
            .as_str()
            .unwrap()
            .contains("broken.yaml"),
        "{dump}"
    );
    let text = scrape(mesh.b);
    assert_eq!(
        series(
            &text,
            "meshd_config_reloads_total",
            &[("result", "failure")]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(text.contains("meshd_config_generation 1"), "{text}");
}

#[test]
fn logging_changes_the_level_live() {
    let mesh = Nodes::new();
    let b = mesh.start("b", false);
    let admin = SocketAddr::new(mesh.b, 15000);
    let (status, body) = http(admin, "POST", "/logging?level=debug").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("debug"), "{body}");
    // A debug-only event now shows: admin requests are logged at debug.
    assert!(!b.stderr().contains("admin request"), "not logged at info");
    let (status, _) = http(admin, "GET", "/logging").unwrap();
    assert_eq!(status, 200);
    b.wait_for_log("admin request");
    let (status, body) = http(admin, "POST", "/logging?level=not%20a%20filter%3D%3D").unwrap();
    assert_eq!(status, 400, "{body}");
}

#[test]
fn readiness_waits_for_a_delayed_certificate() {
    // meshd starts before its certificate files exist (spiffe-helper still fetching): not ready
    // (500) until they appear, then ready (200).
    let mut mesh = Mesh::new();
    let b = mesh.ip(2);
    mesh.workload(Workload::new("db", b));
    let svid = mesh.ws.path().join("svid");
    std::fs::create_dir_all(&svid).unwrap();
    mesh.node(Node::new("b", b, "db")).identity = Identity::SpiffeHelper(svid.clone());
    mesh.write();
    let ready = SocketAddr::new(b, 15021);
    let issuer = {
        let ca = mesh.ws.ca();
        let svid = svid.clone();
        std::thread::spawn(move || {
            let (status, body) = eventually("readiness answering", || {
                http(ready, "GET", "/healthz/ready")
            });
            assert_eq!(status, 500, "{body}");
            assert!(body.contains("certificates"), "{body}");
            meshd(&[
                "ca",
                "issue",
                "--ca",
                &ca.display().to_string(),
                "--namespace",
                "shop",
                "--service-account",
                "db",
                "--out",
                &svid.display().to_string(),
            ]);
        })
    };
    let meshd = mesh.start("b");
    issuer.join().unwrap();
    eventually("ready", || {
        (http(ready, "GET", "/healthz/ready")?.0 == 200).then_some(())
    });
    drop(meshd);
}

/// A SOCKS5 CONNECT to `target`; the reply code.
fn socks5(proxy: SocketAddr, target: SocketAddr) -> u8 {
    use std::io::Read;
    let mut stream = TcpStream::connect(proxy).unwrap();
    stream.write_all(&[5, 1, 0]).unwrap();
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).unwrap();
    let mut request = vec![5, 1, 0, 1];
    if let IpAddr::V4(v4) = target.ip() {
        request.extend_from_slice(&v4.octets());
    }
    request.extend_from_slice(&target.port().to_be_bytes());
    stream.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    stream.read_exact(&mut reply).unwrap();
    reply[1]
}

#[test]
fn outbound_refusals_are_records_too_own_port_limited_and_handshake() {
    let mesh = Nodes::with(|mesh| {
        mesh.node_mut("a").serve(Port::Socks5).plugin(
            Plugin::new("rate_limit")
                .with("connectionsPerSecond", 0.001)
                .with("burst", 1),
        );
    });
    let a = mesh.start("a", true);
    let proxy = SocketAddr::new(mesh.a, 15080);
    // Outside the mesh: no WorkloadEntry at host .3.
    let outside = echo_server(mesh.mesh.addr(3, 0));
    // own port: refused before any plugin, so the rate limit's one token is still there.
    assert_eq!(socks5(proxy, SocketAddr::new(mesh.a, 15020)), 2);
    assert_eq!(socks5(proxy, outside), 0, "allowed: takes the one token");
    assert_eq!(socks5(proxy, outside), 1, "limited: general failure");
    // handshake: not SOCKS at all.
    let mut garbage = TcpStream::connect(proxy).unwrap();
    garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    drop(garbage);
    let records = eventually("A's records", || {
        let records = access_records(&a);
        let has = |o: &str| records.iter().any(|r| r["outcome"] == o);
        (has("own_port") && has("limited") && has("handshake") && has("allowed")).then_some(records)
    });
    let limited = records.iter().find(|r| r["outcome"] == "limited").unwrap();
    assert!(
        limited["reason"].as_str().unwrap().contains("rate limit"),
        "{limited}"
    );
    let text = scrape(mesh.a);
    for reason in ["own_port", "limited", "handshake"] {
        assert_eq!(
            series(
                &text,
                "meshd_connection_refusals_total",
                &[("direction", "outbound"), ("reason", reason)]
            ),
            Some(1.0),
            "{reason}: {text}"
        );
    }
}
