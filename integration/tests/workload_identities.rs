//! One identity per local workload, across real network namespaces: machine A runs two
//! workloads under different service accounts (`web` on 10.215.0.1, `db` on 10.215.0.11), each
//! with its own SVID (`workloadIdentities:`, a spiffe-helper directory each); machine B
//! (10.215.0.2) runs `httpbin`, whose AuthorizationPolicy allows `web` only.
//!
//! - Outbound from A, each way an application reaches the mesh (capture from the workload's
//!   address, an explicit listener naming the workload, a SOCKS5 user name): `web` is
//!   allowed by B, `db` denied, so the certificate A presented was the source's.
//! - Inbound to A from B: each address answers as its own workload (B's meshd verifies the
//!   identity it expects), and A's policy denying `httpbin` → `db` applies to `db` alone.
//! - Independently of meshd: `openssl s_client` to each address's port 15008 shows that
//!   address's workload's SAN URI.
//!
//! Fails (never skips) when namespaces cannot be made.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use meshd_integration::machines::{NAMESPACE, issue_svid as issue};
use meshd_integration::netns::{self, CONNECT_TIMEOUT};
use meshd_integration::{Meshd, Workspace, echo_on, echo_roundtrip, eventually};
use meshd_redirect::netns::{Netns, VethEnd, veth_pair};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 1);
const DB: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 11);
const HTTPBIN: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 2);
/// The application port on every workload.
const APP: u16 = 8080;

/// The identity the mesh expects of service account `sa`.
fn id(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}")
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// Every machine's configuration directory: the three workloads, B's policy (only `web` may
/// reach `httpbin`) and A's (`httpbin` may not reach `db`).
fn mesh_yaml() -> String {
    mesh_yaml_over(Tunnel::Http2)
}

/// How peers reach every workload: HBONE over HTTP/2 (TCP), or over HTTP/3 (QUIC), which a
/// workload asks for with the `meshd.io/tunnel: quic` annotation.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tunnel {
    Http2,
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    Http3,
}

/// [`mesh_yaml`] with every workload reached over `tunnel`.
fn mesh_yaml_over(tunnel: Tunnel) -> String {
    let annotations = match tunnel {
        Tunnel::Http2 => "",
        Tunnel::Http3 => ", annotations: {meshd.io/tunnel: quic}",
    };
    let workload = |name: &str, ip: Ipv4Addr| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {NAMESPACE}{annotations}}}\nspec: {{address: {ip}, serviceAccount: {name}, labels: {{app: {name}}}}}\n"
        )
    };
    [
        workload("web", WEB),
        workload("db", DB),
        workload("httpbin", HTTPBIN),
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only-web, namespace: {NAMESPACE}}}\nspec:\n  selector: {{matchLabels: {{app: httpbin}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/{NAMESPACE}/sa/web]}}\n"
        ),
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: no-httpbin, namespace: {NAMESPACE}}}\nspec:\n  selector: {{matchLabels: {{app: db}}}}\n  action: DENY\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/{NAMESPACE}/sa/httpbin]}}\n"
        ),
    ]
    .join("---\n")
}

/// meshd.yaml for a machine: its own identity from `tls`, `extra` appended (workload
/// identities, listeners), capture on every address, operator endpoints on loopback.
/// HBONE over HTTP/3 (UDP 15008) is accepted too when `tunnel` says so.
fn meshd_yaml_over(tunnel: Tunnel, dir: &Path, workloads: &[&str], extra: &str) -> String {
    let quic = match tunnel {
        Tunnel::Http2 => "",
        Tunnel::Http3 => "  hboneQuic: 0.0.0.0:15008\n",
    };
    let local: Vec<String> = workloads
        .iter()
        .map(|w| format!("{NAMESPACE}/{w}"))
        .collect();
    format!(
        "configDir: {mesh}\nidentity:\n  spiffeHelper: {{dir: {tls}}}\nlocal: {{workloads: [{local}]}}\nlisten:\n  hbone: 0.0.0.0:15008\n{quic}  outbound: 0.0.0.0:15001\n  inboundPlaintext: 0.0.0.0:15006\n  socks5: 127.0.0.1:15080\n  admin: 127.0.0.1:15000\n  metrics: 127.0.0.1:15020\n  readiness: 127.0.0.1:15021\nredirect: {{inboundPort: 15006}}\n{extra}",
        mesh = dir.join("mesh").display(),
        tls = dir.join("tls").display(),
        local = local.join(", "),
    )
}

/// The two machines on a bridge, each with its meshd running and capture installed.
struct Machines {
    // Field order is drop order: processes, then namespaces, then files.
    /// A's and B's meshd (read by the HTTP/3 test, which needs the `quic` feature).
    #[cfg_attr(not(feature = "quic"), allow(dead_code))]
    meshd: Vec<Meshd>,
    a: Netns,
    b: Netns,
    _bridge: Netns,
    ws: Workspace,
}

fn wire(bridge: &Netns, ns: &Netns, port: &str, ips: &[Ipv4Addr]) {
    let addrs: Vec<IpNet> = ips
        .iter()
        .map(|ip| IpNet::new_assert(IpAddr::V4(*ip), 16))
        .collect();
    veth_pair(
        VethEnd {
            ns: bridge,
            name: port,
            addrs: &[],
        },
        VethEnd {
            ns,
            name: "eth0",
            addrs: &addrs,
        },
    )
    .and_then(|()| bridge.ip(&["link", "set", port, "master", "br0"]))
    .unwrap_or_else(|e| panic!("cannot wire {port} to the bridge: {e}"));
}

fn start() -> Machines {
    start_over(Tunnel::Http2)
}

fn start_over(tunnel: Tunnel) -> Machines {
    let ws = Workspace::new();
    let bridge = Netns::new("pw-br");
    bridge
        .ip(&["link", "add", "br0", "type", "bridge"])
        .and_then(|_| bridge.ip(&["link", "set", "br0", "up"]))
        .unwrap_or_else(|e| panic!("cannot create the test bridge: {e}"));
    let a = Netns::new("pw-a");
    let b = Netns::new("pw-b");
    wire(&bridge, &a, "pa", &[WEB, DB]);
    wire(&bridge, &b, "pb", &[HTTPBIN]);

    let (dir_a, dir_b) = (ws.path().join("a"), ws.path().join("b"));
    // A's own identity is neither workload's: what a workload's own would be mistaken for.
    issue(&ws, "node-a", &dir_a.join("tls"));
    issue(&ws, "web", &dir_a.join("web"));
    issue(&ws, "db", &dir_a.join("db"));
    issue(&ws, "httpbin", &dir_b.join("tls"));
    let mesh = mesh_yaml_over(tunnel);
    ws.write("a/mesh/mesh.yaml", &mesh);
    ws.write("b/mesh/mesh.yaml", &mesh);
    let target = addr(HTTPBIN, APP);
    let extra_a = format!(
        "workloadIdentities:\n  {NAMESPACE}/web: {{spiffeHelper: {{dir: {web}}}}}\n  {NAMESPACE}/db: {{spiffeHelper: {{dir: {db}}}}}\nlisteners:\n- {{listen: '127.0.0.1:9001', target: '{target}', workload: {NAMESPACE}/web}}\n- {{listen: '127.0.0.1:9002', target: '{target}', workload: {NAMESPACE}/db}}\n- {{listen: '127.0.0.1:9003', target: '{target}', workload: {NAMESPACE}/nobody}}\n",
        web = dir_a.join("web").display(),
        db = dir_a.join("db").display(),
    );
    let config_a = ws.write(
        "a/meshd.yaml",
        &meshd_yaml_over(tunnel, &dir_a, &["web", "db"], &extra_a),
    );
    let config_b = ws.write(
        "b/meshd.yaml",
        &meshd_yaml_over(tunnel, &dir_b, &["httpbin"], ""),
    );

    // Applications: an echo server on every workload's address.
    echo_on(netns::listen_in(&b, addr(HTTPBIN, APP)));
    echo_on(netns::listen_in(&a, addr(WEB, APP)));
    echo_on(netns::listen_in(&a, addr(DB, APP)));

    let meshd = vec![
        Meshd::spawn(netns::run_in(&a, &config_a)),
        Meshd::spawn(netns::run_in(&b, &config_b)),
    ];
    netns::install_capture(&a, &config_a);
    netns::install_capture(&b, &config_b);
    Machines {
        meshd,
        a,
        b,
        _bridge: bridge,
        ws,
    }
}

/// An application's connect from `ns`, bound to `source` first (the workload's address),
/// captured by that machine's meshd.
fn connect_from(ns: &Netns, source: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    netns::connect_from_in(ns, IpAddr::V4(source), to)
}

/// Whether one echo round trip on `stream` comes back (allowed) or the connection is cut
/// (denied). A refusal can reset the connection before the client's connect call has returned
/// (an explicit listener refuses at once): that is a cut too. Any other connect error fails.
fn echoes(stream: std::io::Result<TcpStream>, what: &str) -> bool {
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return false,
        Err(e) => panic!("{what}: connect: {e}"),
    };
    echo_roundtrip(&mut stream, what.as_bytes()).is_some()
}

/// A SOCKS5 CONNECT from inside `ns` with `user` as RFC 1929 user name: the reply code.
fn socks5_as(ns: &Netns, user: &str, to: SocketAddr) -> (u8, Option<TcpStream>) {
    let user = user.to_string();
    ns.run(move || {
        let mut s =
            TcpStream::connect_timeout(&"127.0.0.1:15080".parse().ok()?, CONNECT_TIMEOUT).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(&[5, 1, 2]).ok()?;
        let mut choice = [0u8; 2];
        s.read_exact(&mut choice).ok()?;
        assert_eq!(choice, [5, 2], "the user name method is chosen");
        let mut auth = vec![1, user.len() as u8];
        auth.extend_from_slice(user.as_bytes());
        auth.extend_from_slice(&[1, b'x']);
        s.write_all(&auth).ok()?;
        let mut status = [0u8; 2];
        s.read_exact(&mut status).ok()?;
        assert_eq!(status, [1, 0]);
        let IpAddr::V4(ip) = to.ip() else { return None };
        let mut request = vec![5, 1, 0, 1];
        request.extend_from_slice(&ip.octets());
        request.extend_from_slice(&to.port().to_be_bytes());
        s.write_all(&request).ok()?;
        let mut reply = [0u8; 10];
        s.read_exact(&mut reply).ok()?;
        Some((reply[1], Some(s)))
    })
    .unwrap_or((0xff, None))
}

/// The SAN URI of the certificate `openssl s_client` is shown at `to`, run inside `ns` with
/// `client`'s SVID (meshd asks for a client certificate).
fn san_uri_at(ns: &Netns, to: SocketAddr, client: &Path) -> String {
    let client = (&client.join("svid.pem"), &client.join("svid_key.pem"));
    netns::served_san_uri(ns, to, (client.0.as_path(), client.1.as_path()), None)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn each_local_workload_has_its_own_identity_both_ways() {
    let m = start();
    let httpbin = addr(HTTPBIN, APP);

    // The certificate of each address, read by a TLS client that is not meshd.
    let client_svid = m.ws.path().join("b/tls");
    assert_eq!(san_uri_at(&m.b, addr(WEB, 15008), &client_svid), id("web"));
    assert_eq!(san_uri_at(&m.b, addr(DB, 15008), &client_svid), id("db"));

    // Outbound through capture, from each workload's address.
    assert!(echoes(connect_from(&m.a, WEB, httpbin), "capture from web"));
    assert!(!echoes(connect_from(&m.a, DB, httpbin), "capture from db"));

    // Explicit listeners naming each workload; one naming no local workload is refused.
    let listener = |port: u16| netns::connect_in(&m.a, addr(Ipv4Addr::LOCALHOST, port));
    assert!(echoes(listener(9001), "listener as web"));
    assert!(!echoes(listener(9002), "listener as db"));
    assert!(!echoes(
        listener(9003),
        "listener as a workload of no machine"
    ));

    // SOCKS5, the user name naming the workload.
    let (code, stream) = socks5_as(&m.a, &format!("{NAMESPACE}/web"), httpbin);
    assert_eq!(code, 0, "SOCKS5 as web");
    assert!(echoes(
        stream.ok_or_else(|| std::io::Error::other("no stream")),
        "socks as web"
    ));
    assert_eq!(
        socks5_as(&m.a, &format!("{NAMESPACE}/db"), httpbin).0,
        2,
        "SOCKS5 as db"
    );
    assert_eq!(
        socks5_as(&m.a, &format!("{NAMESPACE}/nobody"), httpbin).0,
        2,
        "SOCKS5 as a workload of no machine"
    );

    // Inbound: B reaches each of A's workloads under the identity it expects for it (its meshd
    // checks the certificate), and A's policy keeps httpbin from db only.
    assert!(echoes(
        netns::connect_in(&m.b, addr(WEB, APP)),
        "httpbin to web"
    ));
    assert!(!echoes(
        netns::connect_in(&m.b, addr(DB, APP)),
        "httpbin to db"
    ));

    // B's records name the source principal A presented for each.
    let denied = eventually("B's denial of db", || {
        let (_, body) = m.b.run(|| {
            meshd_integration::http("127.0.0.1:15000".parse().ok()?, "GET", "/status/denials")
        })?;
        body.contains(&id("db")).then_some(body)
    });
    assert!(!denied.contains(&id("node-a")), "{denied}");

    // `meshd status certs` lists every identity A holds, each with its expiry.
    let (_, certs) = m
        .a
        .run(|| meshd_integration::http("127.0.0.1:15000".parse().ok()?, "GET", "/status/certs"))
        .expect("A's admin endpoint answers");
    for sa in ["node-a", "web", "db"] {
        assert!(certs.contains(&id(sa)), "{sa} missing from {certs}");
    }
    let metrics =
        m.a.run(|| meshd_integration::http("127.0.0.1:15020".parse().ok()?, "GET", "/metrics"))
            .map(|(_, body)| body)
            .expect("A's metrics endpoint answers");
    for sa in ["node-a", "web", "db"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.contains("expir") && l.contains(&id(sa))),
            "no expiry series for {sa}"
        );
    }
}

/// A's admin endpoint: (status, body) of `GET path`.
fn admin_a(m: &Machines, path: &str) -> Option<(u16, String)> {
    let path = path.to_string();
    m.a.run(move || meshd_integration::http("127.0.0.1:15000".parse().ok()?, "GET", &path))
}

/// Holds: a connection that authenticated as `web` carries no CONNECT to a workload served
/// under another identity. B's pooled connection to 10.215.0.1 presented web's certificate;
/// A's configuration then says that address is a workload of service account `db` (B's has
/// not changed, so B reuses the connection): A refuses the CONNECT, recorded as denied with
/// the reason.
#[test]
fn a_connect_on_a_connection_of_another_identity_is_refused() {
    let m = start();
    assert!(echoes(
        netns::connect_in(&m.b, addr(WEB, APP)),
        "httpbin to web"
    ));
    let generation = |m: &Machines| {
        let (_, body) = admin_a(m, "/config_dump")?;
        serde_json::from_str::<serde_json::Value>(&body).ok()?["generation"].as_u64()
    };
    let before = eventually("A's generation", || generation(&m));
    let moved = mesh_yaml().replace(
        &format!(
            "name: web, namespace: {NAMESPACE}}}\nspec: {{address: {WEB}, serviceAccount: web"
        ),
        &format!("name: web, namespace: {NAMESPACE}}}\nspec: {{address: {WEB}, serviceAccount: db"),
    );
    assert_ne!(moved, mesh_yaml(), "the rewrite found web's entry");
    meshd_integration::machines::write_atomic(&m.ws.path().join("a/mesh/mesh.yaml"), &moved);
    eventually("A reloaded", || (generation(&m)? > before).then_some(()));

    assert!(!echoes(
        netns::connect_in(&m.b, addr(WEB, APP)),
        "httpbin to web, now db's"
    ));
    let denials = eventually("A's record of the refusal", || {
        let (_, body) = admin_a(&m, "/status/denials")?;
        body.contains("served as spiffe://cluster.local/ns/ambient-demo/sa/db")
            .then_some(body)
    });
    assert!(
        denials.contains("this connection presented spiffe://cluster.local/ns/ambient-demo/sa/web"),
        "{denials}"
    );
}

/// Holds: with the dev CA, `devCa: {}` entries are issued per service account by meshd's own
/// CA; an address whose workload has no entry (db) answers with meshd's own certificate, as
/// does an address no workload has. Read with `openssl s_client`, one machine, two
/// addresses.
#[test]
fn the_dev_ca_issues_each_workload_s_identity_and_others_get_meshd_s() {
    let ws = Workspace::new();
    let ns = Netns::new("pw-dev");
    for ip in [WEB, DB, HTTPBIN] {
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "lo"])
            .unwrap_or_else(|e| panic!("cannot add {ip}: {e}"));
    }
    let dir = ws.path().join("a");
    ws.write("a/mesh/mesh.yaml", &mesh_yaml());
    let config = ws.write(
        "a/meshd.yaml",
        &format!(
            "configDir: {mesh}\nidentity:\n  devCa: {{dir: {ca}, namespace: {NAMESPACE}, serviceAccount: node-a, ttl: 1h}}\nworkloadIdentities:\n  {NAMESPACE}/web: {{devCa: {{}}}}\nlocal: {{workloads: [{NAMESPACE}/web, {NAMESPACE}/db]}}\nlisten:\n  hbone: 0.0.0.0:15008\n  admin: 127.0.0.1:15000\n  metrics: 127.0.0.1:15020\n  readiness: 127.0.0.1:15021\n",
            mesh = dir.join("mesh").display(),
            ca = ws.ca().display(),
        ),
    );
    let _meshd = Meshd::spawn(netns::run_in(&ns, &config));
    let client = ws.path().join("client");
    issue(&ws, "httpbin", &client);
    assert_eq!(san_uri_at(&ns, addr(WEB, 15008), &client), id("web"));
    assert_eq!(san_uri_at(&ns, addr(DB, 15008), &client), id("node-a"));
    assert_eq!(san_uri_at(&ns, addr(HTTPBIN, 15008), &client), id("node-a"));
}

/// The same over HBONE on HTTP/3 (every workload annotated `meshd.io/tunnel: quic`): the
/// QUIC handshake presents the certificate of the workload whose address it arrived on, and
/// the client's is the source workload's, as over HTTP/2.
#[cfg(feature = "quic")]
#[test]
fn each_local_workload_has_its_own_identity_over_http3() {
    let m = start_over(Tunnel::Http3);
    let httpbin = addr(HTTPBIN, APP);
    // Outbound: as web allowed, as db denied (captured from each address, and by listener).
    assert!(echoes(
        connect_from(&m.a, WEB, httpbin),
        "captured from web"
    ));
    assert!(!echoes(connect_from(&m.a, DB, httpbin), "captured from db"));
    let listener = |port: u16| netns::connect_in(&m.a, addr(Ipv4Addr::LOCALHOST, port));
    assert!(echoes(listener(9001), "listener as web"));
    assert!(!echoes(listener(9002), "listener as db"));
    // Inbound: B reaches web under web's identity; A's policy keeps httpbin from db.
    assert!(echoes(
        netns::connect_in(&m.b, addr(WEB, APP)),
        "httpbin to web"
    ));
    assert!(!echoes(
        netns::connect_in(&m.b, addr(DB, APP)),
        "httpbin to db"
    ));
    // All of it over HTTP/3: B's records of web's tunnels say h3 and name web's identity.
    let b_log = m.meshd[1].wait_for_log("transport=\"h3\"");
    assert!(
        b_log.lines().any(|l| l.contains("transport=\"h3\"")
            && l.contains(&format!("src.identity=\"{}\"", id("web")))
            && l.contains("connection complete")),
        "{b_log}"
    );
    assert!(
        b_log.lines().any(|l| l.contains("transport=\"h3\"")
            && l.contains(&format!("src.identity=\"{}\"", id("db")))
            && l.contains("connection denied")),
        "{b_log}"
    );
}
