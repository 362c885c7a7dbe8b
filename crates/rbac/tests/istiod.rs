//! istiod's Authorizations in the engine, alone and beside the files' policies: scopes bound
//! explicitly, the empty-match trap in ALLOW and DENY, dry-run, extensions, sources kept apart.
//! Every field and the index: `istiod_fields.rs`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use meshd_rbac::{PolicyKey, PolicySource, Reason};
use meshd_workloadapi::model::{Action, Group, Match, Scope};
use support::conn;
use support::istiod::*;

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
    let names = |ns: &str, bound: &[meshd_rbac::Sym]| -> Vec<String> {
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
