//! Transparent capture between two machines made of network namespaces: an application's
//! plain `connect()` to a workload on the other machine is redirected into meshd (nftables,
//! SO_ORIGINAL_DST) and tunnelled over HBONE; plaintext that bypasses the client's meshd is
//! captured on arrival and meets PeerAuthentication (STRICT refuses it, a PERMISSIVE port lets
//! policy decide). The test fails, never skips, when it cannot create namespaces.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::Duration;

use meshd_integration::{Meshd, Workspace, echo_on, echo_roundtrip, meshd_bin};
use meshd_redirect::netns::{Netns, NetnsPair};

const LOCAL: &str = "10.213.0.1";
const PEER: &str = "10.213.0.2";

fn mesh(ws: &Workspace) {
    ws.write(
        "mesh/mesh.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: shop}}
spec: {{address: {LOCAL}, serviceAccount: web, labels: {{app: web}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db, namespace: shop}}
spec:
  address: {PEER}
  serviceAccount: db
  labels: {{app: db}}
  ports: {{pg: 5432, replica: 5433, admin: 5434}}
---
# Web may use pg and replica over the mesh; plaintext from the web machine may use replica.
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: db-access, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/shop/sa/web]}}}}]
    to: [{{operation: {{ports: ['5432', '5433']}}}}]
  - from: [{{source: {{ipBlocks: [{LOCAL}]}}}}]
    to: [{{operation: {{ports: ['5433']}}}}]
---
# STRICT for db, except the replica port.
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: db-strict, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: db}}}}
  mtls: {{mode: STRICT}}
  portLevelMtls: {{'5433': {{mode: PERMISSIVE}}}}
"
        ),
    );
}

fn in_ns(ns: &Netns, args: &[&str]) -> Command {
    let mut command = ns.command(meshd_bin());
    command.args(args);
    command
}

fn install_rules(ns: &Netns, config: &std::path::Path) {
    let out = in_ns(ns, &["redirect", "install", "--config"])
        .arg(config)
        .output()
        .expect("meshd redirect install");
    assert!(out.status.success(), "redirect install failed: {out:?}");
    let shown = in_ns(ns, &["redirect", "show"])
        .output()
        .expect("meshd redirect show");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("redirect to :"),
        "{shown:?}"
    );
}

fn connect_in(ns: &Netns, to: &str) -> TcpStream {
    try_connect_in(ns, to).expect("connect")
}

fn try_connect_in(ns: &Netns, to: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = to.parse().expect("addr");
    ns.run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
}

fn connect_marked_in(ns: &Netns, to: &str) -> TcpStream {
    try_connect_marked_in(ns, to).expect("connect marked")
}

fn try_connect_marked_in(ns: &Netns, to: &str) -> std::io::Result<TcpStream> {
    let addr: SocketAddr = to.parse().expect("addr");
    let stream = ns.run_async(move || {
        meshd_redirect::connect_marked(addr, meshd_redirect::DEFAULT_MARK, Duration::from_secs(5))
    })?;
    let stream = stream.into_std().expect("std stream");
    // tokio hands sockets back non-blocking; the test reads them with blocking calls.
    stream.set_nonblocking(false).expect("blocking");
    Ok(stream)
}

#[test]
fn captured_connections_are_tunnelled_and_plaintext_meets_peer_authentication() {
    let nodes = NetnsPair::new("capture");
    let ws = Workspace::new();
    mesh(&ws);
    for port in [5432, 5433, 5434] {
        let listener = nodes
            .peer
            .run(move || TcpListener::bind((PEER, port)))
            .expect("bind echo inside the peer namespace");
        echo_on(listener);
    }
    let b_config = ws.node_config(
        "b",
        "db",
        "shop/db",
        PEER,
        "  inboundPlaintext: 0.0.0.0:15006\n",
        "redirect: {inboundPort: 15006}\n",
    );
    let a_config = ws.node_config(
        "a",
        "web",
        "shop/web",
        LOCAL,
        "  outbound: 0.0.0.0:15001\n",
        "redirect: {}\n",
    );
    let b = Meshd::spawn({
        let mut c = in_ns(&nodes.peer, &["run", "--config"]);
        c.arg(&b_config);
        c
    });
    let a = Meshd::spawn({
        let mut c = in_ns(&nodes.local, &["run", "--config"]);
        c.arg(&a_config);
        c
    });
    install_rules(&nodes.peer, &b_config);
    install_rules(&nodes.local, &a_config);

    // An application's plain connect() is captured by A and tunnelled to B.
    let mut captured = connect_in(&nodes.local, &format!("{PEER}:5432"));
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
    match try_connect_in(&nodes.local, &format!("{PEER}:5434")) {
        Ok(mut denied) => assert_eq!(echo_roundtrip(&mut denied, b"admin"), None),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    a.wait_for_log("peer meshd refused the tunnel with HTTP status 401");

    // Plaintext that bypasses A (marked socket) is captured by B: STRICT refuses it...
    // (meshd resets a refused connection; the reset may arrive before connect() returns.)
    match try_connect_marked_in(&nodes.local, &format!("{PEER}:5432")) {
        Ok(mut strict) => assert_eq!(echo_roundtrip(&mut strict, b"plaintext"), None),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    b.wait_for_log(
        "plaintext refused: PeerAuthentication shop/db-strict requires mTLS (STRICT) on port 5432",
    );

    // ...and on the PERMISSIVE port policy decides: the ipBlocks rule admits it.
    let mut permissive = connect_marked_in(&nodes.local, &format!("{PEER}:5433"));
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

    let out = in_ns(&nodes.local, &["redirect", "uninstall"])
        .output()
        .expect("uninstall");
    assert!(out.status.success(), "{out:?}");
    let shown = in_ns(&nodes.local, &["redirect", "show"])
        .output()
        .expect("show");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("no capture rules installed"),
        "{shown:?}"
    );
}
