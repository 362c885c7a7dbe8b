//! Helpers for the tests that load Istio's documentation YAML.

use std::collections::BTreeMap;

use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_rbac::Engine;

const ROOT: &str = "istio-system";

/// Loads a page's YAML (failing with every problem if it does not load) and compiles it.
pub fn load(yaml: &str) -> (Snapshot, Engine) {
    let snapshot = match load_str("page.yaml", yaml, &LoadOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("documentation YAML does not load:\n{e}"),
    };
    let engine = Engine::compile(snapshot.policies(), snapshot.peer_auths(), ROOT);
    (snapshot, engine)
}

/// The load's warnings, rendered as `meshd validate` prints them.
pub fn warnings(snapshot: &Snapshot) -> Vec<String> {
    snapshot.warnings.iter().map(|w| w.to_string()).collect()
}

/// True when plaintext is refused on the port (the effective mode is STRICT).
pub fn strict(engine: &Engine, ns: &str, pairs: &[(&str, &str)], port: u16) -> bool {
    let labels: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    engine.mtls_mode(ns, &labels, port).strict
}
