//! istiod's Authorizations in the engine, alone and beside the files' policies: scopes bound
//! explicitly, the empty-match trap in ALLOW and DENY, every field and `not_` field, dry-run,
//! extensions, sources kept apart, and the index agreeing with the unindexed oracle.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use meshd_manifests::{LoadOptions, load_str};
use meshd_rbac::{Connection, Engine, PolicyKey, PolicySource, Reason};
use meshd_workloadapi::model::{
    Action, Authorization, Group, Match, Rule, Scope, ServiceAccount, StringPattern,
};
use support::conn;

const WEB: &str = "cluster.local/ns/frontend/sa/web";
const OTHER: &str = "cluster.local/ns/other/sa/x";
const DST: &str = "app/app=web@10.0.0.2:8080";

fn policy(name: &str, scope: Scope, action: Action, groups: Vec<Group>) -> Authorization {
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
fn group(rules: Vec<Vec<Match>>) -> Group {
    Group {
        rules: rules.into_iter().map(|matches| Rule { matches }).collect(),
    }
}

fn ns(n: &str) -> Match {
    Match {
        namespaces: vec![StringPattern::Exact(n.into())],
        ..Match::default()
    }
}

fn port(p: u16) -> Match {
    Match {
        destination_ports: vec![p],
        ..Match::default()
    }
}

fn engine(files: &str, istiod: &[Authorization]) -> Engine {
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

fn bound(mut c: Connection, keys: &[&str]) -> Connection {
    c.destination.bound_policies = keys
        .iter()
        .map(|k| k.to_string())
        .collect::<Vec<_>>()
        .into();
    c
}

fn reason(e: &Engine, c: &Connection) -> Reason {
    e.decide(c).reason
}

fn istiod_key(name: &str) -> PolicyKey {
    PolicyKey::istiod("app", name)
}

#[test]
fn scopes_bind_as_istiod_says() {
    let deny_other = |name: &str, scope| {
        policy(
            name,
            scope,
            Action::Deny,
            vec![group(vec![vec![ns("other")]])],
        )
    };
    // GLOBAL: every namespace, whatever the policy's own namespace.
    let e = engine("", &[deny_other("g", Scope::Global)]);
    let in_elsewhere = conn(OTHER, "10.0.0.9", "elsewhere@10.0.0.3:80");
    assert_eq!(reason(&e, &in_elsewhere), Reason::Denied(istiod_key("g")));
    // NAMESPACE: only its namespace.
    let e = engine("", &[deny_other("n", Scope::Namespace)]);
    assert_eq!(reason(&e, &in_elsewhere), Reason::NoAllowPolicies);
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("n"))
    );
    // WORKLOAD_SELECTOR: only where the destination lists it; labels play no part.
    let e = engine("", &[deny_other("w", Scope::WorkloadSelector)]);
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::NoAllowPolicies
    );
    assert_eq!(
        reason(&e, &bound(conn(OTHER, "10.0.0.9", DST), &["app/w"])),
        Reason::Denied(istiod_key("w"))
    );
    assert_eq!(
        reason(
            &e,
            &bound(conn(OTHER, "10.0.0.9", DST), &["app/x", "other/w"])
        ),
        Reason::NoAllowPolicies,
        "another key, or the same name in another namespace, does not bind it"
    );
}

#[test]
fn empty_match_in_a_deny_matches_every_connection() {
    // istiod's rendering of `from: [requestPrincipals], to: [ports: 80]`: port 80 AND {}.
    let deny = policy(
        "d",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![port(8080)], vec![Match::default()]])],
    );
    let e = engine("", &[deny]);
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("d"))
    );
    assert_eq!(
        reason(&e, &conn("", "10.0.0.9", DST)),
        Reason::Denied(istiod_key("d"))
    );
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", "app/app=web@10.0.0.2:9090")),
        Reason::NoAllowPolicies,
        "the L4 part still restricts"
    );
    // `{}` beside a real match in the same rule: the rule holds for every connection.
    let mixed = policy(
        "m",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![Match::default(), ns("frontend")]])],
    );
    let e = engine("", &[mixed]);
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("m"))
    );
    // A rule with no match at all reads the same way in a DENY.
    let no_match = policy(
        "z",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![port(8080)], vec![]])],
    );
    let e = engine("", &[no_match]);
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("z"))
    );
}

#[test]
fn empty_match_in_an_allow_drops_its_group_never_allows_all() {
    // The only group has a rule of only `{}`: the group goes, the policy still applies.
    let allow = policy(
        "a",
        Scope::Namespace,
        Action::Allow,
        vec![group(vec![vec![ns("frontend")], vec![Match::default()]])],
    );
    let e = engine("", std::slice::from_ref(&allow));
    for c in [
        conn(WEB, "10.0.0.9", DST),
        conn(OTHER, "10.0.0.9", DST),
        conn("", "1.1.1.1", DST),
    ] {
        assert_eq!(
            reason(&e, &c),
            Reason::NotAllowed,
            "allow-nothing, not allow-all"
        );
    }
    // Beside a good group, only the good group allows.
    let mut two = allow;
    two.groups.push(group(vec![vec![ns("other")]]));
    let e = engine("", &[two]);
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::Allowed(istiod_key("a"))
    );
    assert_eq!(reason(&e, &conn(WEB, "10.0.0.9", DST)), Reason::NotAllowed);
    // `{}` beside a real match in the same rule: the real one decides.
    let mixed = policy(
        "m",
        Scope::Namespace,
        Action::Allow,
        vec![group(vec![vec![Match::default(), ns("frontend")]])],
    );
    let e = engine("", &[mixed]);
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", DST)),
        Reason::Allowed(istiod_key("m"))
    );
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::NotAllowed
    );
    // A rule with no match at all: dropped the same way (ztunnel would read it as true).
    let none = policy(
        "n",
        Scope::Namespace,
        Action::Allow,
        vec![group(vec![vec![]])],
    );
    let e = engine("", &[none]);
    assert_eq!(reason(&e, &conn(WEB, "10.0.0.9", DST)), Reason::NotAllowed);
    // A group with no rule is istiod's `rules: [{}]`: allow everything, as written.
    let all = policy(
        "all",
        Scope::Namespace,
        Action::Allow,
        vec![Group::default()],
    );
    let e = engine("", &[all]);
    assert_eq!(
        reason(&e, &conn("", "1.1.1.1", DST)),
        Reason::Allowed(istiod_key("all"))
    );
    // No group at all: allow nothing.
    let nothing = policy("none", Scope::Namespace, Action::Allow, vec![]);
    let e = engine("", &[nothing]);
    assert_eq!(reason(&e, &conn(WEB, "10.0.0.9", DST)), Reason::NotAllowed);
}

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
fn files_and_istiod_decide_together_with_sources_named() {
    let files = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: p, namespace: app}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: [frontend, other]}}]}]
"#;
    // The same key from istiod: a DENY the file's ALLOW of that name cannot shadow.
    let deny = policy(
        "p",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![ns("other")]])],
    );
    let e = engine(files, &[deny]);
    assert_eq!(e.len(), 2, "two policies, not one replacing the other");
    let d = e.decide(&conn(OTHER, "10.0.0.9", DST));
    assert_eq!(d.reason, Reason::Denied(istiod_key("p")));
    assert_eq!(d.policy().unwrap().source, PolicySource::Istiod);
    assert_eq!(d.to_string(), "denied by DENY policy istiod:app/p");
    let a = e.decide(&conn(WEB, "10.0.0.9", DST));
    assert_eq!(a.reason, Reason::Allowed(PolicyKey::new("app", "p")));
    assert_eq!(a.to_string(), "allowed by ALLOW policy app/p");
    // An istiod ALLOW beside a file ALLOW: either allows, and a connection neither allows is
    // denied.
    let allow = policy(
        "q",
        Scope::Global,
        Action::Allow,
        vec![group(vec![vec![ns("third")]])],
    );
    let e = engine(files, &[allow]);
    let third = conn("cluster.local/ns/third/sa/t", "10.0.0.9", DST);
    assert_eq!(reason(&e, &third), Reason::Allowed(istiod_key("q")));
    assert_eq!(
        reason(&e, &conn("cluster.local/ns/fourth/sa/t", "10.0.0.9", DST)),
        Reason::NotAllowed
    );
    // A file DENY still denies what an istiod ALLOW allows.
    let file_deny = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-third, namespace: istio-system}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [third]}}]}]
"#;
    let allow = policy(
        "q",
        Scope::Global,
        Action::Allow,
        vec![group(vec![vec![ns("third")]])],
    );
    let e = engine(file_deny, &[allow]);
    assert_eq!(
        reason(&e, &third),
        Reason::Denied(PolicyKey::new("istio-system", "no-third"))
    );
}

#[test]
fn dry_run_istiod_policies_are_reported_not_enforced() {
    let mut deny = policy(
        "d",
        Scope::Global,
        Action::Deny,
        vec![group(vec![vec![ns("other")]])],
    );
    deny.dry_run = true;
    let e = engine("", &[deny]);
    let d = e.decide(&conn(OTHER, "10.0.0.9", DST));
    assert_eq!(d.reason, Reason::NoAllowPolicies);
    assert_eq!(d.dry_run, vec![(istiod_key("d"), false)]);
}

#[test]
fn extensions_meshd_cannot_evaluate_fail_closed() {
    let with_ext = |m: Match| Match {
        extensions: true,
        ..m
    };
    // On a match: never holds in an ALLOW...
    let allow = policy(
        "a",
        Scope::Namespace,
        Action::Allow,
        vec![group(vec![vec![with_ext(ns("frontend"))]])],
    );
    let e = engine("", &[allow]);
    assert_eq!(reason(&e, &conn(WEB, "10.0.0.9", DST)), Reason::NotAllowed);
    // ...and is read without them in a DENY.
    let deny = policy(
        "d",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![with_ext(ns("frontend"))]])],
    );
    let e = engine("", &[deny]);
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("d"))
    );
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::NoAllowPolicies
    );
    // On the policy: an ALLOW allows nothing, a DENY denies on its groups.
    let mut allow = policy("a", Scope::Namespace, Action::Allow, vec![Group::default()]);
    allow.extensions = true;
    let e = engine("", &[allow]);
    assert_eq!(reason(&e, &conn(WEB, "10.0.0.9", DST)), Reason::NotAllowed);
    let mut deny = policy(
        "d",
        Scope::Namespace,
        Action::Deny,
        vec![group(vec![vec![ns("other")]])],
    );
    deny.extensions = true;
    let e = engine("", &[deny]);
    assert_eq!(
        reason(&e, &conn(OTHER, "10.0.0.9", DST)),
        Reason::Denied(istiod_key("d"))
    );
    assert_eq!(
        reason(&e, &conn(WEB, "10.0.0.9", DST)),
        Reason::NoAllowPolicies
    );
}

#[test]
fn views_list_istiod_policies_by_scope_and_binding() {
    let policies = [
        policy("g", Scope::Global, Action::Deny, vec![]),
        policy("n", Scope::Namespace, Action::Allow, vec![]),
        policy("w", Scope::WorkloadSelector, Action::Allow, vec![]),
    ];
    let e = engine("", &policies);
    let names = |ns: &str, bound: &[String]| -> Vec<String> {
        e.policies_for_workload(ns, &Default::default(), bound)
            .into_iter()
            .map(|(k, _)| k.to_string())
            .collect()
    };
    assert_eq!(names("app", &[]), ["istiod:app/g", "istiod:app/n"]);
    assert_eq!(
        names("app", &["app/w".into()]),
        ["istiod:app/g", "istiod:app/n", "istiod:app/w"]
    );
    assert_eq!(names("elsewhere", &[]), ["istiod:app/g"]);
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
    let all_bound: Arc<[String]> = policies
        .iter()
        .map(Authorization::key)
        .collect::<Vec<_>>()
        .into();
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
