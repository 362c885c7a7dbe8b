//! VMs join an istiod-managed mesh: real `meshd run --istio-bundle DIR` processes against the
//! istiod harness (Istio's own discovery server and CA, `integration/istiod/`), each with the
//! directory `istioctl x workload entry configure` writes. Workloads and policies are applied
//! to the harness's fake cluster as Istio YAML; meshd gets its certificate from the Istio CA
//! with the bundle's token and enforces what istiod converts and pushes.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use meshd_integration::fleet::{Fleet, PUSH_BOUND, TO_ADMIN, TO_PG};
use meshd_integration::mesh::Port;
use meshd_integration::resources::{NAMESPACE, Policy, Rule, principal};
use meshd_integration::{http, meshd_bin};

#[test]
fn vms_join_with_a_token_and_enforce_istiods_policies() {
    let fleet = Fleet::web_db();
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
        fleet.through(TO_PG, b"no policy").as_deref(),
        Some(&b"no policy"[..])
    );
    assert!(fleet.through(TO_ADMIN, b"x").is_some());

    // An ALLOW for web on pg only, applied in the cluster: istiod converts and pushes it, db's
    // meshd enforces it.
    fleet.istiod.apply(
        &Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web")).port(fleet.pg))
            .yaml(),
    );
    let took = fleet.until(TO_ADMIN, false, PUSH_BOUND);
    eprintln!("ALLOW enforced {took:?} after the apply returned");
    assert!(fleet.through(TO_PG, b"still").is_some(), "pg stays allowed");
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
    fleet.until(TO_ADMIN, true, PUSH_BOUND);

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

#[test]
fn without_istiod_or_a_persisted_state_meshd_waits_and_says_why() {
    // db's meshd joins once (its certificate is persisted), then starts again with neither
    // istiod nor a persisted state: it has a certificate but no mesh to enforce, so it must
    // not serve (a workload whose policies live in istiod would be open to all) and must say
    // what it waits for; once istiod is back it gets the state and becomes ready.
    let mut fleet = Fleet::web_db();
    let first = fleet.start("b");
    drop(first);
    std::fs::remove_file(fleet.cert_dir("b").join("istiod-state.pb")).ok();
    fleet.istiod.kill();

    let mut db = meshd_integration::Meshd::spawn_starting(fleet.command("b"));
    let ready = fleet.mesh.get("b").addr(Port::Readiness);
    let waiting = meshd_integration::eventually("readiness names the wait for istiod", || {
        let (code, body) = http(ready, "GET", "/healthz/ready")?;
        (code == 500 && body.contains("istiod's first push")).then_some(body)
    });
    assert!(waiting.contains("pending: control-plane"), "{waiting}");
    assert!(
        !db.wait_ready(Duration::from_millis(500)),
        "ready without any mesh state"
    );

    fleet.istiod.restart();
    assert!(
        db.wait_ready(Duration::from_secs(30)),
        "not ready after istiod came back: {}",
        db.stderr()
    );
    let (code, body) = http(ready, "GET", "/healthz/ready").expect("readiness");
    assert_eq!(code, 200, "{body}");
}
