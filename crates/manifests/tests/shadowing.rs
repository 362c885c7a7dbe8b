//! ServiceEntries that shadow another ServiceEntry or a workload are errors naming both: the
//! registry routes an address to the first ServiceEntry whose VIP contains it and a host name to
//! the first ServiceEntry carrying it, so whatever matches later would silently never be used.
//! One named test per scenario.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::fs;

use meshd_manifests::{LoadOptions, load_dir, load_str};
use tempfile::TempDir;

/// A ServiceEntry: line 3 holds `metadata` (`name` at column 12), line 5 `ports`, `body` starts
/// on line 6.
fn se(name: &str, namespace: &str, body: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec:\n  ports: [{{number: 80, name: http}}]\n{body}---\n"
    )
}

/// A WorkloadEntry in namespace `app`: `address` on line 5, column 3.
fn we(name: &str, address: &str, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: app}}\nspec:\n  address: '{address}'\n  labels: {{{labels}}}\n---\n"
    )
}

fn errors(text: &str) -> Vec<String> {
    match load_str("s.yaml", text, &LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.errors().map(ToString::to_string).collect(),
    }
}

const VIP_TAIL: &str = "meshd sends a destination to the first ServiceEntry whose VIP contains it";
const HOST_TAIL: &str = "meshd resolves a host name to the first ServiceEntry carrying it as a host or as its name.namespace (case-insensitively), so this one would never be reached by that name; give each host name to one ServiceEntry";
const COVER_TAIL: &str = "expect their identities; choose VIPs outside the workloads' addresses";

// Rule 1: overlapping VIPs.

#[test]
fn overlapping_vips_in_two_files_name_both() {
    // The later ServiceEntry is shadowed on the range both hold; each named with file:line:col.
    let dir = TempDir::new().unwrap();
    let a = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.0/24']\n",
    );
    let b = se(
        "b",
        "ns",
        "  hosts: [b.example.com]\n  addresses: ['10.0.0.5']\n",
    );
    fs::write(dir.path().join("a.yaml"), a).unwrap();
    fs::write(dir.path().join("b.yaml"), b).unwrap();
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
            "b.yaml:7:15: ServiceEntry/ns/b: spec.addresses[0]: VIP 10.0.0.5 overlaps VIP 10.0.0.0/24 of ServiceEntry/ns/a at a.yaml:7:15 (spec.addresses[0]) on 10.0.0.5: {VIP_TAIL}, so traffic to 10.0.0.5 would never reach this one; give each ServiceEntry VIPs of its own"
        )]
    );
}

#[test]
fn a_wider_later_cidr_is_shadowed_on_the_narrower_one() {
    // The overlap named is the part the earlier ServiceEntry takes, not the whole later range.
    let text = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.0/24']\n",
    ) + &se(
        "b",
        "ns",
        "  hosts: [b.example.com]\n  addresses: [192.168.0.1, '10.0.0.0/16']\n",
    );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:15:28: ServiceEntry/ns/b: spec.addresses[1]: VIP 10.0.0.0/16 overlaps VIP 10.0.0.0/24 of ServiceEntry/ns/a at s.yaml:7:15 (spec.addresses[0]) on 10.0.0.0/24: {VIP_TAIL}, so traffic to 10.0.0.0/24 would never reach this one; give each ServiceEntry VIPs of its own"
        )]
    );
}

#[test]
fn ipv4_mapped_vip_is_the_same_address() {
    // `::ffff:10.0.0.1` is 10.0.0.1: the registry compares canonical destinations.
    let text = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.1']\n",
    ) + &se(
        "b",
        "ns",
        "  hosts: [b.example.com]\n  addresses: ['::ffff:10.0.0.1']\n",
    );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:15:15: ServiceEntry/ns/b: spec.addresses[0]: VIP 10.0.0.1 overlaps VIP 10.0.0.1 of ServiceEntry/ns/a at s.yaml:7:15 (spec.addresses[0]) on 10.0.0.1: {VIP_TAIL}, so traffic to 10.0.0.1 would never reach this one; give each ServiceEntry VIPs of its own"
        )]
    );
}

#[test]
fn host_bits_of_a_cidr_do_not_count() {
    // `10.0.0.7/24` is the whole 10.0.0.0/24 to the registry, so it holds 10.0.0.200.
    let text = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.7/24']\n",
    ) + &se(
        "b",
        "ns",
        "  hosts: [b.example.com]\n  addresses: ['10.0.0.200']\n",
    );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:15:15: ServiceEntry/ns/b: spec.addresses[0]: VIP 10.0.0.200 overlaps VIP 10.0.0.0/24 of ServiceEntry/ns/a at s.yaml:7:15 (spec.addresses[0]) on 10.0.0.200: {VIP_TAIL}, so traffic to 10.0.0.200 would never reach this one; give each ServiceEntry VIPs of its own"
        )]
    );
}

#[test]
fn disjoint_vips_load() {
    // Adjacent ranges share no address; nor do IPv4 and IPv6 VIPs.
    let text = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.0/25', '2001:db8::/64']\n",
    ) + &se(
        "b",
        "ns",
        "  hosts: [b.example.com]\n  addresses: ['10.0.0.128/25', '2001:db8:0:1::/64']\n",
    );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn overlapping_vips_inside_one_service_entry_load() {
    // Both lead to the same service: nothing is shadowed.
    let text = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.0/24', '10.0.0.1']\n",
    );
    assert_eq!(errors(&text), Vec::<String>::new());
}

// Rule 2: one host name, two ServiceEntries.

#[test]
fn same_host_in_two_service_entries() {
    // The host resolves to the first only; Istio would pick the oldest, which a directory lacks.
    let text = se("a", "ns", "  hosts: [db.example.com]\n")
        + &se("b", "other", "  hosts: [web.example.com, db.example.com]\n");
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:13:28: ServiceEntry/other/b: spec.hosts[1]: host \"db.example.com\" is also a host of ServiceEntry/ns/a at s.yaml:6:11 (spec.hosts[0]): {HOST_TAIL}"
        )]
    );
}

#[test]
fn hosts_differing_only_in_case_are_one_host() {
    // The registry matches host names case-insensitively, as DNS does.
    let text = se("a", "ns", "  hosts: [db.example.com]\n")
        + &se("b", "ns", "  hosts: [DB.Example.COM]\n");
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:13:11: ServiceEntry/ns/b: spec.hosts[0]: host \"DB.Example.COM\" is also a host of ServiceEntry/ns/a at s.yaml:6:11 (spec.hosts[0]): {HOST_TAIL}"
        )]
    );
}

#[test]
fn host_equal_to_an_earlier_name_namespace() {
    // `db.data` already resolves to ServiceEntry data/db by its name, Kubernetes-style.
    let text = se("db", "data", "  hosts: [db.example.com]\n")
        + &se("proxy", "ns", "  hosts: [db.data]\n");
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:13:11: ServiceEntry/ns/proxy: spec.hosts[0]: host \"db.data\" is also the name.namespace of ServiceEntry/data/db at s.yaml:3:12 (metadata.name): {HOST_TAIL}"
        )]
    );
}

#[test]
fn name_namespace_equal_to_an_earlier_host() {
    // The other way round: the later ServiceEntry's own name is the name already taken.
    let text = se("proxy", "ns", "  hosts: [db.data]\n")
        + &se("db", "data", "  hosts: [db.example.com]\n");
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:10:12: ServiceEntry/data/db: metadata.name: name.namespace \"db.data\" is also a host of ServiceEntry/ns/proxy at s.yaml:6:11 (spec.hosts[0]): {HOST_TAIL}"
        )]
    );
}

#[test]
fn distinct_hosts_load() {
    // Different names, a wildcard included: the registry matches host names exactly, so
    // `*.example.com` does not take `db.example.com`; a host repeated inside one ServiceEntry,
    // or its own name.namespace as a host, leads to that same service.
    let text = se(
        "a",
        "ns",
        "  hosts: ['*.example.com', a.example.com, A.example.com]\n",
    ) + &se("b", "ns", "  hosts: [db.example.com, b.ns]\n");
    assert_eq!(errors(&text), Vec::<String>::new());
}

// Rule 3: a VIP over a workload's own address.

#[test]
fn vip_containing_an_earlier_workload_entry_address() {
    // Connections to the VM's own address would be balanced across the service's endpoints.
    let text = we("vm", "10.0.0.5", "app: vm")
        + &se(
            "db",
            "data",
            "  hosts: [db.example.com]\n  addresses: ['10.0.0.0/24']\n",
        );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:14:15: ServiceEntry/data/db: spec.addresses[0]: VIP 10.0.0.0/24 contains 10.0.0.5, the address of WorkloadEntry/app/vm at s.yaml:5:3 (spec.address): connections to that workload's own address would go to this ServiceEntry's endpoints instead and {COVER_TAIL}"
        )]
    );
}

#[test]
fn workload_entry_inside_an_earlier_vip() {
    // The same clash reported on the WorkloadEntry when it comes later.
    let text = se(
        "db",
        "data",
        "  hosts: [db.example.com]\n  addresses: ['10.0.0.0/24']\n",
    ) + &we("vm", "10.0.0.5", "app: vm");
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:13:3: WorkloadEntry/app/vm: spec.address: 10.0.0.5 is inside VIP 10.0.0.0/24 of ServiceEntry/data/db at s.yaml:7:15 (spec.addresses[0]): connections to this workload's own address would go to that ServiceEntry's endpoints instead and {COVER_TAIL}"
        )]
    );
}

#[test]
fn vip_containing_another_service_entrys_endpoint() {
    // Inline endpoints are workloads too; only a ServiceEntry's own endpoints may sit in its VIPs.
    let text = se(
        "cache",
        "data",
        "  hosts: [cache.example.com]\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.9\n",
    ) + &se(
        "db",
        "data",
        "  hosts: [db.example.com]\n  addresses: ['10.0.0.0/24']\n",
    );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:17:15: ServiceEntry/data/db: spec.addresses[0]: VIP 10.0.0.0/24 contains 10.0.0.9, the address of ServiceEntry/data/cache at s.yaml:9:5 (spec.endpoints[0].address): connections to that workload's own address would go to this ServiceEntry's endpoints instead and {COVER_TAIL}"
        )]
    );
}

#[test]
fn vip_covering_several_workloads_names_the_first_and_counts_the_rest() {
    // One error per VIP, not one per workload under a wide range.
    let text = we("vm1", "10.0.0.5", "app: vm")
        + &we("vm2", "10.0.0.6", "app: vm")
        + &se(
            "db",
            "data",
            "  hosts: [db.example.com]\n  addresses: ['10.0.0.0/24']\n",
        );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:21:15: ServiceEntry/data/db: spec.addresses[0]: VIP 10.0.0.0/24 contains 10.0.0.5, the address of WorkloadEntry/app/vm1 at s.yaml:5:3 (spec.address) (and 1 more workload): connections to that workload's own address would go to this ServiceEntry's endpoints instead and {COVER_TAIL}"
        )]
    );
}

#[test]
fn vip_at_one_of_several_selected_workloads() {
    // The VIP is vm1's address, but the service balances over vm1 and vm2: half of the
    // connections meant for vm1 would reach vm2.
    let text = we("vm1", "10.0.0.5", "app: vm")
        + &we("vm2", "10.0.0.6", "app: vm")
        + &se(
            "svc",
            "app",
            "  hosts: [svc.example.com]\n  addresses: ['10.0.0.5']\n  workloadSelector: {labels: {app: vm}}\n",
        );
    assert_eq!(
        errors(&text),
        [format!(
            "s.yaml:21:15: ServiceEntry/app/svc: spec.addresses[0]: VIP 10.0.0.5 contains 10.0.0.5, the address of WorkloadEntry/app/vm1 at s.yaml:5:3 (spec.address): connections to that workload's own address would go to this ServiceEntry's endpoints instead and {COVER_TAIL}"
        )]
    );
}

#[test]
fn vip_at_the_sole_selected_workload_loads() {
    // Allowed: every connection to the address still reaches that one workload and expects
    // its identity; nothing is shadowed.
    let text = we("vm", "10.0.0.5", "app: vm")
        + &se(
            "svc",
            "app",
            "  hosts: [svc.example.com]\n  addresses: ['10.0.0.5']\n  workloadSelector: {labels: {app: vm}}\n",
        );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn vip_covering_its_own_inline_endpoints_loads() {
    // Allowed: inline endpoints exist only as this service's backends, declared with its VIP.
    let text = se(
        "db",
        "data",
        "  hosts: [db.example.com]\n  addresses: ['10.0.0.0/24']\n  resolution: STATIC\n  endpoints:\n  - address: 10.0.0.5\n  - address: 10.0.0.6\n",
    );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn vip_outside_the_workloads_addresses_loads() {
    // The suggested fix: a VIP range of its own, the WorkloadEntry selected as endpoint.
    let text = we("vm", "10.0.0.5", "app: vm")
        + &se(
            "svc",
            "app",
            "  hosts: [svc.example.com]\n  addresses: ['240.240.0.0/24']\n  workloadSelector: {labels: {app: vm}}\n",
        );
    assert_eq!(errors(&text), Vec::<String>::new());
}

#[test]
fn a_duplicate_service_entry_is_reported_once() {
    // The same ServiceEntry twice is a "duplicate" error; its hosts and VIPs would only repeat it.
    let one = se(
        "a",
        "ns",
        "  hosts: [a.example.com]\n  addresses: ['10.0.0.1']\n",
    );
    assert_eq!(
        errors(&(one.clone() + &one)),
        [
            "s.yaml:9:1: ServiceEntry/ns/a: duplicate ServiceEntry/ns/a: already defined at s.yaml:1:1"
        ]
    );
}
