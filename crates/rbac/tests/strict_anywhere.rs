//! `Engine::strict_anywhere`: which PeerAuthentication makes some port of a workload STRICT
//! (what `meshd run` warns about when inbound capture is off).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use meshd_policy::authz::Labels;
use support::engine;

fn labels(app: &str) -> Labels {
    [("app".to_string(), app.to_string())].into_iter().collect()
}

fn pa(name: &str, ns: &str, body: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}---\n"
    )
}

#[test]
fn no_peer_authentication_is_permissive_everywhere() {
    // The default is PERMISSIVE: nothing needs capture.
    let e = engine("", "istio-system");
    assert_eq!(e.strict_anywhere("shop", &labels("db")), None);
}

#[test]
fn mesh_and_namespace_strict_name_their_policy() {
    // Mesh-wide STRICT applies to every workload; a namespace PERMISSIVE overrides it there.
    let yaml = pa("mesh", "istio-system", "  mtls: {mode: STRICT}\n")
        + &pa("open", "legacy", "  mtls: {mode: PERMISSIVE}\n");
    let e = engine(&yaml, "istio-system");
    assert_eq!(
        e.strict_anywhere("shop", &labels("db"))
            .unwrap()
            .to_string(),
        "istio-system/mesh"
    );
    assert_eq!(e.strict_anywhere("legacy", &labels("db")), None);
}

#[test]
fn a_strict_port_level_setting_counts() {
    // PERMISSIVE for the workload but STRICT on one port: that port needs capture.
    let yaml = pa(
        "db",
        "shop",
        "  selector: {matchLabels: {app: db}}\n  mtls: {mode: PERMISSIVE}\n  portLevelMtls:\n    5432: {mode: STRICT}\n",
    );
    let e = engine(&yaml, "istio-system");
    assert_eq!(
        e.strict_anywhere("shop", &labels("db"))
            .unwrap()
            .to_string(),
        "shop/db"
    );
    assert_eq!(
        e.strict_anywhere("shop", &labels("web")),
        None,
        "not selected"
    );
}

#[test]
fn permissive_ports_under_a_strict_workload_still_count() {
    // STRICT for the workload with one PERMISSIVE port: every other port needs capture.
    let yaml = pa(
        "db",
        "shop",
        "  selector: {matchLabels: {app: db}}\n  mtls: {mode: STRICT}\n  portLevelMtls:\n    8080: {mode: PERMISSIVE}\n",
    );
    let e = engine(&yaml, "istio-system");
    assert_eq!(
        e.strict_anywhere("shop", &labels("db"))
            .unwrap()
            .to_string(),
        "shop/db"
    );
}
