//! Transparent capture between two machines made of network namespaces: an application's
//! plain `connect()` to a workload on the other machine is redirected into meshd (nftables,
//! SO_ORIGINAL_DST) and tunnelled over HBONE; plaintext that bypasses the client's meshd is
//! captured on arrival and meets PeerAuthentication (STRICT refuses it, a PERMISSIVE port lets
//! policy decide). The test fails, never skips, when it cannot create namespaces.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};

use meshd_integration::mesh::{Mesh, Node, Port};
use meshd_integration::netns::{
    connect_in, connect_marked_in, install_capture, listen_in, meshd_in, run_in,
};
use meshd_integration::resources::{PeerAuth, Policy, Rule, Workload, principal};
use meshd_integration::{Meshd, echo_on, echo_roundtrip};
use meshd_redirect::netns::{Netns, NetnsPair};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

/// Web on the local machine, db on the peer (pg 5432, replica 5433, admin 5434). Web may use
/// pg and replica over the mesh; plaintext from the web machine may use replica. STRICT for
/// db, except the replica port.
fn mesh() -> Mesh {
    let mut mesh = Mesh::in_namespaces();
    let (local, peer) = (IpAddr::V4(LOCAL), IpAddr::V4(PEER));
    mesh.workload(Workload::new("web", local).label("app", "web"));
    mesh.workload(
        Workload::new("db", peer)
            .label("app", "db")
            .port("pg", 5432)
            .port("replica", 5433)
            .port("admin", 5434),
    );
    mesh.policy(
        Policy::allow("db-access")
            .selector("app", "db")
            .rule(Rule::from(principal("web")).port(5432).port(5433))
            .rule(Rule::from_ip(LOCAL.to_string()).port(5433)),
    );
    mesh.peer_auth(
        PeerAuth::new("db-strict", "STRICT")
            .selector("app", "db")
            .port(5433, "PERMISSIVE"),
    );
    mesh.shared_dir = true;
    mesh.node(Node::new("b", peer, "db"))
        .listen_on(Port::InboundPlaintext, "0.0.0.0:15006")
        .setting("redirect", "{inboundPort: 15006}");
    mesh.node(Node::new("a", local, "web"))
        .listen_on(Port::Outbound, "0.0.0.0:15001")
        .setting("redirect", "{}");
    mesh.write();
    mesh
}

fn connect(ns: &Netns, ip: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    connect_in(ns, SocketAddr::from((ip, port)))
}

fn connect_marked(ns: &Netns, ip: Ipv4Addr, port: u16) -> std::io::Result<TcpStream> {
    connect_marked_in(ns, SocketAddr::from((ip, port)))
}

#[test]
fn captured_connections_are_tunnelled_and_plaintext_meets_peer_authentication() {
    let nodes = NetnsPair::new("capture");
    let mesh = mesh();
    for port in [5432, 5433, 5434] {
        echo_on(listen_in(&nodes.peer, SocketAddr::from((PEER, port))));
    }
    let (b_config, a_config) = (mesh.config("b"), mesh.config("a"));
    let b = Meshd::spawn(run_in(&nodes.peer, &b_config));
    let a = Meshd::spawn(run_in(&nodes.local, &a_config));
    install_capture(&nodes.peer, &b_config);
    install_capture(&nodes.local, &a_config);

    // An application's plain connect() is captured by A and tunnelled to B.
    let mut captured = connect(&nodes.local, PEER, 5432).expect("connect");
    assert_eq!(
        echo_roundtrip(&mut captured, b"captured").as_deref(),
        Some(&b"captured"[..])
    );
    drop(captured); // access records are written when connections end
    a.wait_for_log(&format!(
        "dst={PEER}:5432 dst.workload=\"db\" dst.namespace=\"shop\""
    ));
    b.wait_for_log("policy=\"shop/db-access\"");

    // Denied by policy on B (401): the application sees its connection reset. The reset can
    // arrive before connect() returns (connect_timeout then reports it), as the tunnel is
    // pooled and the refusal is quick.
    match connect(&nodes.local, PEER, 5434) {
        Ok(mut denied) => assert_eq!(echo_roundtrip(&mut denied, b"admin"), None),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    a.wait_for_log("peer meshd refused the tunnel with HTTP status 401");

    // Plaintext that bypasses A (marked socket) is captured by B: STRICT refuses it...
    // (meshd resets a refused connection; the reset may arrive before connect() returns.)
    match connect_marked(&nodes.local, PEER, 5432) {
        Ok(mut strict) => assert_eq!(echo_roundtrip(&mut strict, b"plaintext"), None),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    b.wait_for_log(
        "plaintext refused: PeerAuthentication shop/db-strict requires mTLS (STRICT) on port 5432",
    );

    // ...and on the PERMISSIVE port policy decides: the ipBlocks rule admits it.
    let mut permissive = connect_marked(&nodes.local, PEER, 5433).expect("connect marked");
    assert_eq!(
        echo_roundtrip(&mut permissive, b"plaintext ok").as_deref(),
        Some(&b"plaintext ok"[..])
    );
    drop(permissive);
    let log = b.wait_for_log(&format!("dst={PEER}:5433 "));
    let line = log
        .lines()
        .find(|l| l.contains(&format!("dst={PEER}:5433 ")))
        .unwrap_or_default();
    assert!(
        line.contains("src.identity=\"-\"") && line.contains("mtls=false"),
        "a plaintext connection has no identity: {line}"
    );

    let out = meshd_in(&nodes.local, &["redirect", "uninstall"])
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{out:?}");
    let shown = meshd_in(&nodes.local, &["redirect", "show"])
        .output()
        .expect("show");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("no capture rules installed"),
        "{shown:?}"
    );
}
