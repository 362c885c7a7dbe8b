//! VMs joined to istiod across a network link: two meshd machines in network namespaces on a
//! bridge join the istiod harness (Istio's discovery server and CA) running in a third
//! namespace on the same bridge, each with the directory `istioctl x workload entry configure`
//! writes (`meshd run --istio-bundle DIR`). Applications' plain `connect()`s are captured by
//! the rules `meshd redirect install` writes, so traffic takes the path it takes on real VMs:
//! captured outbound on web's machine, HBONE to db's meshd, or plaintext captured on arrival
//! at db's. Policies (AuthorizationPolicy, PeerAuthentication) are applied to the harness's
//! fake cluster and reach meshd only as istiod converts and pushes them.
//!
//! Addresses: web 10.215.0.1, db 10.215.0.2, istiod 10.215.0.9 (/16 on the bridge); every one
//! is in a namespace the test made. Each test fails, never skips, when it cannot build them.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use meshd_integration::fleet::{PUSH_BOUND, in_ambient};
use meshd_integration::istiod::Istiod;
use meshd_integration::mesh::{Mesh, Node, Port};
use meshd_integration::netns::{
    connect_from_in, connect_in, connect_marked_in, install_capture, listen_in, run_in,
    served_san_uri,
};
use meshd_integration::resources::{NAMESPACE, Policy, Rule, Workload, principal};
use meshd_integration::vm_bundle::VmBundle;
use meshd_integration::{Meshd, echo_on, echo_roundtrip, http};
use meshd_redirect::netns::{Netns, VethEnd, veth_pair};

const WEB: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 1);
const DB: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 2);
const ISTIOD: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 9);
/// db's application port (an echo server on db's machine).
const APP: u16 = 5432;

/// The harness and the two machines on one bridge, with their files. Nothing runs on the
/// machines yet ([`Link::start`] starts their meshd).
struct Link {
    // Field order is drop order: istiod, then the namespaces (the bridge last), then the files.
    istiod: Istiod,
    web: Netns,
    db: Netns,
    _istiod_ns: Netns,
    _bridge: Netns,
    mesh: Mesh,
}

impl Link {
    fn new(label: &str) -> Link {
        let bridge = Netns::new(&format!("inx-{label}-br"));
        bridge
            .ip(&["link", "add", "br0", "type", "bridge"])
            .and_then(|_| bridge.ip(&["link", "set", "br0", "up"]))
            .unwrap_or_else(|e| panic!("cannot create the test bridge: {e}"));
        let plug = |name: &str, ip: Ipv4Addr| {
            let ns = Netns::new(&format!("inx-{label}-{name}"));
            let port = format!("p{}", ip.octets()[3]);
            veth_pair(
                VethEnd {
                    ns: &bridge,
                    name: &port,
                    addrs: &[],
                },
                VethEnd {
                    ns: &ns,
                    name: "eth0",
                    addrs: &[IpNet::new_assert(IpAddr::V4(ip), 16)],
                },
            )
            .and_then(|()| bridge.ip(&["link", "set", &port, "master", "br0"]))
            .unwrap_or_else(|e| panic!("cannot wire {name} to the bridge: {e}"));
            ns
        };
        let (web, db, istiod_ns) = (plug("web", WEB), plug("db", DB), plug("istiod", ISTIOD));
        let istiod = Istiod::start_in(&istiod_ns, IpAddr::V4(ISTIOD), Default::default());
        // The cluster's base state: the namespace and both VMs as WorkloadEntries reached over
        // HBONE (the tunnel label), as an operator registers VMs for ambient.
        let mut cluster = vec![format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
        )];
        for (name, ip) in [("web", WEB), ("db", DB)] {
            let entry = Workload::new(name, IpAddr::V4(ip)).label("app", name);
            cluster.push(in_ambient(entry).yaml());
        }
        istiod.apply(&cluster.join("---\n"));
        let mut mesh = Mesh::in_namespaces();
        for (name, ip) in [("web", WEB), ("db", DB)] {
            let cert_dir = mesh.ws.path().join(format!("istio-certs-{name}"));
            let node = mesh.node(Node::new(name, IpAddr::V4(ip), name));
            // The workloads come from istiod; the machine serves the one at its address.
            node.workloads.clear();
            node.remote_admin = false;
            node.listen_on(Port::Outbound, "0.0.0.0:15001")
                .listen_on(Port::InboundPlaintext, "0.0.0.0:15006");
            for port in [Port::Admin, Port::Metrics, Port::Readiness] {
                node.listen_on(port, format!("127.0.0.1:{}", port.number()));
            }
            node.setting("local", &format!("{{addresses: ['{ip}']}}"));
            node.setting(
                "controlPlane",
                &format!("{{certDir: '{}', instanceIp: '{ip}'}}", cert_dir.display()),
            );
            // Both directions captured; istiod's address is not (as an operator excludes the
            // control plane: meshd's own xDS and CA connections must not loop into it).
            node.setting(
                "redirect",
                &format!("{{inboundPort: 15006, excludeOutboundCidrs: ['{ISTIOD}/32']}}"),
            );
        }
        mesh.write();
        let link = Link {
            istiod,
            web,
            db,
            _istiod_ns: istiod_ns,
            _bridge: bridge,
            mesh,
        };
        for (name, ip) in [("web", WEB), ("db", DB)] {
            VmBundle::for_istiod(&link.istiod, NAMESPACE, name, name, IpAddr::V4(ip))
                .write(&link.bundle(name));
        }
        link
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.mesh.ws.path().join(format!("bundle-{name}"))
    }

    fn ns(&self, name: &str) -> &Netns {
        if name == "web" { &self.web } else { &self.db }
    }

    /// Installs machine `name`'s capture rules, then starts its meshd with its bundle and
    /// waits until it is ready (certificate from the Istio CA, both xDS types acknowledged).
    ///
    /// In that order, as the packaged service does (`ExecStartPre=meshd redirect install`):
    /// rules installed under an established xDS stream make conntrack pick the stream up
    /// mid-flow, and when istiod's next packet comes first it is taken for a new inbound
    /// connection and redirected to 15006, which breaks the stream until meshd's h2 keepalive
    /// notices (tens of seconds).
    fn start(&self, name: &str) -> Meshd {
        let config = self.mesh.config(name);
        let shown = install_capture(self.ns(name), &config);
        assert!(shown.contains("redirect to :15006"), "{name}: {shown}");
        let mut command = run_in(self.ns(name), &config);
        command.arg("--istio-bundle").arg(self.bundle(name));
        Meshd::spawn(command)
    }

    /// Starts both machines and db's application (an echo server on [`APP`]).
    fn start_both(&self) -> (Meshd, Meshd) {
        echo_on(listen_in(&self.db, SocketAddr::from((DB, APP))));
        let db = self.start("db");
        let web = self.start("web");
        (web, db)
    }

    /// Does web's application get an echo from db's? Its plain `connect()` is captured by
    /// web's meshd and tunnelled over HBONE (mTLS) to db's.
    fn meshed(&self) -> bool {
        roundtrip(connect_in(&self.web, SocketAddr::from((DB, APP))))
    }

    /// The same from a socket on web's machine that bypasses web's meshd (it carries meshd's
    /// mark, so capture skips it): plaintext captured on arrival by db's meshd.
    fn plaintext(&self) -> bool {
        roundtrip(connect_marked_in(&self.web, SocketAddr::from((DB, APP))))
    }
}

/// One echo round trip; false when the connection was refused or reset. meshd resets a
/// refused connection, and the reset may arrive before connect() returns.
fn roundtrip(stream: io::Result<TcpStream>) -> bool {
    let Ok(mut stream) = stream else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    echo_roundtrip(&mut stream, b"ping").as_deref() == Some(&b"ping"[..])
}

/// Polls `check` until it gives `want`, up to [`PUSH_BOUND`]; the time it took.
fn until(what: &str, want: bool, check: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PUSH_BOUND,
            "{what}: still {} after {PUSH_BOUND:?}",
            if want { "refused" } else { "allowed" }
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn machines_in_namespaces_join_istiod_and_enforce_its_policy() {
    let link = Link::new("join");
    let (web, db) = link.start_both();

    // Each machine holds a certificate from the harness's Istio CA for its service account,
    // got over the link with the bundle's token.
    for (name, meshd) in [("web", &web), ("db", &db)] {
        let log = meshd.wait_for_log("certificate from the Istio CA");
        let id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{name}");
        assert!(log.contains(&id), "{name}: not issued as {id}:\n{log}");
    }

    // No policy in istiod: web's application reaches db's. The access records show the path:
    // web's meshd knew db only from istiod's WorkloadEntry, and db's meshd saw web's
    // Istio-CA identity, so the connection went through both meshds over HBONE.
    assert!(link.meshed(), "no policy: allowed");
    web.wait_for_log(&format!(
        "dst={DB}:{APP} dst.workload=\"db\" dst.namespace=\"{NAMESPACE}\""
    ));
    db.wait_for_log(&format!(
        "src.identity=\"spiffe://cluster.local/ns/{NAMESPACE}/sa/web\""
    ));

    // An ALLOW for another principal only, applied in the cluster: istiod converts and pushes
    // it, db's meshd refuses web (an ALLOW that matches nothing of web's denies it).
    link.istiod.apply(
        &Policy::allow("db-allow-other")
            .selector("app", "db")
            .rule(Rule::from(principal("other")))
            .yaml(),
    );
    let took = until(
        "web to db under an ALLOW for another principal",
        false,
        || link.meshed(),
    );
    eprintln!("ALLOW enforced {took:?} after the apply returned");
    // db's meshd says why: web's connection (its address, its Istio-CA principal) met an
    // ALLOW that did not match it. The machines have no local policy file, so that ALLOW can
    // only be the one istiod pushed.
    let log = db.wait_for_log("connection denied");
    let denied = log
        .lines()
        .find(|l| l.contains("connection denied"))
        .unwrap_or_default();
    assert!(
        denied.contains("ALLOW policies apply to the destination, but none matched")
            && denied.contains(&format!("source={WEB}:"))
            && denied.contains(&format!("peer=cluster.local/ns/{NAMESPACE}/sa/web ")),
        "db's denial names web's connection and the unmatched ALLOW: {denied}"
    );

    // Deleted in the cluster: istiod removes it and web is allowed again.
    link.istiod
        .delete("AuthorizationPolicy", NAMESPACE, "db-allow-other");
    let took = until("web to db after the delete", true, || link.meshed());
    eprintln!("delete enforced {took:?} after it returned");
}

/// A mesh-wide STRICT PeerAuthentication (in istiod's root namespace).
const MESH_STRICT: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
";

#[test]
fn peer_authentication_strict_from_istiod_refuses_plaintext_and_keeps_hbone() {
    let link = Link::new("strict");
    let (_web, db) = link.start_both();

    // Before: no PeerAuthentication (PERMISSIVE), plaintext captured on arrival at db is
    // allowed, so the refusal below is the STRICT's doing, not the path's.
    assert!(link.plaintext(), "PERMISSIVE: plaintext allowed");
    // It went through db's meshd (inbound capture), as plaintext: the path STRICT acts on.
    let log = db.wait_for_log(&format!("dst={DB}:{APP} "));
    let record = log
        .lines()
        .find(|l| l.contains(&format!("dst={DB}:{APP} ")))
        .unwrap_or_default();
    assert!(
        record.contains("src.identity=\"-\"") && record.contains("mtls=false"),
        "db's meshd captured the plaintext connection: {record}"
    );
    assert!(link.meshed(), "PERMISSIVE: HBONE allowed");

    // STRICT applied in the cluster: istiod sends no PeerAuthentication, it converts it into
    // a DENY of connections without a principal (istio_converted_static_strict) and pushes it.
    link.istiod.apply(MESH_STRICT);
    let took = until("plaintext to db under STRICT", false, || link.plaintext());
    eprintln!("STRICT enforced {took:?} after the apply returned");
    let log = db.wait_for_log("istio_converted_static_strict");
    let denied = log
        .lines()
        .find(|l| l.contains("connection denied") && l.contains("istio_converted_static_strict"))
        .unwrap_or_else(|| panic!("no denial by istiod's converted policy:\n{log}"));
    // The denial names istiod's policy with its source, and the connection it refused: the
    // plaintext one from web's machine, without a peer identity.
    assert!(
        denied.contains("policy=\"istiod:istio-system/istio_converted_static_strict\"")
            && denied.contains(&format!("source={WEB}:"))
            && denied.contains("peer=plaintext "),
        "the plaintext connection from web's machine, refused by istiod's policy: {denied}"
    );

    // The operator's view of db's denials (admin, inside db's machine) names it the same way.
    // The access log and the view are two sinks of the same record: the view may take the
    // denial a moment after the log line, so it is read until it does (or 5 s pass).
    let read_view = || {
        let (code, view) = link
            .db
            .run(|| http("127.0.0.1:15000".parse().ok()?, "GET", "/status/denials"))
            .expect("db's admin endpoint answers");
        assert_eq!(code, 200, "{view}");
        let view: serde_json::Value = serde_json::from_str(&view).unwrap();
        let listed = (view["denials"].as_array().into_iter().flatten()).any(|d| {
            d["policy"] == "istiod:istio-system/istio_converted_static_strict"
                && d["source"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with(&format!("{WEB}:"))
        });
        (listed, view)
    };
    let started = std::time::Instant::now();
    let (mut listed, mut view) = read_view();
    while !listed && started.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(50));
        (listed, view) = read_view();
    }
    assert!(listed, "no denial by istiod's policy in {view}");

    // HBONE from web's meshd carries web's principal: STRICT lets it through.
    assert!(link.meshed(), "STRICT: HBONE (mTLS) stays allowed");

    // Deleted in the cluster: plaintext is allowed again.
    link.istiod
        .delete("PeerAuthentication", "istio-system", "default");
    until("plaintext after the delete", true, || link.plaintext());
}

/// A second workload on web's machine: `batch`, service account batch, on an address of its
/// own; its identity comes from istiod's CA through web's meshd (`workloadIdentities`).
const BATCH: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 11);

/// web's meshd.yaml with `batch` as a second local workload whose certificate comes from the
/// Istio CA with `batch_token` (a file), kept in its own directory; explicit listeners to
/// db's application as web (127.0.0.1:9001) and as batch (9002); certificates of `ttl`.
fn with_batch(link: &mut Link, batch_token: &str, ttl: &str) {
    let ws = link.mesh.ws.path().to_path_buf();
    let token = ws.join("batch-token");
    std::fs::write(&token, batch_token).unwrap();
    let (web_certs, batch_certs) = (ws.join("istio-certs-web"), ws.join("istio-certs-batch"));
    link.web
        .ip(&["addr", "add", &format!("{BATCH}/16"), "dev", "eth0"])
        .unwrap_or_else(|e| panic!("cannot give web's machine batch's address: {e}"));
    let node = link.mesh.node_mut("web");
    // HBONE on every address: tunnels to batch arrive at batch's.
    node.listen_on(Port::Hbone, "0.0.0.0:15008");
    node.settings
        .retain(|(key, _)| key != "local" && key != "controlPlane");
    node.setting("local", &format!("{{addresses: ['{WEB}', '{BATCH}']}}"))
        .setting(
            "controlPlane",
            &format!(
                "{{certDir: '{}', instanceIp: '{WEB}', ttl: {ttl}}}",
                web_certs.display()
            ),
        )
        .setting(
            "workloadIdentities",
            &format!(
                "{{{NAMESPACE}/batch: {{istioCa: {{tokenFile: '{}', certDir: '{}'}}}}}}",
                token.display(),
                batch_certs.display()
            ),
        )
        .setting(
            "listeners",
            &format!(
                "[{{listen: '127.0.0.1:9001', target: '{DB}:{APP}', workload: {NAMESPACE}/web}}, {{listen: '127.0.0.1:9002', target: '{DB}:{APP}', workload: {NAMESPACE}/batch}}]"
            ),
        );
    link.mesh.write_node("web");
    let batch = in_ambient(Workload::new("batch", IpAddr::V4(BATCH)).label("app", "batch"));
    link.istiod.apply(&batch.yaml());
}

/// The URI SAN of the certificate served at `to`, read with `openssl s_client` from db's
/// machine (as db, with the certificate istiod gave db's meshd) and verified against
/// istiod's root.
fn verified_san_at(link: &Link, to: SocketAddr) -> Result<String, String> {
    let certs = link.mesh.ws.path().join("istio-certs-db");
    served_san_uri(
        &link.db,
        to,
        (&certs.join("cert-chain.pem"), &certs.join("key.pem")),
        Some(&certs.join("root-cert.pem")),
    )
}

/// Does an application on web's machine reach db's through `port`, an explicit listener?
fn through_listener(link: &Link, port: u16) -> bool {
    roundtrip(link.web.run(|| {
        let to = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&to, Duration::from_secs(5))
    }))
}

#[test]
fn a_second_workload_on_a_machine_gets_its_own_certificate_from_istiod() {
    let mut link = Link::new("wlca");
    let token = link.istiod.mint_token(NAMESPACE, "batch");
    with_batch(&mut link, &token, "20s");
    echo_on(listen_in(&link.web, SocketAddr::from((BATCH, APP))));
    let (web, _db) = link.start_both();
    let batch_id = format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/batch");

    // web's meshd asked istiod's CA for batch's certificate with batch's token: its own CSR.
    let log = web.wait_for_log(&batch_id);
    assert!(
        log.lines()
            .any(|l| l.contains("certificate from the Istio CA") && l.contains(&batch_id)),
        "no certificate from the Istio CA for batch:\n{log}"
    );

    // db allows batch only: web's application is refused, batch's allowed, both ways an
    // application reaches the mesh (captured from its address, an explicit listener naming
    // it). So the certificate web's meshd presented was the source workload's, and db's meshd
    // (which trusts istiod's root only) verified it.
    link.istiod.apply(
        &Policy::allow("db-only-batch")
            .selector("app", "db")
            .rule(Rule::from(principal("batch")))
            .yaml(),
    );
    until(
        "web (captured) to db under an ALLOW for batch",
        false,
        || link.meshed(),
    );
    let from_batch = || {
        roundtrip(connect_from_in(
            &link.web,
            IpAddr::V4(BATCH),
            SocketAddr::from((DB, APP)),
        ))
    };
    assert!(from_batch(), "batch (captured from its address) is allowed");
    assert!(
        through_listener(&link, 9002),
        "batch's listener is allowed:\n{}",
        web.stderr()
    );
    assert!(!through_listener(&link, 9001), "web's listener is refused");

    // Inbound: db's application reaches batch's, db's meshd expecting batch's identity (from
    // istiod's Workload) at batch's address; and, independently of meshd, openssl sees each
    // address of web's machine serve its own workload's certificate, chaining to istiod's root.
    assert!(
        roundtrip(connect_in(&link.db, SocketAddr::from((BATCH, APP)))),
        "db to batch"
    );
    assert_eq!(
        verified_san_at(&link, SocketAddr::from((BATCH, 15008))),
        Ok(batch_id.clone())
    );
    assert_eq!(
        verified_san_at(&link, SocketAddr::from((WEB, 15008))),
        Ok(format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/web"))
    );

    // Renewal: at half of the 20 s lifetime, over mutual TLS with batch's current certificate
    // (no token), and traffic as batch goes on under the new one.
    let log = web.wait_for_log("Istio CA certificate renewed");
    let renewed = |log: &str| {
        log.lines().any(|l| {
            l.contains("Istio CA certificate renewed")
                && l.contains(&batch_id)
                && l.contains("mtls")
        })
    };
    let started = Instant::now();
    let mut log = log;
    while !renewed(&log) && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(200));
        log = web.stderr();
    }
    assert!(
        renewed(&log),
        "batch's certificate not renewed over mTLS:\n{log}"
    );
    assert!(through_listener(&link, 9002), "batch after its renewal");
    // Counted as batch's rotation (the identity manager loaded the renewed files).
    let rotated = format!(
        "meshd_workload_certificate_rotations_total{{identity=\"{batch_id}\",result=\"success\"}} "
    );
    let started = Instant::now();
    let counted = loop {
        let (_, text) = link
            .web
            .run(|| http("127.0.0.1:15020".parse().ok()?, "GET", "/metrics"))
            .expect("web's metrics endpoint answers");
        let count = (text.lines())
            .find_map(|l| l.strip_prefix(&rotated))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if count.is_some_and(|n| n >= 1) || started.elapsed() > Duration::from_secs(10) {
            break count;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(counted.is_some_and(|n| n >= 1), "{rotated}: {counted:?}");

    // The operator's view lists batch's certificate beside meshd's own.
    let (code, view) = link
        .web
        .run(|| {
            http(
                "127.0.0.1:15000".parse().ok()?,
                "GET",
                "/status/control-plane",
            )
        })
        .expect("web's admin endpoint answers");
    assert_eq!(code, 200, "{view}");
    let view: serde_json::Value = serde_json::from_str(&view).unwrap();
    let batch = &view["workloadCertificates"][&batch_id];
    assert_eq!(batch["source"], "mtls", "{view}");
    assert!(view["certificate"]["notAfter"].is_string(), "{view}");
}

#[test]
fn a_workload_whose_token_is_another_service_account_s_is_never_served() {
    // batch's token file holds web's token: istiod issues web's identity, which meshd refuses
    // to present as batch's. meshd waits, not ready, saying why; batch never gets a
    // certificate of the wrong account.
    let mut link = Link::new("wltok");
    let token = link.istiod.mint_token(NAMESPACE, "web");
    with_batch(&mut link, &token, "1h");
    let config = link.mesh.config("web");
    install_capture(&link.web, &config);
    let mut command = run_in(&link.web, &config);
    command.arg("--istio-bundle").arg(link.bundle("web"));
    let mut web = Meshd::spawn_starting(command);
    let log = web.wait_for_log(&format!(
        "Istio CA, for spiffe://cluster.local/ns/{NAMESPACE}/sa/batch"
    ));
    assert!(
        !web.wait_ready(Duration::from_secs(3)),
        "ready without batch's certificate"
    );
    let log = web.stderr() + &log;
    assert!(
        log.contains(&format!(
            "Istio CA, for spiffe://cluster.local/ns/{NAMESPACE}/sa/batch"
        )) && log.contains(&format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/web")),
        "the wait names batch's identity and the one istiod issued:\n{log}"
    );
    let certs = link.mesh.ws.path().join("istio-certs-batch");
    assert!(
        !certs.join("cert-chain.pem").exists(),
        "nothing of the wrong identity kept"
    );
}
