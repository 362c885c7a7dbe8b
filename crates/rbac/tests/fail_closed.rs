//! Defence in depth: policies built in code, bypassing validation, with the shapes validation
//! rejects (issue 9, item A; issue 22, item 7). An empty positive list, or one whose every
//! value fails to parse, must fail closed: in an ALLOW rule it matches nothing (read as "unset"
//! it would turn the rule into allow-all), in a DENY or CUSTOM rule it restricts nothing (read
//! as "matches nothing" it would turn the rule into deny-nothing). The L7-only part of a DENY
//! rule matches everything for the same reason (meshd decision M1).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use meshd_policy::authz::{
    AuthorizationPolicySpec, Condition, Operation, PolicyTargetReference, Rule, RuleFrom, RuleTo,
    Source,
};
use meshd_policy::{Action, AuthorizationPolicy, ObjectMeta};
use meshd_rbac::{Engine, Reason};
use support::conn;

const WEB: &str = "cluster.local/ns/frontend/sa/web";
const DST: &str = "app/app=web@10.0.0.2:8080";

fn policy(action: Action, rule: Rule) -> AuthorizationPolicy {
    AuthorizationPolicy {
        api_version: "security.istio.io/v1".to_string(),
        kind: "AuthorizationPolicy".to_string(),
        metadata: ObjectMeta {
            name: Some("p".to_string()),
            namespace: Some("app".to_string()),
            ..ObjectMeta::default()
        },
        spec: AuthorizationPolicySpec {
            rules: Some(vec![rule]),
            action: Some(action),
            ..AuthorizationPolicySpec::default()
        },
        status: None,
    }
}

fn from(source: Source) -> Rule {
    Rule {
        from: Some(vec![RuleFrom {
            source: Some(source),
        }]),
        ..Rule::default()
    }
}

fn to(operation: Operation) -> Rule {
    Rule {
        to: Some(vec![RuleTo {
            operation: Some(operation),
        }]),
        ..Rule::default()
    }
}

fn when(key: &str, values: Option<Vec<String>>, not_values: Option<Vec<String>>) -> Rule {
    Rule {
        when: Some(vec![Condition {
            key: Some(key.to_string()),
            values,
            not_values,
        }]),
        ..Rule::default()
    }
}

fn strings(values: &[&str]) -> Option<Vec<String>> {
    Some(values.iter().map(|v| v.to_string()).collect())
}

/// The reasons for an mTLS peer and a plaintext one, from the indexed engine and from the
/// exhaustive one (which must agree: the index may only skip policies that cannot match).
fn reasons(policy: &AuthorizationPolicy) -> [Reason; 2] {
    let indexed = Engine::compile([policy], [], "istio-system");
    let exhaustive = Engine::compile_unindexed([policy], [], "istio-system");
    [WEB, ""].map(|peer| {
        let c = conn(peer, "10.1.2.3", DST);
        let reason = indexed.decide(&c).reason;
        assert_eq!(reason, exhaustive.decide(&c).reason, "index vs exhaustive");
        reason
    })
}

fn denied_by_p() -> Reason {
    Reason::Denied(meshd_rbac::PolicyKey::new("app", "p"))
}

#[test]
fn allow_with_empty_principals_allows_nothing() {
    // The reported fail-open: `principals: []` matched every connection, plaintext included.
    let p = policy(
        Action::Allow,
        from(Source {
            principals: Some(Vec::new()),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn deny_with_empty_principals_denies_everything() {
    // The reported fail-open: in a DENY, "matches nothing" denied nothing. The emptied list
    // restricts nothing instead, so the DENY denies every source, plaintext included.
    let p = policy(
        Action::Deny,
        from(Source {
            principals: Some(Vec::new()),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn custom_with_empty_principals_denies_everything() {
    // CUSTOM denies what it matches (no external authorizer at L4): the same reading.
    let p = policy(
        Action::Custom,
        from(Source {
            principals: Some(Vec::new()),
            ..Source::default()
        }),
    );
    let custom = Reason::CustomDenied(meshd_rbac::PolicyKey::new("app", "p"));
    assert_eq!(reasons(&p), [custom.clone(), custom]);
}

#[test]
fn deny_with_empty_principals_next_to_a_namespace_denies_that_namespace() {
    // The emptied list is dropped, the real field still holds: the DENY denies on what remains
    // (frontend), as Istio reads an empty list as unset; never less than that.
    let p = policy(
        Action::Deny,
        from(Source {
            principals: Some(Vec::new()),
            namespaces: strings(&["frontend"]),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), Reason::NoAllowPolicies]);
}

#[test]
fn deny_with_only_unparseable_ports_denies_every_port() {
    // Ports that do not parse are skipped; the list left empty does not make the DENY inert.
    let p = policy(
        Action::Deny,
        to(Operation {
            ports: strings(&["http"]),
            ..Operation::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_only_unparseable_ip_blocks_denies_every_address() {
    // Same for addresses.
    let p = policy(
        Action::Deny,
        from(Source {
            ip_blocks: strings(&["10.0.0.0/99", "nope"]),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_only_an_empty_negative_list_denies_everything() {
    // `notPrincipals: []` alone restricts nothing: in a DENY that is every connection.
    let p = policy(
        Action::Deny,
        from(Source {
            not_principals: Some(Vec::new()),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_empty_when_values_denies_everything() {
    // `when: [{key: source.ip, values: []}]` in a DENY.
    let p = policy(Action::Deny, when("source.ip", Some(Vec::new()), None));
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_empty_from_denies_everything() {
    // `from: []`: a clause with no source to match; in a DENY it restricts nothing.
    let p = policy(
        Action::Deny,
        Rule {
            from: Some(Vec::new()),
            ..Rule::default()
        },
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_empty_to_next_to_a_source_denies_that_source() {
    // `to: []` beside a real `from`: the DENY still holds for the source it names.
    let p = policy(
        Action::Deny,
        Rule {
            from: Some(vec![RuleFrom {
                source: Some(Source {
                    namespaces: strings(&["frontend"]),
                    ..Source::default()
                }),
            }]),
            to: Some(Vec::new()),
            ..Rule::default()
        },
    );
    assert_eq!(reasons(&p), [denied_by_p(), Reason::NoAllowPolicies]);
}

#[test]
fn allow_with_empty_from_allows_nothing() {
    // `from: []` in an ALLOW: no source can match, so nothing is allowed.
    let p = policy(
        Action::Allow,
        Rule {
            from: Some(Vec::new()),
            ..Rule::default()
        },
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_only_an_empty_negative_list_allows_nothing() {
    // `notPrincipals: []` alone restricts nothing; a source that restricts nothing is invalid.
    let p = policy(
        Action::Allow,
        from(Source {
            not_principals: Some(Vec::new()),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_only_unparseable_ports_allows_nothing() {
    // Unparseable values are skipped; a list left empty by that must not become "any port".
    let p = policy(
        Action::Allow,
        to(Operation {
            ports: strings(&["http"]),
            ..Operation::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_only_unparseable_not_ports_allows_nothing() {
    // A negative list emptied by parsing leaves an operation with no restriction at all.
    let p = policy(
        Action::Allow,
        to(Operation {
            not_ports: strings(&["http"]),
            ..Operation::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_only_unparseable_ip_blocks_allows_nothing() {
    // Same for addresses.
    let p = policy(
        Action::Allow,
        from(Source {
            ip_blocks: strings(&["10.0.0.0/99", "nope"]),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_empty_operation_allows_nothing() {
    // `to: [{operation: {}}]` restricts nothing.
    let p = policy(Action::Allow, to(Operation::default()));
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_empty_when_values_allows_nothing() {
    // `when: [{key: source.ip, values: []}]` would hold for every connection.
    let p = policy(Action::Allow, when("source.ip", Some(Vec::new()), None));
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_condition_without_values_allows_nothing() {
    // Neither `values` nor `notValues`.
    let p = policy(Action::Allow, when("source.principal", None, None));
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_unparseable_destination_port_condition_allows_nothing() {
    // `destination.port` values that do not parse.
    let p = policy(
        Action::Allow,
        when("destination.port", strings(&["http"]), None),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn allow_with_empty_principals_next_to_a_namespace_allows_nothing() {
    // An empty field never reads as "unset" in an ALLOW, even beside a real one: it fails
    // closed. Validation loads this shape with a warning saying so (Istio accepts it, issue 25).
    let p = policy(
        Action::Allow,
        from(Source {
            principals: Some(Vec::new()),
            namespaces: strings(&["frontend"]),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [Reason::NotAllowed, Reason::NotAllowed]);
}

#[test]
fn deny_with_an_l7_only_source_still_denies_everything() {
    // The one deliberate match-all (M1): an L7 part of a DENY rule matches every connection.
    let p = policy(
        Action::Deny,
        from(Source {
            request_principals: strings(&["*"]),
            ..Source::default()
        }),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_an_l7_condition_still_denies_everything() {
    // Likewise for an L7 `when` key.
    let p = policy(
        Action::Deny,
        when("request.headers[x-token]", None, strings(&["admin"])),
    );
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}

#[test]
fn deny_with_empty_target_refs_is_enforced() {
    // Istio reads `targetRefs: []` as unset: the policy applies to its namespace, it is not a
    // waypoint policy to skip.
    let mut p = policy(Action::Deny, Rule::default());
    p.spec.target_refs = Some(Vec::<PolicyTargetReference>::new());
    let engine = Engine::compile([&p], [], "istio-system");
    assert!(engine.skipped().is_empty());
    assert_eq!(reasons(&p), [denied_by_p(), denied_by_p()]);
}
