//! An empty list is not a value. Istio reads `principals: []` as "unset", so a source, operation
//! or condition whose lists are all empty would restrict nothing: an ALLOW rule holding one
//! allows every connection, plaintext included (issue 9, item A). Each such scenario is
//! rejected with the exact field and message asserted here. A part where another field is set
//! loads, as in Istio, with a warning per empty list saying how meshd reads it (issue 25); the
//! engine's own defence is in `crates/rbac/tests/fail_closed.rs`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, load_str};

/// Loads one document and returns its errors as `line:col field: message` (warnings dropped).
fn errors(kind: &str, spec: &str) -> Vec<String> {
    let api = match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io/v1",
        _ => "networking.istio.io/v1",
    };
    let text = format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata: {{name: p, namespace: app}}\nspec:\n{spec}"
    );
    match load_str("t.yaml", &text, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e
            .errors()
            .map(|p| {
                let pos = p.pos.map(|p| p.to_string()).unwrap_or_default();
                format!("{pos} {}: {}", p.path, p.message)
            })
            .collect(),
    }
}

fn authz(spec: &str) -> Vec<String> {
    errors("AuthorizationPolicy", spec)
}

/// Loads one AuthorizationPolicy that must load, and returns its warnings as `errors` does.
fn authz_warnings(spec: &str) -> Vec<String> {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: app}}\nspec:\n{spec}"
    );
    let snapshot = load_str("t.yaml", &text, &LoadOptions::default()).unwrap();
    snapshot
        .warnings
        .iter()
        .map(|p| {
            let pos = p.pos.map(|p| p.to_string()).unwrap_or_default();
            format!("{pos} {}: {}", p.path, p.message)
        })
        .collect()
}

#[test]
fn empty_principals_alone_is_an_empty_source() {
    // The reported case: `principals: []` passed validation and then matched every connection.
    assert_eq!(
        authz("  rules: [{from: [{source: {principals: []}}]}]\n"),
        [
            "5:20 spec.rules[0].from[0].source: `from.source` must not be empty",
            "5:29 spec.rules[0].from[0].source.principals: `principals: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn empty_not_principals_alone_is_an_empty_source() {
    // A negative list that is empty excludes nothing: the source would match everything.
    assert_eq!(
        authz("  rules: [{from: [{source: {notPrincipals: []}}]}]\n"),
        [
            "5:20 spec.rules[0].from[0].source: `from.source` must not be empty",
            "5:29 spec.rules[0].from[0].source.notPrincipals: `notPrincipals: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn empty_principals_next_to_namespaces_loads_as_istio_does_with_a_warning() {
    // Issue 25: Istio accepts `{principals: [], namespaces: [bar]}` (the empty list reads as
    // unset, namespaces is set), so meshd loads it; the warning says how meshd reads it.
    let spec = "  rules: [{from: [{source: {principals: [], namespaces: [bar]}}]}]\n";
    assert_eq!(authz(spec), Vec::<String>::new());
    assert_eq!(
        authz_warnings(spec),
        [
            "5:29 spec.rules[0].from[0].source.principals: `principals: []` is an empty list, which Istio reads as unset; in an ALLOW rule meshd reads it as matching nothing (fail closed), so this source allows nothing: remove the field, or list the values it should match",
        ]
    );
    let deny =
        "  action: DENY\n  rules: [{from: [{source: {principals: [], namespaces: [bar]}}]}]\n";
    assert_eq!(
        authz_warnings(deny),
        [
            "6:29 spec.rules[0].from[0].source.principals: `principals: []` is an empty list, which Istio reads as unset; meshd reads it so too: the rest of this source still applies: remove the field, or list the values it should match",
        ]
    );
}

#[test]
fn empty_ip_blocks_next_to_a_real_field_is_a_warning() {
    // Istio drops `ipBlocks: []` and keeps `namespaces`.
    let spec = "  rules: [{from: [{source: {namespaces: [a], ipBlocks: []}}]}]\n";
    assert_eq!(authz(spec), Vec::<String>::new());
    assert_eq!(
        authz_warnings(spec),
        [
            "5:46 spec.rules[0].from[0].source.ipBlocks: `ipBlocks: []` is an empty list, which Istio reads as unset; in an ALLOW rule meshd reads it as matching nothing (fail closed), so this source allows nothing: remove the field, or list the values it should match",
        ]
    );
}

#[test]
fn empty_service_accounts_alone_is_an_empty_source() {
    // The newer L4 field counts like the others.
    assert_eq!(
        authz("  rules: [{from: [{source: {serviceAccounts: []}}]}]\n"),
        [
            "5:20 spec.rules[0].from[0].source: `from.source` must not be empty",
            "5:29 spec.rules[0].from[0].source.serviceAccounts: `serviceAccounts: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn empty_ports_alone_is_an_empty_operation() {
    // `to: [{operation: {ports: []}}]` would otherwise allow every port.
    assert_eq!(
        authz("  rules: [{to: [{operation: {ports: []}}]}]\n"),
        [
            "5:18 spec.rules[0].to[0].operation: `to.operation` must not be empty",
            "5:30 spec.rules[0].to[0].operation.ports: `ports: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn empty_not_ports_next_to_ports_is_a_warning() {
    // Harmless in effect (an empty negative list excludes nothing), but a slip worth naming.
    let spec = "  rules: [{to: [{operation: {ports: ['80'], notPorts: []}}]}]\n";
    assert_eq!(authz(spec), Vec::<String>::new());
    assert_eq!(
        authz_warnings(spec),
        [
            "5:45 spec.rules[0].to[0].operation.notPorts: `notPorts: []` is an empty list, which Istio reads as unset; it excludes nothing: remove the field, or list the values it should match",
        ]
    );
}

#[test]
fn when_with_empty_values_and_no_not_values_is_rejected() {
    // Istio: "at least one of values or notValues must be set"; an empty list is not set.
    assert_eq!(
        authz("  rules: [{when: [{key: source.ip, values: []}]}]\n"),
        [
            "5:19 spec.rules[0].when[0]: at least one of `values` or `notValues` must be set",
            "5:36 spec.rules[0].when[0].values: `values: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn when_with_empty_values_and_empty_not_values_is_rejected() {
    // Both lists empty: the condition would hold for every connection.
    assert_eq!(
        authz("  rules: [{when: [{key: destination.port, values: [], notValues: []}]}]\n"),
        [
            "5:19 spec.rules[0].when[0]: at least one of `values` or `notValues` must be set",
            "5:43 spec.rules[0].when[0].values: `values: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
            "5:55 spec.rules[0].when[0].notValues: `notValues: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field",
        ]
    );
}

#[test]
fn when_with_empty_not_values_next_to_values_is_a_warning() {
    // The condition keeps its `values`; the empty list is still a slip worth naming.
    let spec = "  rules: [{when: [{key: source.namespace, values: [a], notValues: []}]}]\n";
    assert_eq!(authz(spec), Vec::<String>::new());
    assert_eq!(
        authz_warnings(spec),
        [
            "5:56 spec.rules[0].when[0].notValues: `notValues: []` is an empty list, which Istio reads as unset; it excludes nothing: remove the field, or list the values it should match",
        ]
    );
}

#[test]
fn empty_when_list_is_rejected() {
    // meshd's own rule (Istio accepts it): `{when: []}` is the rule `{}`, i.e. allow-all.
    assert_eq!(
        authz("  rules: [{when: []}]\n"),
        ["5:12 spec.rules[0].when: `when` must not be empty"]
    );
}

#[test]
fn empty_from_list_is_still_rejected() {
    // Istio's own rule, kept: `from: []` would make the rule `{}`.
    assert_eq!(
        authz("  rules: [{from: []}]\n"),
        ["5:12 spec.rules[0].from: `from` must not be empty"]
    );
}

#[test]
fn empty_to_list_is_still_rejected() {
    // Istio's own rule, kept: `to: []` would make the rule `{}`.
    assert_eq!(
        authz("  rules: [{to: []}]\n"),
        ["5:12 spec.rules[0].to: `to` must not be empty"]
    );
}

#[test]
fn empty_rules_on_allow_allows_nothing_and_loads() {
    // Istio reads `rules: []` as no rules: an ALLOW policy then allows nothing (fails closed).
    assert_eq!(authz("  rules: []\n"), Vec::<String>::new());
}

#[test]
fn empty_rules_on_deny_is_rejected() {
    // Istio: DENY without rules is meaningless; an empty list is no rules.
    assert_eq!(
        authz("  action: DENY\n  rules: []\n"),
        [
            "4:1 spec: DENY action without `rules` is meaningless: add an empty rule `{}` if it should deny every connection"
        ]
    );
}

#[test]
fn empty_target_refs_is_rejected() {
    // meshd's own rule: Istio reads `targetRefs: []` as unset (the policy applies to the whole
    // namespace), but a reader sees a waypoint policy; meshd used to skip it, failing open.
    assert_eq!(
        authz("  targetRefs: []\n  action: DENY\n  rules: [{}]\n"),
        [
            "5:3 spec.targetRefs: `targetRefs: []` is an empty list, which Istio reads as unset: list the targets, or remove the field to apply the policy to its namespace",
        ]
    );
}

#[test]
fn empty_string_in_principals_is_rejected() {
    // Istio's CheckEmptyValues: "" would otherwise be an exact match of a plaintext peer's
    // (empty) principal.
    assert_eq!(
        authz("  rules: [{from: [{source: {principals: ['']}}]}]\n"),
        ["5:42 spec.rules[0].from[0].source.principals[0]: empty value not allowed"]
    );
}
