//! The workload registry: service resolution, port mapping, balancing, local workloads.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_manifests::{LoadOptions, load_str};
use meshd_proxy::{EJECTION, Protocol, Registry, ResolveError};

const YAML: &str = "
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: a, namespace: shop}
spec: {address: 10.0.0.1, labels: {app: api}, ports: {http: 8080}, weight: 3, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: b, namespace: shop}
spec: {address: 10.0.0.2, labels: {app: api}, ports: {http: 9090}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: legacy
  namespace: shop
  annotations: {meshd.io/tunnel: none}
spec: {address: 10.0.0.9, labels: {app: legacy}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: shop}
spec:
  hosts: [api.shop.internal]
  addresses: [240.0.0.1]
  ports: [{number: 80, name: http}, {number: 81, targetPort: 7000}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [ext.example]
  ports: [{number: 443}]
  endpoints: [{address: 192.0.2.10}]
";

fn registry(local: &[&str]) -> Registry {
    let snapshot = load_str("r.yaml", YAML, &LoadOptions::default()).expect("loads");
    let local: Vec<String> = local.iter().map(|s| s.to_string()).collect();
    Registry::build(&snapshot, &Default::default(), move |w| {
        local.iter().any(|k| k == w.key())
    })
}

#[test]
fn service_ports_map_to_named_endpoint_ports_then_target_port() {
    let r = registry(&[]);
    for _ in 0..20 {
        let resolved = r.resolve_host("api.shop.internal", 80).expect("resolves");
        let w = resolved.workload.expect("workload");
        let want = if w.key() == "shop/a" { 8080 } else { 9090 };
        assert_eq!(resolved.address, SocketAddr::new(w.address(), want));
        let by_target = r
            .resolve_addr("240.0.0.1:81".parse().unwrap())
            .expect("vip");
        assert_eq!(by_target.address.port(), 7000);
    }
    // Kubernetes-style short name, and inline endpoints.
    assert!(r.resolve_host("api.shop", 80).is_ok());
    let ext = r.resolve_host("ext.example", 443).expect("ext");
    assert_eq!(ext.address, "192.0.2.10:443".parse().unwrap());
}

#[test]
fn unknown_ports_and_hosts_are_errors() {
    let r = registry(&[]);
    assert_eq!(
        r.resolve_host("api.shop.internal", 8443),
        Err(ResolveError::NoSuchPort {
            service: "shop/api".into(),
            port: 8443
        })
    );
    assert_eq!(
        r.resolve_host("nope.example", 1),
        Err(ResolveError::UnknownHost("nope.example".into()))
    );
}

#[test]
fn balancing_follows_weights_and_skips_failed_endpoints() {
    let r = registry(&[]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..4000 {
        let resolved = r.resolve_host("api.shop.internal", 80).expect("resolves");
        *counts
            .entry(resolved.workload.unwrap().key().to_string())
            .or_default() += 1;
    }
    // Weight 3 against 1: about 3000 against 1000.
    let (a, b) = (counts["shop/a"], counts["shop/b"]);
    assert!(a > 2 * b && a < 4 * b, "a={a} b={b}");

    r.report_failure("10.0.0.1:8080".parse().unwrap());
    for _ in 0..50 {
        let resolved = r.resolve_host("api.shop.internal", 80).expect("resolves");
        assert_eq!(
            resolved.workload.unwrap().key(),
            "shop/b",
            "the failed endpoint is skipped"
        );
    }
    r.report_failure("10.0.0.2:9090".parse().unwrap());
    assert!(
        r.resolve_host("api.shop.internal", 80).is_ok(),
        "all failed: all are candidates again"
    );
}

#[test]
fn an_ejected_endpoint_stays_ejected_across_a_reload() {
    // A reload builds a new registry from the same files: the endpoint that just failed is
    // still skipped by the new one, and a mark made after the reload is seen by both.
    let before = registry(&[]);
    before.report_failure("10.0.0.1:8080".parse().unwrap());
    let mut after = registry(&[]);
    after.keep_health_of(&before);
    assert!(!after.is_healthy("10.0.0.1".parse().unwrap()));
    for _ in 0..50 {
        let resolved = after
            .resolve_host("api.shop.internal", 80)
            .expect("resolves");
        assert_eq!(resolved.workload.unwrap().key(), "shop/b");
    }
    after.report_failure("10.0.0.2:9090".parse().unwrap());
    assert!(!before.is_healthy("10.0.0.2".parse().unwrap()));
    // Without it, a rebuilt registry forgets: the behaviour this guards against.
    assert!(registry(&[]).is_healthy("10.0.0.1".parse().unwrap()));
}

#[test]
fn local_workloads_and_addresses() {
    let r = registry(&["shop/a"]);
    assert_eq!(
        r.local_workload("10.0.0.1:8080".parse().unwrap())
            .map(|w| w.key()),
        Some("shop/a")
    );
    assert!(
        r.local_workload("10.0.0.1:22".parse().unwrap()).is_none(),
        "only its named ports"
    );
    assert!(
        r.local_workload("10.0.0.2:9090".parse().unwrap()).is_none(),
        "not local"
    );
    let direct = r
        .resolve_addr("10.0.0.9:5000".parse().unwrap())
        .expect("resolves");
    assert_eq!(direct.workload.unwrap().protocol(), Protocol::Tcp);
    assert_eq!(r.workloads()[0].principal("td"), "td/ns/shop/sa/api");
    let outside = r
        .resolve_addr("198.51.100.1:443".parse().unwrap())
        .expect("passthrough");
    assert_eq!(outside.workload, None);
}

#[test]
fn failed_passthrough_destinations_are_not_remembered() {
    // Every failed connection to an address outside the registry used to add a mark that was
    // never removed: a scan through captured outbound traffic grew the map without bound.
    let r = registry(&[]);
    for port in 1..=2000u16 {
        r.report_failure(SocketAddr::new("198.51.100.1".parse().unwrap(), port));
    }
    assert_eq!(r.unhealthy_len(), 0);
    r.report_failure("10.0.0.1:8080".parse().unwrap());
    assert_eq!(r.unhealthy_len(), 1, "endpoints are still marked");
}

/// Every (workload address, port) pair the test registry knows: distinct marks to report.
fn endpoint_addresses() -> impl Iterator<Item = SocketAddr> {
    ["10.0.0.1", "10.0.0.2"]
        .into_iter()
        .flat_map(|ip| (1..=u16::MAX).map(move |port| SocketAddr::new(ip.parse().unwrap(), port)))
}

#[test]
fn a_burst_of_failures_does_not_sweep_on_each() {
    // 20 000 endpoints fail at once (none expired): the map used to be swept under the lock
    // on every failure past 1024 marks, each sweep O(n) and finding nothing to drop. Sweeps
    // now run when the map has doubled: a handful, logarithmic in the burst.
    const BURST: usize = 20_000;
    let r = registry(&[]);
    let now = Instant::now();
    for address in endpoint_addresses().take(BURST) {
        r.report_failure_at(address, now);
    }
    assert_eq!(r.unhealthy_len(), BURST, "every mark is alive");
    // 1024 → 2048 → … → 16384: five sweeps; 20 leaves room for a different doubling rule.
    assert!(
        r.unhealthy_sweeps() <= 20,
        "{} sweeps for {BURST} failures",
        r.unhealthy_sweeps()
    );
}

#[test]
fn expired_marks_keep_the_map_bounded() {
    // 100 000 distinct endpoints fail one millisecond apart, so about 10 000 marks are alive
    // at any time (EJECTION is 10 s): expired ones are swept and the map never holds more
    // than twice the live marks.
    const FAILURES: u32 = 100_000;
    const STEP: Duration = Duration::from_millis(1);
    let live = u32::try_from(EJECTION.as_millis() / STEP.as_millis()).unwrap();
    let bound = usize::try_from(2 * (live + 1)).unwrap();
    let r = registry(&[]);
    let start = Instant::now();
    let mut largest = 0;
    for (i, address) in (0..FAILURES).zip(endpoint_addresses()) {
        r.report_failure_at(address, start + STEP * i);
        largest = largest.max(r.unhealthy_len());
    }
    assert!(largest <= bound, "{largest} marks held, bound {bound}");
    assert!(r.unhealthy_sweeps() >= 1, "expired marks were swept");
}
