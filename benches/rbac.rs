//! Authorization decision and compile cost.
//!
//! Each `decide/*` group times one decision for a connection that no policy allows (the worst
//! case: every candidate DENY and ALLOW is evaluated) and one that an ALLOW policy matches. The
//! baseline in every group is the same decision with no policy at all, so results can be read
//! as a ratio to it as well as in absolute time.

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use meshd_benches::{DESTINATION_NAMESPACE, policy_yaml};
use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_rbac::{Connection, Destination, Engine, Peer};

fn snapshot(applying: usize, elsewhere: usize) -> Snapshot {
    match load_str(
        "bench.yaml",
        &policy_yaml(applying, elsewhere),
        &LoadOptions::default(),
    ) {
        Ok(s) => s,
        Err(e) => panic!("bench policies do not load: {e}"),
    }
}

fn engine(snapshot: &Snapshot) -> Engine {
    Engine::compile(
        snapshot.policies(),
        snapshot.peer_auths(),
        &snapshot.root_namespace,
    )
}

fn connection(principal: &str, source_ip: [u8; 4], port: u16) -> Connection {
    Connection {
        peer: Some(Peer::from_principal(principal).expect("principal")),
        source_ip: IpAddr::from(source_ip),
        destination: Destination {
            namespace: DESTINATION_NAMESPACE.to_string(),
            labels: [
                ("app".to_string(), "web".to_string()),
                ("version".to_string(), "v1".to_string()),
            ]
            .into(),
            ip: IpAddr::from([10, 0, 0, 2]),
            port,
            bound_policies: Default::default(),
        },
    }
}

fn decide(c: &mut Criterion) {
    // Nobody allows team55/outsider on 8080 (team55's namespace is allowed, but not on that
    // policy's port); the allowed connection matches an exact-principal ALLOW.
    let denied = connection("cluster.local/ns/outsider/sa/nobody", [10, 200, 1, 1], 8080);
    let cases: [(&str, usize, usize); 6] = [
        ("10", 5, 5),
        ("100", 50, 50),
        ("1000", 500, 500),
        ("10000", 5000, 5000),
        ("1000-applying", 1000, 0),
        ("1000-applying+10000-elsewhere", 1000, 10000),
    ];
    let baseline = Engine::compile([], [], "istio-system");
    for (name, applying, elsewhere) in cases {
        let snap = snapshot(applying, elsewhere);
        let engine = engine(&snap);
        // An ALLOW that matches: the first exact-principal policy applying to `app`.
        let allowed = connection("cluster.local/ns/team4/sa/sa4", [10, 200, 1, 1], 8004);
        assert!(
            engine.decide(&allowed).allowed(),
            "{}",
            engine.decide(&allowed)
        );
        assert!(
            !engine.decide(&denied).allowed(),
            "{}",
            engine.decide(&denied)
        );
        let mut group = c.benchmark_group(format!("decide/{name}"));
        group.bench_function("baseline-no-policies", |b| {
            b.iter(|| baseline.decide(black_box(&denied)))
        });
        group.bench_function(BenchmarkId::new("not-allowed", name), |b| {
            b.iter(|| engine.decide(black_box(&denied)))
        });
        group.bench_function(BenchmarkId::new("allowed", name), |b| {
            b.iter(|| engine.decide(black_box(&allowed)))
        });
        group.finish();
    }
}

fn compile(c: &mut Criterion) {
    let snap = snapshot(5000, 5000);
    let yaml = policy_yaml(5000, 5000);
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("engine-10000-policies", |b| {
        b.iter(|| engine(black_box(&snap)))
    });
    group.bench_function("load-and-validate-10000-policies-yaml", |b| {
        b.iter(|| load_str("bench.yaml", black_box(&yaml), &LoadOptions::default()))
    });
    group.finish();
}

criterion_group!(benches, decide, compile);
criterion_main!(benches);
