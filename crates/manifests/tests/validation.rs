//! One case per validation rule (Istio's CRD schema and admission webhook, section 9 of
//! `docs/istio-l4-authorization.md`), asserting the exact field and message.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, load_str};
use meshd_policy::Severity;

/// The problems of one document as `severity field: message`, positions left out.
fn problems(kind: &str, namespace: &str, spec: &str, metadata_extra: &str) -> Vec<String> {
    let api = match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io/v1",
        _ => "networking.istio.io/v1",
    };
    let text = format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: p\n  namespace: {namespace}\n{metadata_extra}spec:\n{spec}"
    );
    let found = match load_str("t.yaml", &text, &LoadOptions::default()) {
        Ok(snapshot) => snapshot.warnings,
        Err(e) => e.problems,
    };
    found
        .iter()
        .map(|p| {
            let level = if p.severity == Severity::Error {
                "error"
            } else {
                "warning"
            };
            format!("{level} {}: {}", p.path, p.message)
        })
        .collect()
}

fn authz(spec: &str) -> Vec<String> {
    problems("AuthorizationPolicy", "app", spec, "")
}

fn has(found: &[String], expected: &str) {
    assert!(
        found.iter().any(|p| p.starts_with(expected)),
        "expected {expected:?} in {found:#?}"
    );
}

#[test]
fn scope_fields_are_exclusive() {
    has(
        &authz("  selector: {matchLabels: {app: a}}\n  targetRefs: [{kind: Service, name: s}]\n"),
        "error spec: only one of targetRefs, targetRef or selector can be set",
    );
}

#[test]
fn selector_labels() {
    let found = authz("  selector: {matchLabels: {'a*': b, c: 'd*', '': e}}\n  rules: [{}]\n");
    has(
        &found,
        "error spec.selector.matchLabels.a*: wildcard is not supported in a label key",
    );
    has(
        &found,
        "error spec.selector.matchLabels.c: wildcard is not supported in a label value",
    );
    has(&found, "error spec.selector.matchLabels.: empty label key");
    has(
        &authz("  selector: {}\n  rules: [{}]\n"),
        "warning spec.selector: workload selector specified without labels",
    );
}

#[test]
fn target_refs() {
    let found =
        authz("  targetRefs:\n  - {kind: Service, namespace: other}\n  - {kind: Pod, name: x}\n");
    has(
        &found,
        "error spec.targetRefs[0].name: target reference `name` is required",
    );
    has(
        &found,
        "error spec.targetRefs[0].namespace: cross namespace referencing is not supported",
    );
    has(
        &found,
        "error spec.targetRefs[1]: target reference \"\"/\"Pod\" is not supported",
    );
    has(
        &found,
        "warning spec.targetRefs: targetRef(s) policies are enforced by waypoint proxies",
    );
}

#[test]
fn deny_and_custom_need_rules() {
    has(
        &authz("  action: DENY\n"),
        "error spec: DENY action without `rules` is meaningless",
    );
    has(
        &authz("  action: DENY\n  rules: []\n"),
        "error spec: DENY action without `rules` is meaningless",
    );
    has(
        &authz("  action: CUSTOM\n  provider: {name: x}\n"),
        "error spec: CUSTOM action without `rules` is meaningless",
    );
    has(
        &authz("  action: CUSTOM\n  rules: [{}]\n"),
        "error spec.provider: CUSTOM action requires `provider.name`",
    );
    has(
        &authz("  action: CUSTOM\n  provider: {name: x}\n  rules: [{}]\n"),
        "warning spec.action: meshd has no external authorizer at L4",
    );
    has(
        &authz("  provider: {name: x}\n  rules: [{}]\n"),
        "error spec.provider: `provider` must only be set with the CUSTOM action",
    );
}

#[test]
fn custom_forbids_identity_attributes() {
    let found = authz(
        "  action: CUSTOM\n  provider: {name: x}\n  rules:\n  - from: [{source: {principals: [a]}}]\n    when: [{key: 'request.auth.claims[iss]', values: [x]}]\n",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.principals: `principals` is not supported with the CUSTOM action",
    );
    has(
        &found,
        "error spec.rules[0].when[0].key: `request.auth.claims[iss]` is not supported with the CUSTOM action",
    );
}

#[test]
fn unknown_action_is_rejected() {
    has(
        &authz("  action: PERMIT\n"),
        "error spec.action: unknown value \"PERMIT\"; expected one of: ALLOW, DENY, AUDIT, CUSTOM",
    );
}

#[test]
fn empty_from_to_source_operation() {
    has(
        &authz("  rules: [{from: []}]\n"),
        "error spec.rules[0].from: `from` must not be empty",
    );
    has(
        &authz("  rules: [{to: []}]\n"),
        "error spec.rules[0].to: `to` must not be empty",
    );
    has(
        &authz("  rules: [{from: [{}]}]\n"),
        "error spec.rules[0].from[0]: `from.source` is required",
    );
    has(
        &authz("  rules: [{from: [{source: {}}]}]\n"),
        "error spec.rules[0].from[0].source: `from.source` must not be empty",
    );
    has(
        &authz("  rules: [{to: [{operation: {}}]}]\n"),
        "error spec.rules[0].to[0].operation: `to.operation` must not be empty",
    );
    has(
        &authz("  rules: [null]\n"),
        "error spec.rules[0]: expected a mapping, found null",
    );
}

#[test]
fn service_accounts_rules() {
    has(
        &authz("  rules: [{from: [{source: {serviceAccounts: [a], principals: [b]}}]}]\n"),
        "error spec.rules[0].from[0].source: serviceAccounts/notServiceAccounts cannot be combined",
    );
    let found =
        authz("  rules: [{from: [{source: {serviceAccounts: ['a/*', 'a/b/c', '/x', '']}}]}]\n");
    has(
        &found,
        "error spec.rules[0].from[0].source.serviceAccounts[0]: wildcard is not supported",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.serviceAccounts[1]: service account must be",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.serviceAccounts[2]: service account must be",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.serviceAccounts[3]: empty value not allowed",
    );
}

#[test]
fn values_are_checked() {
    let found = authz(
        "  rules:\n  - from: [{source: {ipBlocks: ['10.0.0.0/40'], notIpBlocks: [nope], namespaces: ['']}}]\n    to: [{operation: {ports: ['80', '65536', http], paths: ['/a/{**}/b']}}]\n",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.ipBlocks[0]: bad CIDR range",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.notIpBlocks[0]: bad IP address",
    );
    has(
        &found,
        "error spec.rules[0].from[0].source.namespaces[0]: empty value not allowed",
    );
    has(
        &found,
        "error spec.rules[0].to[0].operation.ports[1]: bad port \"65536\"",
    );
    has(
        &found,
        "error spec.rules[0].to[0].operation.ports[2]: bad port \"http\"",
    );
    has(
        &found,
        "error spec.rules[0].to[0].operation.paths[0]: invalid path template",
    );
    has(
        &authz("  rules: [{from: [{source: {trustDomains: ['a*b', 'x/y']}}]}]\n"),
        "error spec.rules[0].from[0].source.trustDomains[0]: a trust domain may hold one '*'",
    );
}

#[test]
fn numbers_where_strings_are_expected() {
    has(
        &authz("  rules: [{to: [{operation: {ports: [8080]}}]}]\n"),
        "error spec.rules[0].to[0].operation.ports[0]: expected a string, found an integer; quote it (\"8080\")",
    );
}

#[test]
fn when_conditions() {
    has(
        &authz("  rules: [{when: [{values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: `key` must not be empty",
    );
    has(
        &authz("  rules: [{when: [{key: source.ip}]}]\n"),
        "error spec.rules[0].when[0]: at least one of `values` or `notValues` must be set",
    );
    has(
        &authz("  rules: [{when: [{key: source.colour, values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: unknown attribute \"source.colour\"",
    );
    has(
        &authz("  rules: [{when: [{key: destination.namespace, values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: `destination.namespace` is replaced",
    );
    has(
        &authz("  rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: `destination.labels` is replaced",
    );
    has(
        &authz("  rules: [{when: [{key: destination.user, values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: `destination.user` is a deprecated attribute",
    );
    has(
        &authz("  rules: [{when: [{key: 'request.headers[]', values: [a]}]}]\n"),
        "error spec.rules[0].when[0].key: \"request.headers[]\" must have the form name[key]",
    );
    has(
        &authz("  rules: [{when: [{key: destination.port, values: ['99999']}]}]\n"),
        "error spec.rules[0].when[0].values[0]: bad port",
    );
    has(
        &authz("  rules: [{when: [{key: source.ip, notValues: ['300.1.1.1']}]}]\n"),
        "error spec.rules[0].when[0].notValues[0]: bad IP address",
    );
}

#[test]
fn layer7_warnings() {
    has(
        &authz("  rules: [{to: [{operation: {methods: [GET]}}]}]\n"),
        "warning spec.rules[0]: rule ignored: it uses L7 attributes (methods)",
    );
    has(
        &authz(
            "  action: DENY\n  rules: [{from: [{source: {requestPrincipals: ['*']}}], when: [{key: remote.ip, values: [10.0.0.1]}]}]\n",
        ),
        "warning spec.rules[0]: rule enforced on its L4 attributes only: meshd cannot evaluate requestPrincipals, when remote.ip at L4",
    );
}

#[test]
fn dry_run_annotation() {
    let extra = |v: &str| format!("  annotations:\n    istio.io/dry-run: '{v}'\n");
    has(
        &problems(
            "AuthorizationPolicy",
            "app",
            "  rules: [{}]\n",
            &extra("maybe"),
        ),
        "error metadata.annotations.istio.io/dry-run: \"maybe\" is not a boolean",
    );
    has(
        &problems(
            "AuthorizationPolicy",
            "app",
            "  action: AUDIT\n  rules: [{}]\n",
            &extra("true"),
        ),
        "error metadata.annotations.istio.io/dry-run: the dry-run annotation is only supported with ALLOW and DENY",
    );
    has(
        &problems(
            "AuthorizationPolicy",
            "app",
            "  rules: [{}]\n",
            &extra("true"),
        ),
        "warning metadata.annotations.istio.io/dry-run: dry-run policy",
    );
}

#[test]
fn metadata() {
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  namespace: Bad_NS\nspec: {}\n";
    let err = load_str("t.yaml", text, &LoadOptions::default()).expect_err("invalid");
    let found: Vec<String> = err
        .problems
        .iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    has(&found, "metadata: missing field `name`");
    has(
        &found,
        "metadata.namespace: \"Bad_NS\" is not a valid namespace",
    );
}

#[test]
fn peer_authentication_rules() {
    let pa = |ns: &str, spec: &str| problems("PeerAuthentication", ns, spec, "");
    has(
        &pa("app", "  portLevelMtls: {'80': {mode: STRICT}}\n"),
        "error spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS",
    );
    has(
        &pa(
            "app",
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls: {}\n",
        ),
        "error spec.portLevelMtls: port level mTLS, if defined, must have at least one element",
    );
    has(
        &pa(
            "app",
            "  selector: {matchLabels: {a: b}}\n  portLevelMtls: {'0': {mode: STRICT}, '70000': {mode: STRICT}}\n",
        ),
        "error spec.portLevelMtls.0: port \"0\" must be in the range 1..65535",
    );
    has(
        &pa("app", "  mtls: {mode: STRIKT}\n"),
        "error spec.mtls.mode: unknown value \"STRIKT\"; expected one of: UNSET, DISABLE, PERMISSIVE, STRICT",
    );
    has(
        &pa("app", "  mtls: {mode: DISABLE}\n"),
        "warning spec.mtls.mode: DISABLE acts as PERMISSIVE in meshd",
    );
    has(
        &pa(
            "istio-system",
            "  selector: {matchLabels: {a: b}}\n  mtls: {mode: STRICT}\n",
        ),
        "warning spec.selector: PeerAuthentication policies with workload selectors are ignored in the root namespace",
    );
    has(
        &pa("app", "  selector: {}\n"),
        "warning spec.selector: workload selector specified without labels",
    );
}

#[test]
fn workload_and_service_entries() {
    let we = |spec: &str| problems("WorkloadEntry", "app", spec, "");
    has(
        &we("  labels: {a: b}\n"),
        "error spec.address: `address` is required",
    );
    has(
        &we("  address: vm1.example.com\n"),
        "error spec.address: \"vm1.example.com\" is not an IP address",
    );
    has(
        &we("  address: 10.0.0.1\n  ports: {http: 0}\n"),
        "error spec.ports.http: port 0 must be in the range 1..65535",
    );
    has(
        &we("  address: 10.0.0.1\n  serviceAccount: Bad_SA\n"),
        "error spec.serviceAccount:",
    );
    let se = |spec: &str| problems("ServiceEntry", "app", spec, "");
    has(
        &se("  ports: [{number: 80}]\n"),
        "error spec.hosts: `hosts` must hold at least one host name",
    );
    has(
        &se("  hosts: [a.b]\n"),
        "error spec.ports: `ports` must hold at least one port",
    );
    has(
        &se("  hosts: ['bad host']\n  ports: [{number: 80}]\n"),
        "error spec.hosts[0]: \"bad host\" is not a valid host name",
    );
    has(
        &se("  hosts: [a.b]\n  addresses: [10.0.0.0/99]\n  ports: [{number: 80}]\n"),
        "error spec.addresses[0]: bad CIDR range",
    );
    has(
        &se("  hosts: [a.b]\n  ports: [{number: 80}, {number: 80}]\n"),
        "error spec.ports[1].number: port number 80 is listed twice",
    );
    has(
        &se("  hosts: [a.b]\n  ports: [{number: 80, protocol: SPDY}]\n"),
        "error spec.ports[0].protocol: unknown protocol \"SPDY\"",
    );
    has(
        &se("  hosts: [a.b]\n  ports: [{number: 80}]\n  resolution: MAGIC\n"),
        "error spec.resolution: unknown resolution \"MAGIC\"",
    );
    has(
        &se(
            "  hosts: [a.b]\n  ports: [{number: 80}]\n  endpoints: [{address: 10.0.0.1}]\n  workloadSelector: {labels: {a: b}}\n",
        ),
        "error spec: only one of `endpoints` or `workloadSelector` can be set",
    );
}
