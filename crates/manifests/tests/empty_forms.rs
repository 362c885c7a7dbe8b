//! Siblings of `principals: []` (issue 9, item D): other empty or absent forms, each checked
//! against Istio's documented validation. Forms that could widen what is allowed are errors;
//! forms Istio accepts with a meaning that fails closed load, with Istio's warning where it has
//! one. One named test per form, exact field and message.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_policy::MtlsMode;

fn text(kind: &str, spec: &str) -> String {
    let api = match kind {
        "AuthorizationPolicy" | "PeerAuthentication" => "security.istio.io/v1",
        _ => "networking.istio.io/v1",
    };
    format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{name: p, namespace: app}}\nspec:\n{spec}")
}

/// Every problem (errors and warnings) as `meshd validate` prints it.
fn problems(kind: &str, spec: &str) -> Vec<String> {
    match load_str("t.yaml", &text(kind, spec), &LoadOptions::default()) {
        Ok(s) => s.warnings.iter().map(ToString::to_string).collect(),
        Err(e) => e.problems.iter().map(ToString::to_string).collect(),
    }
}

fn loads(kind: &str, spec: &str) -> Snapshot {
    load_str("t.yaml", &text(kind, spec), &LoadOptions::default()).unwrap()
}

#[test]
fn selector_with_empty_match_labels_warns_like_an_empty_selector() {
    // `selector: {matchLabels: {}}` is `selector: {}`: Istio warns, meshd applies the policy to
    // the whole namespace (M5), which fails closed for ALLOW and DENY alike.
    let expected = "t.yaml:5:3: warning: AuthorizationPolicy/app/p: spec.selector: workload selector specified without labels: meshd applies this policy to every workload in namespace \"app\" (Istio's sidecar meaning; ztunnel would apply it to none)";
    assert_eq!(
        problems(
            "AuthorizationPolicy",
            "  selector: {matchLabels: {}}\n  rules: [{}]\n"
        ),
        [expected]
    );
    assert_eq!(
        problems("AuthorizationPolicy", "  selector: {}\n  rules: [{}]\n"),
        [expected]
    );
}

#[test]
fn peer_authentication_selector_with_empty_match_labels_is_namespace_level() {
    // The same form on a PeerAuthentication: namespace level, with Istio's warning.
    let snapshot = loads(
        "PeerAuthentication",
        "  selector: {matchLabels: {}}\n  mtls: {mode: STRICT}\n",
    );
    assert_eq!(
        snapshot.peer_authentications[0]
            .resource
            .level("istio-system"),
        meshd_policy::PeerAuthnLevel::Namespace
    );
    assert_eq!(
        snapshot.warnings[0].to_string(),
        "t.yaml:5:3: warning: PeerAuthentication/app/p: spec.selector: workload selector specified without labels"
    );
}

#[test]
fn port_level_mtls_under_empty_match_labels_is_rejected() {
    // Istio: port-level settings need a selector with labels.
    assert_eq!(
        problems(
            "PeerAuthentication",
            "  selector: {matchLabels: {}}\n  portLevelMtls: {8080: {mode: DISABLE}}\n"
        ),
        [
            "t.yaml:5:3: warning: PeerAuthentication/app/p: spec.selector: workload selector specified without labels",
            "t.yaml:6:3: PeerAuthentication/app/p: spec.portLevelMtls: mesh/namespace peer authentication cannot have port level mTLS: portLevelMtls requires a selector with labels",
            "t.yaml:6:26: warning: PeerAuthentication/app/p: spec.portLevelMtls.8080.mode: DISABLE acts as PERMISSIVE in meshd: mTLS between meshd instances cannot be turned off, and plaintext is accepted",
        ]
    );
}

#[test]
fn empty_mtls_inherits() {
    // `mtls: {}` leaves the mode UNSET: the workload inherits, which is Istio's meaning.
    let snapshot = loads("PeerAuthentication", "  mtls: {}\n");
    assert_eq!(
        snapshot.peer_authentications[0].resource.spec.mode(),
        MtlsMode::Unset
    );
    assert!(snapshot.warnings.is_empty());
}

#[test]
fn empty_port_level_mtls_is_rejected() {
    // Istio: "port level mTLS, if defined, must have at least one element".
    assert_eq!(
        problems(
            "PeerAuthentication",
            "  selector: {matchLabels: {app: a}}\n  portLevelMtls: {}\n"
        ),
        [
            "t.yaml:6:3: PeerAuthentication/app/p: spec.portLevelMtls: port level mTLS, if defined, must have at least one element"
        ]
    );
}

#[test]
fn workload_entry_with_empty_address_is_rejected() {
    // `address: ""` is no address: nothing to serve, nothing to match.
    assert_eq!(
        problems("WorkloadEntry", "  address: \"\"\n"),
        [
            "t.yaml:5:3: WorkloadEntry/app/p: spec.address: `address` is required: the workload's IP address"
        ]
    );
}

#[test]
fn service_entry_with_empty_hosts_is_rejected() {
    // Istio: "service entry must have at least one host".
    assert_eq!(
        problems("ServiceEntry", "  hosts: []\n  ports: [{number: 80}]\n"),
        ["t.yaml:5:3: ServiceEntry/app/p: spec.hosts: `hosts` must hold at least one host name"]
    );
}

#[test]
fn service_entry_with_empty_host_string_is_rejected() {
    // An empty string is not a host name.
    assert_eq!(
        problems("ServiceEntry", "  hosts: ['']\n  ports: [{number: 80}]\n"),
        [
            "t.yaml:5:11: ServiceEntry/app/p: spec.hosts[0]: \"\" is not a valid host name (a DNS name, optionally starting with `*.`)"
        ]
    );
}

#[test]
fn service_entry_selector_without_labels_warns() {
    // An empty workloadSelector selects every WorkloadEntry of the namespace as an endpoint.
    assert_eq!(
        problems(
            "ServiceEntry",
            "  hosts: [a.example.com]\n  ports: [{number: 80}]\n  workloadSelector: {labels: {}}\n"
        ),
        [
            "t.yaml:7:3: warning: ServiceEntry/app/p: spec.workloadSelector: workload selector specified without labels: every WorkloadEntry in this namespace becomes an endpoint of this service"
        ]
    );
}

#[test]
fn empty_string_in_ip_blocks_is_rejected() {
    // Istio's CheckEmptyValues on ipBlocks.
    assert_eq!(
        problems(
            "AuthorizationPolicy",
            "  rules: [{from: [{source: {ipBlocks: ['']}}]}]\n"
        ),
        [
            "t.yaml:5:40: AuthorizationPolicy/app/p: spec.rules[0].from[0].source.ipBlocks[0]: empty value not allowed"
        ]
    );
}

#[test]
fn empty_string_in_when_values_is_rejected() {
    // ValidateAttribute rejects "" in a condition's values.
    assert_eq!(
        problems(
            "AuthorizationPolicy",
            "  rules: [{when: [{key: source.namespace, values: ['']}]}]\n"
        ),
        [
            "t.yaml:5:52: AuthorizationPolicy/app/p: spec.rules[0].when[0].values[0]: empty value not allowed"
        ]
    );
}
