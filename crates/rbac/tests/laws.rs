//! Laws of the engine, checked on generated policies and connections (proptest).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use proptest::prelude::*;
use support::{conn, engine, unindexed_engine};

const NAMESPACES: [&str; 3] = ["frontend", "backend", "ops"];
const ACCOUNTS: [&str; 3] = ["web", "api", "job"];
const PORTS: [u16; 3] = [80, 8080, 9090];

/// A source field with values drawn from the same small universe as the connections.
fn source_field() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(NAMESPACES.to_vec()).prop_map(|n| format!("namespaces: [{n}]")),
        (
            prop::sample::select(NAMESPACES.to_vec()),
            prop::sample::select(ACCOUNTS.to_vec())
        )
            .prop_map(|(n, a)| format!("principals: ['cluster.local/ns/{n}/sa/{a}']")),
        prop::sample::select(vec!["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24"])
            .prop_map(|b| format!("ipBlocks: ['{b}']")),
        prop::sample::select(vec!["*", "cluster.local/*", "*/sa/web"])
            .prop_map(|p| format!("principals: ['{p}']")),
    ]
}

fn rule() -> impl Strategy<Value = String> {
    (
        prop::option::of(source_field()),
        prop::option::of(prop::sample::select(PORTS.to_vec())),
    )
        .prop_map(|(source, port)| {
            let mut rule = String::from("{");
            if let Some(source) = source {
                rule.push_str(&format!("from: [{{source: {{{source}}}}}], "));
            }
            if let Some(port) = port {
                rule.push_str(&format!("to: [{{operation: {{ports: ['{port}']}}}}]"));
            }
            rule.push('}');
            rule
        })
}

fn policy(name: usize, action: &str, rules: &[String]) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{name}, namespace: app}}\nspec:\n  action: {action}\n  rules: [{}]\n",
        rules.join(", ")
    )
}

fn connection() -> impl Strategy<Value = (String, String, u16)> {
    (
        prop::option::of((
            prop::sample::select(NAMESPACES.to_vec()),
            prop::sample::select(ACCOUNTS.to_vec()),
        )),
        prop::sample::select(vec!["10.1.2.3", "10.2.0.1", "192.0.2.9", "203.0.113.1"]),
        prop::sample::select(PORTS.to_vec()),
    )
        .prop_map(|(peer, ip, port)| {
            let principal = peer.map_or(String::new(), |(n, a)| {
                format!("cluster.local/ns/{n}/sa/{a}")
            });
            (principal, ip.to_string(), port)
        })
}

fn policies() -> impl Strategy<Value = Vec<(bool, Vec<String>)>> {
    prop::collection::vec((any::<bool>(), prop::collection::vec(rule(), 1..3)), 0..6)
}

fn render(policies: &[(bool, Vec<String>)]) -> Vec<String> {
    policies
        .iter()
        .enumerate()
        .map(|(i, (deny, rules))| policy(i, if *deny { "DENY" } else { "ALLOW" }, rules))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Adding a DENY that matches a connection always denies it, whatever else is there.
    #[test]
    fn a_matching_deny_always_wins(set in policies(), (principal, ip, port) in connection()) {
        let mut docs = render(&set);
        docs.push(policy(99, "DENY", &[format!("{{to: [{{operation: {{ports: ['{port}']}}}}]}}")]));
        let engine = engine(&docs.join("---\n"), "istio-system");
        let c = conn(&principal, &ip, &format!("app/app=web@10.0.0.2:{port}"));
        prop_assert!(!engine.decide(&c).allowed());
    }

    /// For every field, a DENY on `X: v` and one on `notX: v` split connections exactly.
    #[test]
    fn not_x_is_the_complement_of_x(field in source_field(), (principal, ip, port) in connection()) {
        let (name, values) = field.split_once(':').expect("field: values");
        let negated = format!("not{}{}", name[..1].to_uppercase(), &name[1..]);
        let c = conn(&principal, &ip, &format!("app/app=web@10.0.0.2:{port}"));
        let positive = engine(&policy(0, "DENY", &[format!("{{from: [{{source: {{{name}:{values}}}}}]}}")]), "istio-system");
        let negative = engine(&policy(0, "DENY", &[format!("{{from: [{{source: {{{negated}:{values}}}}}]}}")]), "istio-system");
        prop_assert_ne!(positive.decide(&c).allowed(), negative.decide(&c).allowed());
    }

    /// The order of documents (and so of files) never changes a decision or the deciding policy.
    #[test]
    fn policy_order_never_changes_a_decision(set in policies(), (principal, ip, port) in connection()) {
        let docs = render(&set);
        let mut reversed = docs.clone();
        reversed.reverse();
        let forward = engine(&docs.join("---\n"), "istio-system");
        let backward = engine(&reversed.join("---\n"), "istio-system");
        let c = conn(&principal, &ip, &format!("app/app=web@10.0.0.2:{port}"));
        prop_assert_eq!(forward.decide(&c), backward.decide(&c));
    }

    /// The candidate index is an optimisation only: decisions equal those of evaluating every
    /// policy.
    #[test]
    fn the_index_never_changes_a_decision(set in policies(), (principal, ip, port) in connection()) {
        let yaml = render(&set).join("---\n");
        let indexed = engine(&yaml, "istio-system");
        let exhaustive = unindexed_engine(&yaml, "istio-system");
        let c = conn(&principal, &ip, &format!("app/app=web@10.0.0.2:{port}"));
        let (a, b) = (indexed.decide(&c), exhaustive.decide(&c));
        prop_assert_eq!(a.allowed(), b.allowed(), "indexed {} vs exhaustive {}", a, b);
    }
}
