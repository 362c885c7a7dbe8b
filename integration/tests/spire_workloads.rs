//! One identity per local workload, from a real SPIRE agent's Delegated Identity API, through
//! running meshd processes: web's machine (node `a`) runs two local workloads, `web` and
//! `batch`, each with its own SVID that the agent hands a's meshd (an authorized delegate; its
//! own SVID from the Workload API) for that workload's selectors. db's machine (node `b`, its
//! SVID from the Workload API) allows `web` only. An explicit listener per workload: web's is
//! allowed, batch's denied, so a's meshd presented each source's own SPIRE-issued SVID; and
//! `meshd status certs` lists both beside meshd's own.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use meshd_integration::mesh::{Identity, Mesh};
use meshd_integration::resources::{NAMESPACE, Policy, Rule, Workload, principal};
use meshd_integration::spire::{Spire, SpireOptions};
use meshd_integration::spire_watch::{my_uid, start_ready};
use meshd_integration::{echo_roundtrip, http};

const MESHD: &str = "spiffe://cluster.local/ns/mesh/sa/meshd";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const BATCH: &str = "spiffe://cluster.local/ns/shop/sa/batch";
/// The local workloads' uids: no process needs to run as them, the selectors name them.
const WEB_UID: &str = "unix:uid:1001";
const BATCH_UID: &str = "unix:uid:1002";
/// web's and batch's explicit listeners to db's echo port.
const AS_WEB: u16 = 16001;
const AS_BATCH: u16 = 16002;

/// One echo round trip through `port` on `ip`; false when the mesh refused it.
fn through(ip: IpAddr, port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((ip, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    echo_roundtrip(&mut stream, b"ping").is_some()
}

#[test]
fn each_local_workload_presents_its_own_delegated_svid() {
    let mut mesh = Mesh::web_db();
    let (web_ip, db_ip, batch_ip) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB), mesh.ip(3));
    mesh.workload(Workload::new("batch", batch_ip));
    let port = mesh.serve_echo("db", "echo");
    mesh.policy(
        Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web"))),
    );
    let spire = Spire::start_with(
        mesh.ip(200),
        SpireOptions {
            trust_domain: "cluster.local".into(),
            authorized_delegates: Some(vec![MESHD.into()]),
            ..SpireOptions::default()
        },
    );
    // Both meshd run as this test's uid: each picks its own SVID by `spiffeId`.
    let caller = format!("unix:uid:{}", my_uid());
    spire.create_entry(MESHD, &[&caller]);
    spire.create_entry(DB, &[&caller]);
    spire.create_entry(WEB, &[WEB_UID]);
    spire.create_entry(BATCH, &[BATCH_UID]);

    let admin_socket = format!("unix://{}", spire.admin_socket().display());
    let delegated = |uid: &str| {
        format!("{{spireDelegated: {{adminSocket: '{admin_socket}', selectors: ['{uid}']}}}}")
    };
    let target = SocketAddr::new(db_ip, port);
    let a = mesh.node_mut("a");
    a.identity = Identity::Spire {
        socket: spire.workload_socket(),
        spiffe_id: MESHD.into(),
    };
    a.workloads.push(format!("{NAMESPACE}/batch"));
    a.setting(
        "workloadIdentities",
        &format!(
            "{{{NAMESPACE}/web: {}, {NAMESPACE}/batch: {}}}",
            delegated(WEB_UID),
            delegated(BATCH_UID)
        ),
    )
    .setting(
        "listeners",
        &format!(
            "[{{listen: '{web_ip}:{AS_WEB}', target: '{target}', workload: {NAMESPACE}/web}}, {{listen: '{web_ip}:{AS_BATCH}', target: '{target}', workload: {NAMESPACE}/batch}}]"
        ),
    );
    mesh.node_mut("b").identity = Identity::Spire {
        socket: spire.workload_socket(),
        spiffe_id: DB.into(),
    };
    mesh.write();
    let nodes = start_ready(&mesh, &["b", "a"]);
    let logs = || {
        format!(
            "db:\n{}\nweb's machine:\n{}",
            nodes[0].stderr(),
            nodes[1].stderr()
        )
    };

    // db allows web only: web's listener passes, batch's is refused, and db says it refused
    // batch's identity, the SVID the agent delegated for batch's selectors.
    assert!(through(web_ip, AS_WEB), "as web\n{}", logs());
    assert!(!through(web_ip, AS_BATCH), "as batch\n{}", logs());
    let db_log = nodes[0].wait_for_log("connection denied");
    assert!(
        db_log.lines().any(|l| l.contains("connection denied")
            && l.contains("peer=cluster.local/ns/shop/sa/batch ")),
        "{}",
        logs()
    );

    // The operator sees each identity meshd holds: its own and both workloads'.
    let (code, body) = http(SocketAddr::new(web_ip, 15000), "GET", "/status/certs")
        .expect("a's admin endpoint answers");
    assert_eq!(code, 200, "{body}");
    let certs: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(certs["identity"], MESHD, "{certs}");
    let mut workloads: Vec<&str> = (certs["workloads"].as_array().into_iter().flatten())
        .filter_map(|w| w["identity"].as_str())
        .collect();
    workloads.sort_unstable();
    assert_eq!(workloads, [BATCH, WEB], "{certs}");
}
