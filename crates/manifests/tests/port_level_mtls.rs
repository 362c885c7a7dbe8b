//! `portLevelMtls` keys as Istio's documentation writes them (YAML integers, issue 9 item B)
//! and as Kubernetes stores them (strings), and each key that is not a port, one named test per
//! rejection with the exact field and message. What the accepted keys mean to the engine is in
//! `crates/rbac/tests/istio_docs.rs`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, Snapshot, load_str};

/// A workload-level PeerAuthentication with `ports` as the body of `portLevelMtls`.
fn text(ports: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: foo}}\nspec:\n  selector: {{matchLabels: {{app: finance}}}}\n  mtls: {{mode: STRICT}}\n  portLevelMtls:\n{ports}"
    )
}

fn load(ports: &str) -> Result<Snapshot, Vec<String>> {
    load_str("pa.yaml", &text(ports), &LoadOptions::default())
        .map_err(|e| e.errors().map(ToString::to_string).collect())
}

fn keys(snapshot: &Snapshot) -> Vec<String> {
    snapshot.peer_authentications[0]
        .resource
        .spec
        .port_level_mtls
        .iter()
        .flatten()
        .map(|(port, mtls)| format!("{port}={:?}", mtls.mode))
        .collect()
}

#[test]
fn integer_keys_load() {
    // Every example on istio.io writes `8080:`; meshd used to answer "expected a string".
    let snapshot = load("    8080:\n      mode: PERMISSIVE\n    9090: {mode: STRICT}\n").unwrap();
    assert_eq!(
        keys(&snapshot),
        ["8080=Some(Permissive)", "9090=Some(Strict)"]
    );
}

#[test]
fn quoted_keys_load() {
    // `kubectl get -o yaml` writes the keys back as strings.
    let snapshot = load("    '8080': {mode: PERMISSIVE}\n    \"9090\": {mode: STRICT}\n").unwrap();
    assert_eq!(
        keys(&snapshot),
        ["8080=Some(Permissive)", "9090=Some(Strict)"]
    );
}

#[test]
fn flow_style_integer_keys_load() {
    // The one-line form of the same map.
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: foo}\nspec: {selector: {matchLabels: {app: finance}}, portLevelMtls: {8080: {mode: PERMISSIVE}}}\n";
    let snapshot = load_str("pa.yaml", text, &LoadOptions::default()).unwrap();
    assert_eq!(keys(&snapshot), ["8080=Some(Permissive)"]);
}

#[test]
fn non_numeric_key_is_rejected() {
    // A port name is not a port: the override would apply to nothing.
    assert_eq!(
        load("    http: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.http: port \"http\" is not a port number"
        ]
    );
}

#[test]
fn zero_port_is_rejected() {
    // Istio: "port cannot be 0".
    assert_eq!(
        load("    0: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.0: port \"0\" must be in the range 1..65535"
        ]
    );
}

#[test]
fn port_above_65535_is_rejected() {
    // No such TCP port.
    assert_eq!(
        load("    65536: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.65536: port \"65536\" must be in the range 1..65535"
        ]
    );
}

#[test]
fn negative_port_is_rejected() {
    // An integer, but not a port.
    assert_eq!(
        load("    -1: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.-1: port \"-1\" must be in the range 1..65535"
        ]
    );
}

#[test]
fn signed_quoted_port_is_rejected() {
    // Rust's integer parser takes "+80"; Istio's uint32 key does not.
    assert_eq!(
        load("    '+80': {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.+80: port \"+80\" is not a port number"
        ]
    );
}

#[test]
fn boolean_key_is_rejected() {
    // YAML reads `true:` as a boolean key.
    assert_eq!(
        load("    true: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.true: expected a port number, found a boolean"
        ]
    );
}

#[test]
fn integer_and_quoted_spelling_of_one_port_is_a_duplicate() {
    // `8080` and `"8080"` are one key to Kubernetes: keeping either silently hides the other.
    assert_eq!(
        load("    8080: {mode: PERMISSIVE}\n    \"8080\": {mode: STRICT}\n").unwrap_err(),
        [
            "pa.yaml:9:5: PeerAuthentication/foo/pa: spec.portLevelMtls.8080: duplicate key: already set at line 8"
        ]
    );
}

#[test]
fn leading_zero_spelling_of_one_port_is_a_duplicate() {
    // "08080" is port 8080 to Istio's uint32 map key.
    assert_eq!(
        load("    8080: {mode: PERMISSIVE}\n    '08080': {mode: STRICT}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.8080: port 8080 is listed twice (as \"08080\" and \"8080\")"
        ]
    );
}

#[test]
fn dry_run_annotation_on_peer_authentication_is_rejected() {
    // Istio's webhook: only AuthorizationPolicy supports dry-run; a PeerAuthentication its
    // author thinks is not enforced would be.
    let text = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: pa\n  namespace: foo\n  annotations:\n    istio.io/dry-run: \"true\"\nspec:\n  mtls: {mode: STRICT}\n";
    let errors: Vec<String> = load_str("pa.yaml", text, &LoadOptions::default())
        .unwrap_err()
        .errors()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "pa.yaml:7:5: PeerAuthentication/foo/pa: metadata.annotations.istio.io/dry-run: PeerAuthentication has unsupported annotation istio.io/dry-run, please remove the annotation (only AuthorizationPolicy can be dry-run)"
        ]
    );
}

#[test]
fn dry_run_annotation_on_workload_entry_is_rejected() {
    // The same webhook rule covers every kind but AuthorizationPolicy.
    let text = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: vm\n  namespace: foo\n  annotations: {istio.io/dry-run: 'false'}\nspec:\n  address: 10.0.0.1\n";
    let errors: Vec<String> = load_str("we.yaml", text, &LoadOptions::default())
        .unwrap_err()
        .errors()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errors,
        [
            "we.yaml:6:17: WorkloadEntry/foo/vm: metadata.annotations.istio.io/dry-run: WorkloadEntry has unsupported annotation istio.io/dry-run, please remove the annotation (only AuthorizationPolicy can be dry-run)"
        ]
    );
}

#[test]
fn hex_and_decimal_spelling_of_one_port_is_a_duplicate() {
    // YAML reads `0x1F90` as the integer 8080: two keys, one port.
    assert_eq!(
        load("    0x1F90: {mode: PERMISSIVE}\n    8080: {mode: STRICT}\n").unwrap_err(),
        ["pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls: port 8080 is listed twice"]
    );
}

#[test]
fn fractional_key_is_rejected() {
    // `80.5:` is a number, but no port.
    assert_eq!(
        load("    80.5: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls.80.5: expected a port number, found a fractional number"
        ]
    );
}

#[test]
fn null_key_is_rejected() {
    // `~:` is a null key.
    assert_eq!(
        load("    ~: {mode: PERMISSIVE}\n").unwrap_err(),
        [
            "pa.yaml:8:5: PeerAuthentication/foo/pa: spec.portLevelMtls: expected a port number, found null"
        ]
    );
}
