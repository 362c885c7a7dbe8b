//! meshd processes whose identity comes from a real SPIRE agent, while SPIRE changes under
//! them: the agent down at start (meshd waits, not ready, the reason on readiness, then ready
//! when it comes up), the agent killed mid-run (meshd stays ready with its SVID and reconnects
//! when the agent is back), for both SPIRE sources; and SVIDs rotating every few seconds on
//! both ends while hashed traffic flows, with no failed connection.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use meshd_integration::mesh::{Identity, Mesh};
use meshd_integration::resources::{Policy, Rule, principal};
use meshd_integration::spire::{EntryOptions, Spire, SpireOptions};
use meshd_integration::spire_watch::{my_uid, presented, spire_sync_wait, start_ready};
use meshd_integration::traffic::echo_transfer;
use meshd_integration::{Meshd, Workspace, eventually, http};

/// meshd's own SPIFFE ID at the agent, listed in `authorized_delegates`.
const MESHD: &str = "spiffe://cluster.local/ns/mesh/sa/meshd";
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const DB: &str = "spiffe://cluster.local/ns/shop/sa/db";
/// db's selector for the delegated source: no process runs as this uid, the selector names it.
const DB_UID: &str = "unix:uid:1002";

/// A server and agent in the mesh's trust domain on host .200, the agent's admin socket
/// serving meshd as a delegate, and meshd's own entry (this process's uid).
fn spire_for(mesh: &Mesh) -> Spire {
    let spire = Spire::start_with(
        mesh.ip(200),
        SpireOptions {
            trust_domain: "cluster.local".into(),
            authorized_delegates: Some(vec![MESHD.into()]),
            ..SpireOptions::default()
        },
    );
    spire.create_entry(MESHD, &[&uid_selector()]);
    spire
}

fn uid_selector() -> String {
    format!("unix:uid:{}", my_uid())
}

fn workload_api(spire: &Spire, id: &str) -> Identity {
    Identity::Spire {
        socket: spire.workload_socket(),
        spiffe_id: id.into(),
    }
}

fn delegated(spire: &Spire, selector: &str) -> Identity {
    Identity::SpireDelegated {
        admin_socket: spire.admin_socket(),
        selectors: vec![selector.into()],
    }
}

/// Readiness of the meshd on `ip`: (status, body).
fn readiness(ip: std::net::IpAddr) -> Option<(u16, String)> {
    http(SocketAddr::new(ip, 15021), "GET", "/healthz/ready")
}

/// Node b (db) with `identity` from an agent that is down when meshd starts, then up, then
/// killed and restarted.
fn agent_down_at_start_then_killed_mid_run(
    identity: impl Fn(&Spire) -> Identity,
    reason: &str,
    register: impl Fn(&Spire),
) {
    let mut mesh = Mesh::web_db();
    let b = mesh.ip(Mesh::DB);
    let mut spire = spire_for(&mesh);
    register(&spire);
    // The entries have reached the agent; then the agent goes away before meshd starts.
    spire.fetch_x509(&Workspace::new().path().join("probe"));
    spire.kill_agent();
    mesh.node_mut("b").identity = identity(&spire);
    mesh.write();
    let mut command = Command::new(meshd_integration::meshd_bin());
    command.args(["run", "--config"]).arg(mesh.config("b"));
    let mut meshd = Meshd::spawn_starting(command);

    // Down at start: running, not ready, the agent's socket and the failure as the reason.
    let body = eventually("readiness names the unreachable agent", || {
        let (status, body) = readiness(b)?;
        (status == 500 && body.contains(reason)).then_some(body)
    });
    assert!(body.contains("waiting: identity: "), "{body}");
    assert_eq!(meshd.wait_exit(Duration::ZERO), None, "meshd exited");

    // Up: meshd takes its SVID by itself and becomes ready.
    spire.restart_agent();
    assert!(
        meshd.wait_ready(spire_sync_wait()),
        "not ready once the agent is up:\n{}\nagent log:\n{}",
        meshd.stderr(),
        spire.agent_log()
    );
    let admin = SocketAddr::new(b, 15000);
    let (id, serial) = presented(admin).expect("meshd status certs");
    assert_eq!(id, DB);

    // Killed mid-run: meshd notices, stays ready and keeps presenting the SVID it has.
    spire.kill_agent();
    meshd.wait_for_log("SPIRE agent stream broke");
    assert_eq!(readiness(b).map(|(s, _)| s), Some(200));
    assert_eq!(presented(admin), Some((DB.to_string(), serial)));

    // Restarted: the stream resumes (reconnected with backoff, within its 30 s ceiling).
    spire.restart_agent();
    let deadline = Instant::now() + Duration::from_secs(35);
    while !meshd.stderr().contains("reconnected to the SPIRE agent") {
        assert!(
            Instant::now() < deadline,
            "meshd did not reconnect:\n{}",
            meshd.stderr()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(readiness(b).map(|(s, _)| s), Some(200));
}

#[test]
fn workload_api_agent_down_at_start_and_killed_mid_run() {
    agent_down_at_start_then_killed_mid_run(
        |spire| workload_api(spire, DB),
        "SPIRE agent at unix://",
        |spire| {
            spire.create_entry(DB, &[&uid_selector()]);
        },
    );
}

#[test]
fn delegated_agent_down_at_start_and_killed_mid_run() {
    agent_down_at_start_then_killed_mid_run(
        |spire| delegated(spire, DB_UID),
        "admin.sock: cannot connect",
        |spire| {
            spire.create_entry(DB, &[DB_UID]);
        },
    );
}

#[test]
fn a_meshd_the_agent_does_not_accept_as_a_delegate_is_not_ready_and_says_why() {
    let mut mesh = Mesh::web_db();
    let b = mesh.ip(Mesh::DB);
    // The agent's delegates name someone else; meshd's process has only MESHD's entry.
    let spire = Spire::start_with(
        mesh.ip(200),
        SpireOptions {
            trust_domain: "cluster.local".into(),
            authorized_delegates: Some(vec!["spiffe://cluster.local/ns/mesh/sa/other".into()]),
            ..SpireOptions::default()
        },
    );
    spire.create_entry(MESHD, &[&uid_selector()]);
    spire.create_entry(DB, &[DB_UID]);
    spire.fetch_x509(&Workspace::new().path().join("probe"));
    mesh.node_mut("b").identity = delegated(&spire, DB_UID);
    mesh.write();
    let mut command = Command::new(meshd_integration::meshd_bin());
    command.args(["run", "--config"]).arg(mesh.config("b"));
    let mut meshd = Meshd::spawn_starting(command);
    let body = eventually("readiness names the agent's refusal", || {
        let (status, body) = readiness(b)?;
        (status == 500 && body.contains("PermissionDenied")).then_some(body)
    });
    assert!(
        body.contains("authorized_delegates") && body.contains("admin.sock"),
        "{body}"
    );
    assert_eq!(meshd.wait_exit(Duration::ZERO), None, "meshd exited");
    assert!(
        spire
            .agent_log()
            .contains("caller not configured as an authorized delegate"),
        "{}",
        spire.agent_log()
    );
}

/// How many SVIDs each meshd must go through while traffic flows.
const ROTATIONS: usize = 2;

#[test]
fn hashed_traffic_never_fails_while_both_ends_rotate_their_spire_svids() {
    let (mut mesh, pg, _) = Mesh::web_db_pg_admin();
    let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
    mesh.policy(
        Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web")).port(pg)),
    );
    let spire = spire_for(&mesh);
    // Ten-second SVIDs: the agent renews each at half life, every five seconds.
    let ttl = Duration::from_secs(10);
    let short = EntryOptions {
        x509_svid_ttl: Some(ttl),
        ..EntryOptions::default()
    };
    // a: the Workload API (this uid has two entries; spiffeId picks web's). b: delegated.
    spire.create_entry_with(WEB, &[&uid_selector()], &short);
    spire.create_entry_with(DB, &[DB_UID], &short);
    spire.fetch_x509(&Workspace::new().path().join("probe"));
    mesh.node_mut("a").identity = workload_api(&spire, WEB);
    mesh.node_mut("a").listener(16001, SocketAddr::new(b, pg));
    mesh.node_mut("b").identity = delegated(&spire, DB_UID);
    mesh.write();
    let nodes = start_ready(&mesh, &["b", "a"]);

    let (stop, stopped) = mpsc::channel::<()>();
    let traffic = thread::spawn(move || {
        let mut n = 0u64;
        while matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
            let stream = TcpStream::connect((a, 16001)).map_err(|e| format!("#{n}: {e}"))?;
            echo_transfer(stream, 64 << 10, n).map_err(|e| format!("#{n}: {e}"))?;
            n += 1;
        }
        Ok::<u64, String>(n)
    });

    // Each end goes through ROTATIONS new SVIDs while the connections keep coming.
    let deadline = Instant::now() + ttl * (ROTATIONS as u32 + 2);
    let mut seen: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    while seen.iter().any(|serials| serials.len() <= ROTATIONS) {
        for (serials, (ip, id)) in seen.iter_mut().zip([(a, WEB), (b, DB)]) {
            let (shown, serial) = presented(SocketAddr::new(ip, 15000)).expect("status certs");
            assert_eq!(shown, id);
            if serials.last() != Some(&serial) {
                serials.push(serial);
            }
        }
        assert!(
            Instant::now() < deadline && !traffic.is_finished(),
            "serials seen {seen:?}; traffic ended: {}; agent log:\n{}",
            traffic.is_finished(),
            spire.agent_log()
        );
        thread::sleep(Duration::from_millis(300));
    }
    let _ = stop.send(());
    let carried = traffic.join().expect("the traffic thread");
    let carried = carried.unwrap_or_else(|e| {
        panic!(
            "a connection failed during rotation: {e}\nserials {seen:?}\na:\n{}\nb:\n{}",
            nodes[1].stderr(),
            nodes[0].stderr()
        )
    });
    assert!(carried > 10, "only {carried} connections carried");
}

#[test]
fn a_delegated_source_that_names_no_workload_or_no_unix_socket_exits_78_and_says_where() {
    let mesh = Mesh::web_db();
    mesh.write();
    let config = mesh.config("b");
    let text = std::fs::read_to_string(&config).expect("read the node's meshd.yaml");
    // The node's identity is the one line under `identity:`.
    let (head, rest) = text.split_once("identity:\n").expect("an identity section");
    let (_, tail) = rest.split_once('\n').expect("a line after the identity");
    // Runs meshd with that line replaced; it must exit 78 (only a person can fix it).
    let stderr_with = |identity: &str| {
        std::fs::write(&config, format!("{head}identity:\n  {identity}\n{tail}")).expect("write");
        let out = Command::new(meshd_integration::meshd_bin())
            .args(["run", "--config"])
            .arg(&config)
            .output()
            .expect("run meshd");
        assert_eq!(out.status.code(), Some(78), "{identity}: {out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let empty = stderr_with(
        r#"spireDelegated: {adminSocket: "unix:///run/spire/admin.sock", selectors: []}"#,
    );
    assert!(
        empty.contains("selectors") && empty.contains("is empty: name the workload"),
        "{empty}"
    );
    assert!(empty.contains("b.yaml:"), "the file and position: {empty}");
    let tcp = stderr_with(
        r#"spireDelegated: {adminSocket: "tcp://127.0.0.1:8081", selectors: ["unix:uid:1001"]}"#,
    );
    assert!(
        tcp.contains("spireDelegated.adminSocket") && tcp.contains("not unix:///absolute/path"),
        "{tcp}"
    );
}
