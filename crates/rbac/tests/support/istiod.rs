//! Helpers for the tests of istiod's Authorizations in the engine (`istiod.rs`,
//! `istiod_fields.rs`): policies built from meshd-workloadapi's model, compiled beside files.

use meshd_manifests::{LoadOptions, load_str};
use meshd_rbac::{Connection, Engine, PolicyKey, Reason};
use meshd_workloadapi::model::{Action, Authorization, Group, Match, Rule, Scope, StringPattern};

pub const WEB: &str = "cluster.local/ns/frontend/sa/web";
pub const OTHER: &str = "cluster.local/ns/other/sa/x";
pub const DST: &str = "app/app=web@10.0.0.2:8080";

pub fn policy(name: &str, scope: Scope, action: Action, groups: Vec<Group>) -> Authorization {
    Authorization {
        name: name.to_string(),
        namespace: "app".to_string(),
        scope,
        action,
        dry_run: false,
        groups,
        extensions: false,
    }
}

/// One group of one rule per list of matches.
pub fn group(rules: Vec<Vec<Match>>) -> Group {
    Group {
        rules: rules.into_iter().map(|matches| Rule { matches }).collect(),
    }
}

pub fn ns(n: &str) -> Match {
    Match {
        namespaces: vec![StringPattern::Exact(n.into())],
        ..Match::default()
    }
}

pub fn port(p: u16) -> Match {
    Match {
        destination_ports: vec![p],
        ..Match::default()
    }
}

pub fn engine(files: &str, istiod: &[Authorization]) -> Engine {
    let options = LoadOptions {
        root_namespace: "istio-system".into(),
    };
    let snapshot = load_str("case.yaml", files, &options).unwrap();
    Engine::compile_all(
        snapshot.policies(),
        snapshot.peer_auths(),
        istiod,
        "istio-system",
    )
}

pub fn bound(mut c: Connection, keys: &[&str]) -> Connection {
    c.destination.bound_policies = keys.iter().map(|k| meshd_rbac::Sym::from(*k)).collect();
    c
}

pub fn reason(e: &Engine, c: &Connection) -> Reason {
    e.decide(c).reason
}

pub fn istiod_key(name: &str) -> PolicyKey {
    PolicyKey::istiod("app", name)
}
