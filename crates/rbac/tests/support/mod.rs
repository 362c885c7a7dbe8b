//! Shared helpers for the rbac test suites: load YAML, build connections, assert decisions.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::collections::BTreeMap;

pub mod docs;
pub mod istiod;

use meshd_manifests::{LoadOptions, load_str};
use meshd_rbac::{Connection, Destination, Engine, Peer};

/// Compiles policy YAML, failing the test with every problem if it does not load.
pub fn engine(yaml: &str, root: &str) -> Engine {
    let options = LoadOptions {
        root_namespace: root.to_string(),
    };
    let snapshot = match load_str("case.yaml", yaml, &options) {
        Ok(s) => s,
        Err(e) => panic!("case YAML does not load:\n{e}"),
    };
    Engine::compile(snapshot.policies(), snapshot.peer_auths(), root)
}

/// Compiles policy YAML without the candidate index (every policy is evaluated).
pub fn unindexed_engine(yaml: &str, root: &str) -> Engine {
    let options = LoadOptions {
        root_namespace: root.to_string(),
    };
    let snapshot = load_str("case.yaml", yaml, &options).expect("case YAML loads");
    Engine::compile_unindexed(snapshot.policies(), snapshot.peer_auths(), root)
}

/// A connection: `from` is a principal or "" for plaintext; `to` is `ns/key=value,...@ip:port`.
pub fn conn(from: &str, source_ip: &str, to: &str) -> Connection {
    let (target, addr) = to.split_once('@').expect("to has @");
    let (namespace, labels) = target.split_once('/').unwrap_or((target, ""));
    let labels: BTreeMap<String, String> = labels
        .split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once('=').expect("label k=v");
            (k.to_string(), v.to_string())
        })
        .collect();
    let addr: std::net::SocketAddr = addr.parse().expect("ip:port");
    Connection {
        peer: (!from.is_empty()).then(|| Peer::from_principal(from).expect("principal")),
        source_ip: source_ip.parse().expect("source ip"),
        destination: Destination {
            namespace: namespace.to_string(),
            labels,
            ip: addr.ip(),
            port: addr.port(),
            bound_policies: Default::default(),
        },
    }
}

/// The expected outcome: `"allow"`, `"deny"`, optionally `:ns/name` of the deciding policy.
pub fn outcome(engine: &Engine, conn: &Connection) -> String {
    let decision = engine.decide(conn);
    let verdict = if decision.allowed() { "allow" } else { "deny" };
    match decision.policy() {
        Some(key) => format!("{verdict}:{key}"),
        None => verdict.to_string(),
    }
}
