//! The client's address kept (`redirect.originalSource`, ztunnel's `ENABLE_ORIG_SRC`): two
//! machines made of network namespaces, a client on A captured and tunnelled over HBONE to a
//! workload on B. With the key on, B's meshd connects to the workload from the client's
//! address and the workload's accepted socket sees A's address; off, it sees B's own (meshd's).
//! Both over IPv4 and over IPv6. `meshd redirect install` adds the routing that brings the
//! replies back (nftables chains, `ip rule`, table 100), again without duplicates, and
//! `uninstall` removes exactly that. Without `CAP_NET_ADMIN`, meshd refuses to start (78).
//! The tests fail, never skip, when they cannot create namespaces.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::process::Command;
use std::time::Duration;

use meshd_integration::mesh::{Mesh, Node, Port};
use meshd_integration::netns::{connect_in, install_capture, listen_in, meshd_in, run_in};
use meshd_integration::resources::Workload;
use meshd_integration::{Meshd, meshd_bin};
use meshd_redirect::netns::{Netns, NetnsPair};

/// The workload's port on B.
const PORT: u16 = 7000;

/// A server that answers each connection with the peer address it accepted, then closes: what
/// the workload sees of its client.
fn serve_peer_address(listener: TcpListener) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            if let Ok(peer) = stream.peer_addr() {
                let _ = stream.write_all(peer.ip().to_canonical().to_string().as_bytes());
            }
        }
    });
}

/// Connects from `ns` as an application to `workload` and returns what it answered (the
/// address it saw), the connection closed (records are written when connections end).
fn ask_workload(ns: &Netns, workload: SocketAddr) -> String {
    let mut stream = connect_in(ns, workload).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    stream
        .read_to_string(&mut seen)
        .expect("the workload's answer");
    seen
}

/// Web on A, db on B (port [`PORT`]) at the pair's addresses of one family; A captures its
/// outbound traffic, B keeps the client's address when `original_source`.
fn mesh(v6: bool, original_source: bool) -> (Mesh, IpAddr, IpAddr) {
    let (local, peer) = if v6 {
        (NetnsPair::LOCAL_V6, NetnsPair::PEER_V6)
    } else {
        (NetnsPair::LOCAL_V4, NetnsPair::PEER_V4)
    };
    let mut mesh = Mesh::in_namespaces();
    mesh.workload(Workload::new("web", local));
    mesh.workload(Workload::new("db", peer).port("echo", PORT));
    mesh.shared_dir = true;
    for (name, ip, sa) in [("b", peer, "db"), ("a", local, "web")] {
        let node = mesh.node(Node::new(name, ip, sa));
        // Quoted: an IPv6 `[addr]:port` would read as a YAML list. The operator endpoints stay
        // inside the machine.
        node.listen_on(Port::Hbone, format!("'{}'", SocketAddr::new(ip, 15008)));
        for port in [Port::Admin, Port::Metrics, Port::Readiness] {
            node.listen_on(port, format!("127.0.0.1:{}", port.number()));
        }
    }
    let redirect = format!("{{originalSource: {original_source}}}");
    mesh.node_mut("b").setting("redirect", &redirect);
    (mesh.node_mut("a"))
        .listen_on(Port::Outbound, "'[::]:15001'")
        .setting("redirect", "{}");
    mesh.write();
    (mesh, local, peer)
}

/// Runs one connection from A to B's workload and returns the client address the workload
/// saw, checking that B's access log names both the client and the address meshd connected
/// from. Leaves the namespaces to the caller, to look at B's rules.
fn client_address_seen(nodes: &NetnsPair, v6: bool, original_source: bool) -> IpAddr {
    let (mesh, local, peer) = mesh(v6, original_source);
    serve_peer_address(listen_in(&nodes.peer, SocketAddr::new(peer, PORT)));
    let (b_config, a_config) = (mesh.config("b"), mesh.config("a"));
    let b = Meshd::spawn(run_in(&nodes.peer, &b_config));
    let _a = Meshd::spawn(run_in(&nodes.local, &a_config));
    install_capture(&nodes.peer, &b_config);
    install_capture(&nodes.local, &a_config);

    let seen = ask_workload(&nodes.local, SocketAddr::new(peer, PORT));
    let seen: IpAddr = seen
        .parse()
        .unwrap_or_else(|e| panic!("{seen:?}: {e}; B's log:\n{}", b.stderr()));

    // B's record keeps both: the client (src.addr) and where meshd connected from.
    let from = if original_source { local } else { peer };
    let (src, upstream) = (any_port(local), any_port(from));
    let log = b.wait_for_log(&format!("upstream.local_addr={upstream}"));
    let line = (log.lines())
        .find(|l| l.contains("upstream.local_addr=") && !l.contains("upstream.local_addr=-"))
        .unwrap_or_default();
    assert!(line.contains(&format!("src.addr={src}")), "{line}");
    seen
}

/// `ip` as a log line starts an address of it, whatever the port: `10.213.0.1:`,
/// `[fd00:213::1]:`.
fn any_port(ip: IpAddr) -> String {
    let with_port = SocketAddr::new(ip, 0).to_string();
    with_port
        .strip_suffix('0')
        .unwrap_or(&with_port)
        .to_string()
}

/// What `ip ARGS` prints inside `ns`.
fn ip_in(ns: &Netns, args: &[&str]) -> String {
    ns.ip(args).unwrap_or_else(|e| panic!("ip {args:?}: {e}"))
}

/// The lines of `ip -4|-6 rule show` that are original source's rule.
fn our_rules(ns: &Netns, family: &str) -> usize {
    ip_in(ns, &[family, "rule", "show"])
        .lines()
        .filter(|l| l.starts_with("32764:") && l.contains("fwmark 0x111/0xfff lookup 100"))
        .count()
}

/// Whether table 100 of `family` holds the local default route (iproute2 reports a table
/// without routes as an error: that is a no).
fn our_route(ns: &Netns, family: &str) -> bool {
    match ns.ip(&[family, "route", "show", "table", "100"]) {
        Ok(routes) => routes
            .lines()
            .any(|l| l.starts_with("local default dev lo")),
        Err(e) if e.to_string().contains("FIB table does not exist") => false,
        Err(e) => panic!("ip {family} route show table 100: {e}"),
    }
}

/// `meshd ARGS` inside `ns`, which must succeed.
fn meshd_ok(ns: &Netns, args: &[&str], config: Option<&std::path::Path>) {
    let mut command = meshd_in(ns, args);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    let out = command.output().expect("run meshd");
    assert!(out.status.success(), "meshd {args:?}: {out:?}");
}

#[test]
fn with_original_source_the_workload_sees_the_client_over_ipv4() {
    let nodes = NetnsPair::new("origsrc4");
    let seen = client_address_seen(&nodes, false, true);
    assert_eq!(seen, NetnsPair::LOCAL_V4);
}

#[test]
fn with_original_source_the_workload_sees_the_client_over_ipv6() {
    let nodes = NetnsPair::new("origsrc6");
    let seen = client_address_seen(&nodes, true, true);
    assert_eq!(seen, NetnsPair::LOCAL_V6);
}

#[test]
fn without_original_source_the_workload_sees_meshd() {
    for (v6, peer) in [(false, NetnsPair::PEER_V4), (true, NetnsPair::PEER_V6)] {
        let nodes = NetnsPair::new("noorigsrc");
        let seen = client_address_seen(&nodes, v6, false);
        assert_eq!(seen, peer, "v6: {v6}");
        // Off, install adds none of the routing.
        for family in ["-4", "-6"] {
            assert_eq!(our_rules(&nodes.peer, family), 0);
            assert!(!our_route(&nodes.peer, family));
        }
    }
}

// Captured plaintext inbound keeps the client's address too: a client on A that bypasses
// meshd (A runs none) is captured by B's inbound rules, and B's meshd connects to the workload
// from A's address.
#[test]
fn captured_plaintext_keeps_the_client_address_too() {
    let nodes = NetnsPair::new("origsrc-plain");
    let (mut mesh, local, peer) = mesh(false, true);
    let b = mesh.node_mut("b");
    b.settings.retain(|(key, _)| key != "redirect");
    b.listen_on(Port::InboundPlaintext, "0.0.0.0:15006")
        .setting("redirect", "{inboundPort: 15006, originalSource: true}");
    mesh.write();
    serve_peer_address(listen_in(&nodes.peer, SocketAddr::new(peer, PORT)));
    let config = mesh.config("b");
    let b = Meshd::spawn(run_in(&nodes.peer, &config));
    let shown = install_capture(&nodes.peer, &config);
    assert!(shown.contains("redirect to :15006"), "{shown}");

    let seen = ask_workload(&nodes.local, SocketAddr::new(peer, PORT));
    assert_eq!(seen, local.to_string(), "B's log:\n{}", b.stderr());
    let log = b.wait_for_log(&format!("upstream.local_addr={local}:"));
    assert!(log.contains("mtls=false"), "{log}");
}

// Install adds the chains, the rule and the route for both families, once however often it
// runs; uninstall removes all of it; installing with the key off removes the routing too.
#[test]
fn install_is_idempotent_and_uninstall_removes_the_routing() {
    let nodes = NetnsPair::new("origsrc-rules");
    let (mesh, _, _) = mesh(false, true);
    let config = mesh.config("b");
    let ns = &nodes.peer;
    for _ in 0..2 {
        meshd_ok(ns, &["redirect", "install"], Some(&config));
    }
    let shown = String::from_utf8_lossy(
        &meshd_in(ns, &["redirect", "show"])
            .output()
            .expect("show")
            .stdout,
    )
    .into_owned();
    assert!(shown.contains("chain origsrc_prerouting"), "{shown}");
    assert!(
        shown.contains("-4 rule 32764:\tfrom all fwmark 0x111/0xfff lookup 100"),
        "{shown}"
    );
    assert!(
        shown.contains("-6 route table 100: local default dev lo"),
        "{shown}"
    );
    assert!(shown.contains("chain origsrc_output"), "{shown}");
    assert!(
        shown.contains(
            "ct direction reply ct mark & 0x00000fff == 0x00000111 meta mark set ct mark"
        ),
        "{shown}"
    );
    for family in ["-4", "-6"] {
        assert_eq!(our_rules(ns, family), 1, "{family}");
        assert!(our_route(ns, family), "{family}");
    }

    meshd_ok(ns, &["redirect", "uninstall"], None);
    meshd_ok(ns, &["redirect", "uninstall"], None);
    let listed = Command::new("ip")
        .args(["netns", "exec", ns.name(), "nft", "list", "tables"])
        .output()
        .expect("nft list tables");
    let tables = String::from_utf8_lossy(&listed.stdout);
    assert!(!tables.contains("inet meshd"), "{tables}");
    for family in ["-4", "-6"] {
        assert_eq!(our_rules(ns, family), 0, "{family}");
        assert!(!our_route(ns, family), "{family}");
    }

    // On, then installed again with the key off: the routing goes, the capture stays.
    meshd_ok(ns, &["redirect", "install"], Some(&config));
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("originalSource: true", "originalSource: false"),
    )
    .unwrap();
    meshd_ok(ns, &["redirect", "install"], Some(&config));
    assert_eq!(our_rules(ns, "-4"), 0);
    assert!(!our_route(ns, "-4"));
    meshd_ok(ns, &["redirect", "uninstall"], None);
}

// Without CAP_NET_ADMIN (and CAP_NET_RAW) no socket may be transparent: meshd says so at
// start, naming the key, and exits 78; the same meshd without the key starts.
#[test]
fn without_the_capability_original_source_exits_78_at_start() {
    let mut mesh = Mesh::web_db();
    mesh.node_mut("b")
        .setting("redirect", "{originalSource: true}");
    mesh.write();
    // Root whose bounding and inheritable sets are empty holds no capability after exec.
    let no_caps = || {
        let mut command = Command::new("setpriv");
        command
            .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
            .arg(meshd_bin())
            .arg("run")
            .arg("--config")
            .arg(mesh.config("b"));
        command
    };
    let mut b = Meshd::spawn_starting(no_caps());
    let code = b.wait_exit(Duration::from_secs(10));
    let stderr = b.stderr();
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("redirect.originalSource: true"), "{stderr}");
    assert!(stderr.contains("IP_TRANSPARENT"), "{stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN"), "{stderr}");

    let text = std::fs::read_to_string(mesh.config("b")).unwrap();
    std::fs::write(
        mesh.config("b"),
        text.replace("originalSource: true", "originalSource: false"),
    )
    .unwrap();
    let _b = Meshd::spawn(no_caps());
}
