//! Two workloads that can serve one (address, port) are an error naming both (issue 9, item C):
//! the registry hands a connection to the first, so the second's policies and
//! PeerAuthentication would silently never apply. One named test per scenario.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::fs;

use meshd_manifests::{LoadOptions, load_dir, load_str};
use tempfile::TempDir;

fn we(name: &str, address: &str, ports: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  address: '{address}'\n{ports}---\n"
    )
}

fn errors(text: &str) -> Vec<String> {
    match load_str("w.yaml", text, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().map(ToString::to_string).collect(),
    }
}

const TAIL: &str = "meshd would hand connections there to only one of them, so the other's policies and PeerAuthentication would never apply; give each workload its own address, or distinct `ports`";

#[test]
fn same_address_and_port_in_two_files_names_both() {
    // The reported case, across files: each named with file:line:col and Kind/namespace/name.
    let dir = TempDir::new().unwrap();
    fs::write(
        dir.path().join("a.yaml"),
        we("a", "10.0.0.1", "  ports: {http: 8080}\n"),
    )
    .unwrap();
    fs::write(
        dir.path().join("b.yaml"),
        we("b", "10.0.0.1", "  ports: {web: 8080}\n"),
    )
    .unwrap();
    let err = load_dir(dir.path(), &LoadOptions::default()).unwrap_err();
    let found: Vec<String> = err
        .errors()
        .map(|p| {
            p.to_string()
                .replace(&format!("{}/", dir.path().display()), "")
        })
        .collect();
    assert_eq!(
        found,
        [format!(
            "b.yaml:5:3: WorkloadEntry/app/b: spec.address: 10.0.0.1 port 8080 is also served by WorkloadEntry/app/a at a.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn disjoint_ports_at_one_address_load() {
    // Two workloads on one machine, each on its own port: the registry tells them apart.
    let text = we("a", "10.0.0.1", "  ports: {http: 8080}\n")
        + &we("b", "10.0.0.1", "  ports: {http: 9090, grpc: 9091}\n");
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn portless_entry_overlaps_a_ported_one() {
    // A WorkloadEntry without `ports` serves every port, so it shadows (or is shadowed by) any
    // other workload at its address.
    let text = we("a", "10.0.0.1", "  ports: {http: 8080}\n") + &we("b", "10.0.0.1", "");
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:12:3: WorkloadEntry/app/b: spec.address: 10.0.0.1 port 8080 is also served by WorkloadEntry/app/a at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn two_portless_entries_overlap_on_every_port() {
    // Neither lists ports: they collide on all of them.
    let text = we("a", "10.0.0.1", "") + &we("b", "10.0.0.1", "");
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:11:3: WorkloadEntry/app/b: spec.address: 10.0.0.1 on every port (a workload without `ports` serves them all) is also served by WorkloadEntry/app/a at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn several_shared_ports_are_listed() {
    // Every port in common is named.
    let text = we("a", "10.0.0.1", "  ports: {a: 80, b: 443, c: 8080}\n")
        + &we("b", "10.0.0.1", "  ports: {x: 443, y: 80}\n");
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:12:3: WorkloadEntry/app/b: spec.address: 10.0.0.1 ports 80, 443 is also served by WorkloadEntry/app/a at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn same_port_at_different_addresses_loads() {
    // Different machines.
    let text = we("a", "10.0.0.1", "  ports: {http: 8080}\n")
        + &we("b", "10.0.0.2", "  ports: {http: 8080}\n");
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn ipv4_mapped_ipv6_is_the_same_address() {
    // `::ffff:10.0.0.1` is 10.0.0.1 to the registry, which compares canonical addresses.
    let text = we("a", "10.0.0.1", "") + &we("b", "::ffff:10.0.0.1", "");
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:11:3: WorkloadEntry/app/b: spec.address: 10.0.0.1 on every port (a workload without `ports` serves them all) is also served by WorkloadEntry/app/a at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn differently_written_ipv6_is_the_same_address() {
    // `2001:db8::1` and `2001:0db8:0:0::1` are one address.
    let text = we("a", "2001:db8::1", "") + &we("b", "2001:0db8:0:0::1", "");
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:11:3: WorkloadEntry/app/b: spec.address: 2001:db8::1 on every port (a workload without `ports` serves them all) is also served by WorkloadEntry/app/a at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn service_entry_endpoint_at_a_workload_entry_address_overlaps() {
    // Inline endpoints become workloads too (namespace/service#index in the registry); a
    // ServiceEntry should select the WorkloadEntry with `workloadSelector` instead.
    let text = we("vm", "10.0.0.1", "")
        + "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg}]\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.1\n";
    assert_eq!(
        errors(&text),
        [format!(
            "w.yaml:15:5: ServiceEntry/data/db: spec.endpoints[0].address: 10.0.0.1 on every port (a workload without `ports` serves them all) is also served by WorkloadEntry/app/vm at w.yaml:5:3 (spec.address): {TAIL}"
        )]
    );
}

#[test]
fn two_endpoints_of_one_service_entry_overlap() {
    // The same rule inside one ServiceEntry.
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg}]\n  resolution: STATIC\n  endpoints:\n  - {address: 10.0.0.1, ports: {pg: 5432}}\n  - {address: 10.0.0.1, ports: {pg: 5432}}\n";
    assert_eq!(
        errors(text),
        [format!(
            "w.yaml:10:6: ServiceEntry/data/db: spec.endpoints[1].address: 10.0.0.1 port 5432 is also served by ServiceEntry/data/db at w.yaml:9:6 (spec.endpoints[0].address): {TAIL}"
        )]
    );
}

#[test]
fn endpoints_on_distinct_ports_at_one_address_load() {
    // Endpoint port maps that do not meet are fine, as for WorkloadEntries.
    let text = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: data}\nspec:\n  hosts: [db.example.com]\n  ports: [{number: 5432, name: pg}]\n  resolution: STATIC\n  endpoints:\n  - {address: 10.0.0.1, ports: {pg: 5432}}\n  - {address: 10.0.0.1, ports: {pg: 5433}}\n";
    assert_eq!(errors(text), Vec::<String>::new());
}

#[test]
fn a_duplicate_resource_is_reported_once() {
    // The same WorkloadEntry twice is a "duplicate" error; the overlap would only repeat it.
    let text = we("a", "10.0.0.1", "") + &we("a", "10.0.0.1", "");
    assert_eq!(
        errors(&text),
        [
            "w.yaml:7:1: WorkloadEntry/app/a: duplicate WorkloadEntry/app/a: already defined at w.yaml:1:1"
        ]
    );
}
