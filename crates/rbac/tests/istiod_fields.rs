//! istiod's Authorizations in the engine, field by field: every match field and every `not_`
//! field restricts in an ALLOW and in a DENY, and the candidate index agrees with the
//! unindexed oracle over them.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use meshd_manifests::{LoadOptions, load_str};
use meshd_rbac::{Connection, Engine, Reason};
use meshd_workloadapi::model::{
    Action, Authorization, Match, Scope, ServiceAccount, StringPattern,
};
use support::conn;
use support::istiod::*;

/// Each field: (match, a connection it holds for, one it does not).
fn field_cases() -> Vec<(&'static str, Match, Connection, Connection)> {
    let sa = |n: &str, a: &str| ServiceAccount {
        namespace: n.into(),
        name: a.into(),
    };
    let to = |port: u16| format!("app/app=web@10.0.0.2:{port}");
    vec![
        (
            "namespaces",
            ns("frontend"),
            conn(WEB, "10.0.0.9", DST),
            conn(OTHER, "10.0.0.9", DST),
        ),
        (
            "not_namespaces",
            Match {
                not_namespaces: vec![StringPattern::Prefix("oth".into())],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(OTHER, "10.0.0.9", DST),
        ),
        (
            "principals",
            Match {
                principals: vec![StringPattern::Suffix("/sa/web".into())],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(OTHER, "10.0.0.9", DST),
        ),
        (
            "not_principals (presence: plaintext only)",
            Match {
                not_principals: vec![StringPattern::Presence],
                ..Match::default()
            },
            conn("", "10.0.0.9", DST),
            conn(WEB, "10.0.0.9", DST),
        ),
        (
            "service_accounts",
            Match {
                service_accounts: vec![sa("frontend", "web")],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn("cluster.local/ns/frontend/sa/other", "10.0.0.9", DST),
        ),
        (
            "not_service_accounts",
            Match {
                not_service_accounts: vec![sa("other", "x")],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(OTHER, "10.0.0.9", DST),
        ),
        (
            "source_ips",
            Match {
                source_ips: vec!["10.0.0.0/24".parse().unwrap()],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.1.9", DST),
        ),
        (
            "not_source_ips",
            Match {
                not_source_ips: vec!["10.0.1.0/24".parse().unwrap()],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.1.9", DST),
        ),
        (
            "destination_ips",
            Match {
                destination_ips: vec!["10.0.0.2/32".parse().unwrap()],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.0.9", "app/app=web@10.0.0.3:8080"),
        ),
        (
            "not_destination_ips",
            Match {
                not_destination_ips: vec!["10.0.0.3/32".parse().unwrap()],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.0.9", "app/app=web@10.0.0.3:8080"),
        ),
        (
            "destination_ports",
            port(8080),
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.0.9", &to(9090)),
        ),
        (
            "not_destination_ports",
            Match {
                not_destination_ports: vec![9090],
                ..Match::default()
            },
            conn(WEB, "10.0.0.9", DST),
            conn(WEB, "10.0.0.9", &to(9090)),
        ),
    ]
}

#[test]
fn every_field_and_not_field_restricts_in_allow_and_deny() {
    for (name, m, holds, fails) in field_cases() {
        let allow = policy(
            "a",
            Scope::Namespace,
            Action::Allow,
            vec![group(vec![vec![m.clone()]])],
        );
        let e = engine("", &[allow]);
        assert_eq!(
            reason(&e, &holds),
            Reason::Allowed(istiod_key("a")),
            "{name}: allow"
        );
        assert_eq!(reason(&e, &fails), Reason::NotAllowed, "{name}: allow");
        let deny = policy(
            "d",
            Scope::Namespace,
            Action::Deny,
            vec![group(vec![vec![m]])],
        );
        let e = engine("", &[deny]);
        assert_eq!(
            reason(&e, &holds),
            Reason::Denied(istiod_key("d")),
            "{name}: deny"
        );
        assert_eq!(reason(&e, &fails), Reason::NoAllowPolicies, "{name}: deny");
    }
}

#[test]
fn the_index_agrees_with_the_unindexed_oracle() {
    let mut policies: Vec<Authorization> = Vec::new();
    for (i, (name, m, _, _)) in field_cases().into_iter().enumerate() {
        let action = if i % 2 == 0 {
            Action::Allow
        } else {
            Action::Deny
        };
        let scope = [Scope::Global, Scope::Namespace, Scope::WorkloadSelector][i % 3];
        let key = format!(
            "p{i}-{}",
            name.split(' ').next().unwrap_or("x").replace('_', "-")
        );
        policies.push(policy(
            &key,
            scope,
            action,
            vec![group(vec![vec![m, port(8080 + (i % 2) as u16)]])],
        ));
    }
    let load = |indexed: bool| {
        let snapshot = load_str(
            "e.yaml",
            "",
            &LoadOptions {
                root_namespace: "istio-system".into(),
            },
        )
        .unwrap();
        if indexed {
            Engine::compile_all(
                snapshot.policies(),
                snapshot.peer_auths(),
                &policies,
                "istio-system",
            )
        } else {
            Engine::compile_all_unindexed(
                snapshot.policies(),
                snapshot.peer_auths(),
                &policies,
                "istio-system",
            )
        }
    };
    let (indexed, oracle) = (load(true), load(false));
    let all_bound: Arc<[meshd_rbac::Sym]> = policies
        .iter()
        .map(|p| meshd_rbac::Sym::from(p.key()))
        .collect();
    let mut checked = 0;
    for from in [WEB, OTHER, "", "cluster.local/ns/frontend/sa/other"] {
        for src in ["10.0.0.9", "10.0.1.9"] {
            for to in [
                "app/app=web@10.0.0.2:8080",
                "app/x=y@10.0.0.3:8081",
                "other@10.0.0.2:9090",
            ] {
                for with_bound in [false, true] {
                    let mut c = conn(from, src, to);
                    if with_bound {
                        c.destination.bound_policies = all_bound.clone();
                    }
                    assert_eq!(
                        indexed.decide(&c),
                        oracle.decide(&c),
                        "{from} {src} {to} {with_bound}"
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 48);
}
