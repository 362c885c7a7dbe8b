//! meshd is never a relay: end-to-end refusals with real meshd processes on loopback (each
//! test on a range of its own, `meshd_integration::mesh`).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use meshd_hbone::{Client, ClientSettings, Peer, RequestHeaders};
use meshd_identity::{DevCaSource, IdentityManager, IdentitySource, SpiffeId};
use meshd_integration::mesh::{Mesh, Node, Plugin, Port};
use meshd_integration::resources::{Policy, Rule, Workload};
use meshd_integration::{Meshd, echo_roundtrip, echo_server};

/// A machine (node `b`, host .2 of the mesh's range) whose only workload, shop/db, names no
/// ports (so it serves every port) and is allowed to everyone: without the own-port guard,
/// every CONNECT below would be answered 200. Its files are written by the caller.
fn portless_machine() -> (Mesh, IpAddr, u16) {
    let mut mesh = Mesh::new();
    let b = mesh.ip(2);
    let app_port = mesh.echo(2);
    mesh.workload(Workload::new("db", b).label("app", "db"));
    mesh.policy(Policy::allow("allow-all").rule(Rule::any()));
    mesh.shared_dir = true;
    mesh.node(Node::new("b", b, "db"));
    (mesh, b, app_port)
}

async fn client_as_web(mesh: &Mesh) -> Client {
    let mut source = DevCaSource::new(mesh.ws.ca());
    source.namespace = "shop".into();
    source.service_account = "web".into();
    let identity = IdentityManager::start(&IdentitySource::DevCa(source))
        .await
        .expect("identity");
    Client::new(identity.handle(), ClientSettings::default()).expect("client")
}

async fn status(client: &Client, peer: &Peer, authority: SocketAddr) -> u16 {
    match client
        .connect(peer, authority, RequestHeaders::default())
        .await
    {
        Ok(_) => 200,
        Err(e) => e
            .http_status()
            .map_or_else(|| panic!("{authority}: {e}"), |s| s.as_u16()),
    }
}

// HTTP/3 needs the `quic` feature (scripts/test.sh turns it on).
#[cfg(feature = "quic")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_each_of_meshds_own_ports_is_400_over_h2_and_h3() {
    let (mut mesh, b, app_port) = portless_machine();
    mesh.node_mut("b")
        .serve(Port::HboneQuic)
        .serve(Port::Socks5)
        .serve(Port::Outbound)
        .serve(Port::InboundPlaintext)
        .listener(16003, SocketAddr::new(b, app_port));
    mesh.write();
    let meshd = mesh.start("b");
    let client = client_as_web(&mesh).await;
    let db = SpiffeId::istio("cluster.local", "shop", "db").expect("id");
    let h2 = Peer::new(db.clone(), SocketAddr::new(b, 15008));
    let h3 = Peer::new(db, SocketAddr::new(b, 15008)).with_transport(meshd_hbone::Transport::H3);

    for peer in [&h2, &h3] {
        // The control: the portless workload is reachable, so a 400 below is the guard's.
        assert_eq!(
            status(&client, peer, SocketAddr::new(b, app_port)).await,
            200
        );
        for port in [15008, 15080, 15001, 15006, 16003, 15000, 15020, 15021] {
            assert_eq!(
                status(&client, peer, SocketAddr::new(b, port)).await,
                400,
                "CONNECT {b}:{port} over {peer:?}"
            );
        }
    }
    meshd.wait_for_log("refused: the destination is one of meshd's own ports");
    meshd.wait_for_log(&format!("destination={b}:16003"));
}

#[test]
fn plain_connections_straight_to_the_capture_ports_are_closed() {
    // Without capture rules, a connection straight to 15001 or 15006 has no original
    // destination but meshd's own port: it must be closed, never relayed (or looped).
    let (mut mesh, b, _) = portless_machine();
    mesh.node_mut("b")
        .serve(Port::Outbound)
        .serve(Port::InboundPlaintext);
    mesh.write();
    let meshd = mesh.start("b");
    for port in [15001, 15006] {
        let mut stream = TcpStream::connect((b, port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = stream.write_all(b"hello");
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "port {port}: closed without an answer");
    }
    // Still serving: neither connection took meshd down.
    TcpStream::connect((b, 15008)).expect("meshd still listens");
    drop(meshd);
}

#[test]
fn socks5_to_meshds_own_ports_is_not_allowed() {
    // The outbound side: an application asking meshd's SOCKS5 for meshd's own listeners.
    let (mut mesh, b, app_port) = portless_machine();
    mesh.node_mut("b")
        .serve(Port::Socks5)
        .serve(Port::Outbound)
        .listener(16004, SocketAddr::new(b, app_port));
    mesh.write();
    let meshd = mesh.start("b");
    for port in [15080u16, 15001, 16004, 15008] {
        let mut stream = TcpStream::connect((b, 15080)).expect("connect");
        stream.write_all(&[5, 1, 0]).unwrap();
        let mut choice = [0u8; 2];
        stream.read_exact(&mut choice).unwrap();
        let mut request = vec![5, 1, 0, 1];
        if let IpAddr::V4(v4) = b {
            request.extend_from_slice(&v4.octets());
        }
        request.extend_from_slice(&port.to_be_bytes());
        stream.write_all(&request).unwrap();
        let mut reply = [0u8; 10];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(
            reply[1], 2,
            "port {port}: 'connection not allowed by ruleset'"
        );
    }
    meshd.wait_for_log("one of meshd's own ports");
}

/// `meshd run --config <config>`, which must refuse to start: its exit code and stderr. A
/// meshd that starts anyway would never exit; it is killed after 10 s and the test fails
/// rather than hangs.
fn refused_start(config: &std::path::Path) -> (Option<i32>, String) {
    let mut child = std::process::Command::new(meshd_integration::meshd_bin())
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "meshd started instead of refusing to:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn socks5_on_a_remote_address_without_allow_remote_exits_78() {
    // Anyone who reaches such a port borrows the machine's identity: refuse to start.
    let (mut mesh, _, _) = portless_machine();
    mesh.node_mut("b").listen_on(Port::Socks5, "0.0.0.0:0");
    let config = mesh.write_node("b");
    let (code, stderr) = refused_start(&config);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("listen.socks5: 0.0.0.0:0 is not a loopback address")
            && stderr.contains("set socks5.allowRemote: true"),
        "{stderr}"
    );
}

#[test]
fn outbound_plugins_do_not_use_up_inbound_limits() {
    // connection_limit maxTotal: 1 on B. B's own application holds an outbound connection;
    // an inbound connection from A must still be admitted (the two directions used to share
    // one counter).
    let mut mesh = Mesh::new();
    mesh.shared_dir = true;
    let (a, b) = (mesh.ip(1), mesh.ip(2));
    // Outside the mesh (no WorkloadEntry at .3): B's outbound connection passes through.
    let outside = echo_server(mesh.addr(3, 0));
    let app_port = mesh.echo(2);
    mesh.workload(Workload::new("db", b).port("app", app_port));
    mesh.workload(Workload::new("web", a));
    mesh.node(Node::new("b", b, "db"))
        .listener(16005, outside)
        .plugin(
            Plugin::new("connection_limit")
                .with("maxPerSource", 5)
                .with("maxTotal", 1),
        );
    mesh.node(Node::new("a", a, "web"))
        .listener(16006, SocketAddr::new(b, app_port));
    mesh.write();
    let _b = mesh.start("b");
    let _a = mesh.start("a");

    let mut held = TcpStream::connect((b, 16005)).expect("connect");
    assert_eq!(
        echo_roundtrip(&mut held, b"out").as_deref(),
        Some(&b"out"[..])
    );
    let mut inbound = TcpStream::connect((a, 16006)).expect("connect");
    assert_eq!(
        echo_roundtrip(&mut inbound, b"in").as_deref(),
        Some(&b"in"[..]),
        "the inbound limit is not used up by B's outbound connection"
    );
    drop(held);
}

#[test]
fn strict_without_inbound_capture_is_warned_at_start_on_reload_and_by_validate() {
    // A STRICT PeerAuthentication cannot refuse plaintext that never reaches meshd: without
    // inbound capture the promise is not kept, and meshd must say so.
    let (mut mesh, b, _) = portless_machine();
    mesh.write();
    mesh.ws.write(
        "mesh/strict.yaml",
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-strict, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls:
    5432: {mode: STRICT}
",
    );
    let config = mesh.config("b");
    let meshd = mesh.start("b");
    let warning = "PeerAuthentication shop/db-strict requires mTLS (STRICT) for local workload shop/db, but inbound capture is off";
    meshd.wait_for_log(warning);
    meshd.signal("HUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while meshd.stderr().matches(warning).count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", meshd.stderr());
        std::thread::sleep(Duration::from_millis(50));
    }

    let output = std::process::Command::new(meshd_integration::meshd_bin())
        .args(["validate", "--daemon-config"])
        .arg(&config)
        .output()
        .expect("validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: warning: {warning}", config.display())),
        "{stdout}"
    );

    // With inbound capture configured the warning goes away.
    mesh.node(Node::new("c", b, "db"))
        .serve(Port::InboundPlaintext);
    let captured = mesh.write_node("c");
    let output = std::process::Command::new(meshd_integration::meshd_bin())
        .args(["validate", "--daemon-config"])
        .arg(&captured)
        .output()
        .expect("validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("inbound capture is off"), "{stdout}");
}

/// The `key=value` of the ready line, as an address.
fn ready_addr(meshd: &Meshd, key: &str) -> SocketAddr {
    meshd
        .ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {:?}", meshd.ready))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_operator_ports_is_400_when_configured_elsewhere_or_chosen_by_the_system() {
    // Admin on a port no well-known list has, metrics and readiness on ports the system picks:
    // each, as bound, is meshd's own, and the portless workload never reaches them.
    let (mut mesh, b, app_port) = portless_machine();
    mesh.node_mut("b")
        .listen_on(Port::Admin, SocketAddr::new(b, 16100))
        .listen_on(Port::Metrics, SocketAddr::new(b, 0))
        .listen_on(Port::Readiness, SocketAddr::new(b, 0));
    let config = mesh.write_node("b");
    let meshd = Meshd::start(&config);
    let metrics = ready_addr(&meshd, "metrics");
    let readiness = ready_addr(&meshd, "readiness");
    assert_eq!(ready_addr(&meshd, "admin"), SocketAddr::new(b, 16100));
    let client = client_as_web(&mesh).await;
    let db = SpiffeId::istio("cluster.local", "shop", "db").expect("id");
    let peer = Peer::new(db, SocketAddr::new(b, 15008));
    // The control: anything else on the machine is reachable.
    assert_eq!(
        status(&client, &peer, SocketAddr::new(b, app_port)).await,
        200
    );
    for port in [16100, metrics.port(), readiness.port()] {
        assert_eq!(
            status(&client, &peer, SocketAddr::new(b, port)).await,
            400,
            "CONNECT {b}:{port}"
        );
    }
    meshd.wait_for_log(&format!("destination={metrics}"));
}

#[test]
fn admin_on_a_remote_address_without_allow_remote_exits_78() {
    // Anyone who reaches it reads the configuration and can stop meshd: refuse to start,
    // before the port is ever bound.
    let (mut mesh, _, _) = portless_machine();
    let b = mesh.node_mut("b");
    b.workloads.clear();
    b.listen_on(Port::Admin, "0.0.0.0:0");
    let config = mesh.write_node("b");
    let (code, stderr) = refused_start(&config);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("listen.admin: 0.0.0.0:0 is not a loopback address")
            && stderr.contains("admin.allowRemote: true"),
        "{stderr}"
    );
    // `meshd validate` says the same.
    let output = std::process::Command::new(meshd_integration::meshd_bin())
        .args(["validate", "--daemon-config"])
        .arg(&config)
        .output()
        .expect("validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{stdout}");
    assert!(
        stdout.contains("listen.admin: 0.0.0.0:0 is not a loopback address"),
        "{stdout}"
    );
}
