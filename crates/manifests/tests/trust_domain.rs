//! The `security.meshd.io/trust-domain` annotation: a SPIFFE trust domain by meshd-identity's
//! rules, on the kinds that describe workloads; every rejection names file, line and field.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, load_str};

fn errors(file: &str, text: &str) -> Vec<String> {
    match load_str(file, text, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().map(ToString::to_string).collect(),
    }
}

const WORKLOAD_ENTRY: &str = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: db\n  namespace: shop\n  annotations:\n    security.meshd.io/trust-domain: {TD}\nspec:\n  address: 10.0.0.2\n";

#[test]
fn a_valid_trust_domain_on_a_workload_entry_loads() {
    let text = WORKLOAD_ENTRY.replace("{TD}", "td-b.example");
    let snapshot = load_str("we.yaml", &text, &LoadOptions::default()).unwrap();
    let meta = &snapshot.workload_entries[0].resource.metadata;
    assert_eq!(meta.trust_domain(), Some("td-b.example"));
}

#[test]
fn an_invalid_trust_domain_on_a_workload_entry_is_rejected() {
    // `@` is not a trust-domain character (SPIFFE ID spec, section 2.1).
    let text = WORKLOAD_ENTRY.replace("{TD}", "td@b");
    assert_eq!(
        errors("we.yaml", &text),
        [
            "we.yaml:7:5: WorkloadEntry/shop/db: metadata.annotations.security.meshd.io/trust-domain: invalid trust domain \"td@b\": trust domain may only contain ASCII letters (case-insensitive), digits, dots, dashes, and underscores"
        ]
    );
}

#[test]
fn a_spiffe_id_is_not_a_trust_domain() {
    // The annotation names a domain, not an identity: the URI form is refused.
    let text = WORKLOAD_ENTRY.replace("{TD}", "'spiffe://td-b'");
    let found = errors("we.yaml", &text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "we.yaml:7:5: WorkloadEntry/shop/db: metadata.annotations.security.meshd.io/trust-domain: invalid trust domain \"spiffe://td-b\": expected a bare trust domain name"
        ),
        "{found:?}"
    );
}

#[test]
fn an_invalid_trust_domain_on_a_service_entry_is_rejected() {
    // A ServiceEntry's annotation gives its inline endpoints their trust domain.
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: pay\n  namespace: shop\n  annotations: {security.meshd.io/trust-domain: ''}\nspec:\n  hosts: [pay.shop]\n  ports: [{number: 80, name: http}]\n  endpoints: [{address: 10.0.0.3}]\n";
    let found = errors("se.yaml", text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with(
            "se.yaml:6:17: ServiceEntry/shop/pay: metadata.annotations.security.meshd.io/trust-domain: invalid trust domain \"\""
        ),
        "{found:?}"
    );
}

#[test]
fn the_annotation_on_a_policy_is_rejected() {
    // An AuthorizationPolicy has no trust domain: the annotation would look like it did something.
    let text = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: shop\n  annotations:\n    security.meshd.io/trust-domain: td-b\nspec: {}\n";
    assert_eq!(
        errors("ap.yaml", text),
        [
            "ap.yaml:7:5: AuthorizationPolicy/shop/p: metadata.annotations.security.meshd.io/trust-domain: AuthorizationPolicy has unsupported annotation security.meshd.io/trust-domain (only WorkloadEntry and ServiceEntry have a trust domain)"
        ]
    );
}
