//! istiod's pushes at scale: 100 000 workloads, 10 000 services and 10 000 policies, encoded
//! with meshd-workloadapi's generated protos (the bytes istiod sends) and applied as the daemon
//! applies them: `MeshState::apply` per resource, the state published (`Arc`), then the
//! proxy state built from it beside the directory's snapshot (`meshd_daemon::build_state`,
//! with the daemon's default `local:` section, so the local-workload check is the daemon's).
//!
//! Groups, each with a baseline measured in the same run:
//! - `full-push`: decoding and applying every resource into an empty state, beside prost's
//!   decoding of the same bytes alone.
//! - `proxy-state`: building the proxy state from the full state, beside building it from an
//!   empty state (the directory alone).
//! - `delta`: one workload (its address changes) and one policy (a principal changes) applied
//!   end to end (state apply, publish, new proxy state), beside the same delta on a mesh of
//!   100 workloads and beside the same delta with the proxy state rebuilt from scratch (what
//!   every push did before they were applied as deltas).
//!
//! Memory: resident (anonymous) memory of the process before and after building and holding
//! the full state and its proxy state, divided by the workloads; printed, not a criterion
//! figure. Then the exact heap bytes of each part (stats_alloc counts every allocation):
//! istiod's workloads, services and policies, the registry and the compiled policies. The
//! resources' bytes the daemon also holds (for `initial_resource_versions` and the persisted
//! state) are counted apart, exactly.
//!
//! Run: `cargo bench -p meshd-benches --bench istiod` (about 2 min). On the 2-core shared
//! development VM the figures below were taken with the dev profile at opt-level 2 (the
//! dependencies are prebuilt that way; a release build of the whole tree would take longer
//! than the bench): `cargo bench -p meshd-benches --bench istiod --profile dev --config
//! 'profile.dev.opt-level=2'`.
//!
//! Figures (median, criterion; 2 shared cores, noisy; targets of issue 24 item 6 in brackets),
//! each beside its baselines in the same run. d1d2506: every push rebuilt the whole proxy
//! state. a6ac13c: pushes applied as deltas, each workload held twice (istiod's model and the
//! registry's copy). Now: the registry reads istiod's model, repeated values shared:
//!
//! | figure | baselines in the same run (now) | d1d2506 | a6ac13c | now |
//! |---|---|---|---|---|
//! | full push, decode + apply [≤ 3 s with the proxy state] | prost decode alone 187 ms | 612 ms | 572 ms | 683 ms |
//! | proxy state from the full state | directory only 0.26 ms | 1.02 s | 0.88 s | 0.57 s |
//! | one-workload delta, end to end [≤ 5 ms] | 100-workload mesh 0.18 ms; full rebuild 553 ms | 631 ms | 0.21 ms | 0.21 ms |
//! | one-policy delta, end to end | 100-workload mesh 0.18 ms; full rebuild 492 ms | 722 ms | 22.3 ms | 21.9 ms |
//! | resident memory per workload [≤ 1 KB] | | 3 650 B | 2 749 B | 942 B |
//!
//! Heap per workload now (exact): istiod's workloads 402 B, services 46 B, policies 65 B;
//! registry 258 B, compiled policies 118 B. The store also keeps each resource's bytes (238 B
//! per workload here) for reconnects and the persisted state. A one-policy delta compiles every
//! policy again (10 000 here); the registry is shared.

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::alloc::System;

use criterion::{Criterion, criterion_group, criterion_main};
use meshd_daemon::{MeshdConfig, build_state, update_state};
use meshd_manifests::{LoadOptions, Snapshot, load_str};
use meshd_proxy::ProxyState;
use meshd_workloadapi::proto::{security as sec, workload as pb};
use meshd_workloadapi::{MeshState, ResourceKind};
use prost::Message;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The scale target (issue 24 item 6).
const WORKLOADS: usize = 100_000;
const POLICIES: usize = 10_000;
/// One service per ten workloads, as in a cluster of small deployments.
const SERVICES: usize = WORKLOADS / 10;
/// Namespaces the resources spread over.
const NAMESPACES: usize = 500;
/// The small mesh the deltas' baseline runs on.
const SMALL: usize = 100;

/// One encoded resource, as the xDS client hands it to the store.
struct Encoded {
    kind: ResourceKind,
    name: String,
    body: Vec<u8>,
}

fn namespace(i: usize) -> String {
    format!("ns{}", i % NAMESPACES)
}

fn address(i: usize, generation: usize) -> Vec<u8> {
    // 10.0.0.0/8 for generation 0, 11.0.0.0/8 for the moved copy: never this machine's.
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    Ipv4Addr::from((10 + generation as u32) << 24 | n)
        .octets()
        .to_vec()
}

fn service_host(s: usize) -> String {
    format!("svc{s}.{}.svc.cluster.local", namespace(s))
}

fn workload(i: usize, generation: usize) -> Encoded {
    let ns = namespace(i / 10);
    let uid = format!("Kubernetes//Pod/{ns}/pod-{i}");
    let s = i / 10;
    let mut services = std::collections::HashMap::new();
    services.insert(
        format!("{ns}/{}", service_host(s)),
        pb::PortList {
            ports: vec![pb::Port {
                service_port: 80,
                target_port: 8080,
                app_protocol: 0,
            }],
        },
    );
    // A third of the workloads are selected by one policy of their namespace.
    let authorization_policies = if i.is_multiple_of(3) {
        vec![format!("{ns}/policy-{}", (i / 10) % POLICIES)]
    } else {
        Vec::new()
    };
    let w = pb::Workload {
        uid: uid.clone(),
        name: format!("pod-{i}"),
        namespace: ns.clone(),
        addresses: vec![address(i, generation)],
        trust_domain: "cluster.local".into(),
        service_account: format!("sa{}", i % 50),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        node: format!("node-{}", i % 1000),
        canonical_name: format!("app{s}"),
        canonical_revision: "v1".into(),
        workload_type: pb::WorkloadType::Pod as i32,
        workload_name: format!("app{s}"),
        cluster_id: "Kubernetes".into(),
        services,
        authorization_policies,
        ..Default::default()
    };
    Encoded {
        kind: ResourceKind::Address,
        name: uid,
        body: pb::Address {
            r#type: Some(pb::address::Type::Workload(w)),
        }
        .encode_to_vec(),
    }
}

fn service(s: usize) -> Encoded {
    let ns = namespace(s);
    let host = service_host(s);
    let vip = 0xF000_0000u32 | u32::try_from(s).unwrap_or(0);
    let body = pb::Service {
        name: format!("svc{s}"),
        namespace: ns.clone(),
        hostname: host.clone(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: Ipv4Addr::from(vip).octets().to_vec(),
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    };
    Encoded {
        kind: ResourceKind::Address,
        name: format!("{ns}/{host}"),
        body: pb::Address {
            r#type: Some(pb::address::Type::Service(body)),
        }
        .encode_to_vec(),
    }
}

fn exact(s: String) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s)),
    }
}

/// A policy mix like benches/lib.rs's files: mostly ALLOW on principals and ports, some DENY on
/// address blocks; half bound to workloads (WORKLOAD_SELECTOR), the rest namespace-wide, a few
/// mesh-wide.
fn policy(p: usize, generation: usize) -> Encoded {
    let ns = namespace(p * 10);
    let name = format!("policy-{p}");
    let (scope, action) = match p % 20 {
        0 => (sec::Scope::Global, sec::Action::Deny),
        1..=3 => (sec::Scope::Namespace, sec::Action::Deny),
        4..=10 => (sec::Scope::Namespace, sec::Action::Allow),
        _ => (sec::Scope::WorkloadSelector, sec::Action::Allow),
    };
    let r#match = if action == sec::Action::Deny {
        sec::Match {
            source_ips: vec![sec::Address {
                address: vec![198, 51, (p % 256) as u8, 0],
                length: 24,
            }],
            destination_ports: vec![8000 + (p % 50) as u32],
            ..Default::default()
        }
    } else {
        sec::Match {
            principals: vec![
                exact(format!(
                    "cluster.local/ns/team{}/sa/sa{p}-{generation}",
                    p % 100
                )),
                exact(format!("cluster.local/ns/team{}/sa/reader", p % 100)),
            ],
            destination_ports: vec![8080],
            ..Default::default()
        }
    };
    let body = sec::Authorization {
        name: name.clone(),
        namespace: ns.clone(),
        scope: scope as i32,
        action: action as i32,
        groups: vec![sec::Group {
            rules: vec![sec::Rules {
                matches: vec![r#match],
            }],
        }],
        ..Default::default()
    };
    Encoded {
        kind: ResourceKind::Authorization,
        name: format!("{ns}/{name}"),
        body: body.encode_to_vec(),
    }
}

/// istiod's first push to a new client: every resource.
fn full_push(workloads: usize) -> Vec<Encoded> {
    let services = workloads.div_ceil(10);
    let policies = if workloads == WORKLOADS { POLICIES } else { 10 };
    (0..workloads)
        .map(|i| workload(i, 0))
        .chain((0..services).map(service))
        .chain((0..policies).map(|p| policy(p, 0)))
        .collect()
}

fn apply_all(push: &[Encoded]) -> MeshState {
    let mut mesh = MeshState::default();
    for r in push {
        if let Err(e) = mesh.apply(r.kind, &r.name, &r.body) {
            panic!("{}: {e}", r.name);
        }
    }
    mesh
}

/// The directory's part: the VM itself, as a file would declare it.
fn snapshot() -> Snapshot {
    let yaml = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm, namespace: app}
spec: {address: 192.0.2.10, labels: {app: vm}, serviceAccount: vm}
";
    load_str("vm.yaml", yaml, &LoadOptions::default())
        .unwrap_or_else(|e| panic!("bench snapshot: {e}"))
}

fn config() -> MeshdConfig {
    MeshdConfig::default()
}

/// The daemon's path for one push: apply into the store's state, publish it (the store sends
/// a clone of the state on its watch channel), then the proxy state: updated from the one in
/// force by what changed (`update_state`, as `Reloader::apply_mesh` does), or, for the
/// baseline, rebuilt from scratch as every push was before (`build_state`, then the health
/// marks carried over).
fn push_delta(
    mesh: &mut MeshState,
    delta: &Encoded,
    config: &MeshdConfig,
    snapshot: &Snapshot,
    previous: &ProxyState,
    generation: u64,
    rebuild: bool,
) -> ProxyState {
    if let Err(e) = mesh.apply(delta.kind, &delta.name, &delta.body) {
        panic!("{}: {e}", delta.name);
    }
    let published = Arc::new(mesh.clone());
    if rebuild {
        let mut state = build_state(config, snapshot, &published, generation);
        state.succeed(previous);
        state
    } else {
        update_state(config, previous, &published, generation)
    }
}

/// Times `deltas` applied one after the other (alternating versions, so each is a change);
/// replaced states are freed outside the timing, as the daemon frees them off its path.
fn bench_delta(
    c: &mut Criterion,
    group: &str,
    cases: [(&str, usize, bool); 3],
    delta: fn(usize, usize) -> Encoded,
) {
    let config = config();
    let snapshot = snapshot();
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, workloads, rebuild) in cases {
        let mut mesh = apply_all(&full_push(workloads));
        let mut previous = build_state(&config, &snapshot, &mesh, 1);
        let versions = [delta(7, 1), delta(7, 0)];
        let mut n = 0usize;
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut replaced = Vec::with_capacity(iters as usize);
                let start = Instant::now();
                for _ in 0..iters {
                    n += 1;
                    let next = push_delta(
                        &mut mesh,
                        &versions[n % 2],
                        &config,
                        &snapshot,
                        &previous,
                        n as u64,
                        rebuild,
                    );
                    replaced.push(std::mem::replace(&mut previous, next));
                }
                let elapsed = start.elapsed();
                drop(replaced);
                elapsed
            })
        });
    }
    g.finish();
}

fn deltas(c: &mut Criterion) {
    bench_delta(
        c,
        "delta-one-workload",
        [
            ("baseline-100-workloads", SMALL, false),
            ("baseline-full-rebuild-100000", WORKLOADS, true),
            ("100000-workloads-10000-policies", WORKLOADS, false),
        ],
        workload,
    );
    bench_delta(
        c,
        "delta-one-policy",
        [
            ("baseline-100-workloads", SMALL, false),
            ("baseline-full-rebuild-100000", WORKLOADS, true),
            ("100000-workloads-10000-policies", WORKLOADS, false),
        ],
        policy,
    );
}

fn full(c: &mut Criterion) {
    let push = full_push(WORKLOADS);
    let mut g = c.benchmark_group("full-push");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.bench_function("baseline-prost-decode-only", |b| {
        b.iter(|| {
            for r in &push {
                match r.kind {
                    ResourceKind::Address => {
                        black_box(pb::Address::decode(r.body.as_slice()).is_ok());
                    }
                    ResourceKind::Authorization => {
                        black_box(sec::Authorization::decode(r.body.as_slice()).is_ok());
                    }
                }
            }
        })
    });
    g.bench_function("decode-and-apply-100000-workloads-10000-policies", |b| {
        b.iter(|| apply_all(black_box(&push)))
    });
    g.finish();

    let config = config();
    let snapshot = snapshot();
    let mesh = apply_all(&push);
    let empty = MeshState::default();
    let mut g = c.benchmark_group("proxy-state");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(10));
    g.bench_function("baseline-directory-only", |b| {
        b.iter(|| build_state(&config, &snapshot, black_box(&empty), 1))
    });
    g.bench_function("100000-workloads-10000-policies", |b| {
        b.iter(|| build_state(&config, &snapshot, black_box(&mesh), 1))
    });
    g.finish();
}

/// Every allocation is counted (stats_alloc), for the exact heap bytes of each part; resident
/// memory also holds the allocator's own overhead.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Heap bytes live now.
fn live() -> usize {
    let stats = GLOBAL.stats();
    let live =
        stats.bytes_allocated as isize - stats.bytes_deallocated as isize + stats.bytes_reallocated;
    usize::try_from(live).unwrap_or(0)
}

/// Anonymous resident bytes of this process (resident minus file-backed, `/proc/self/statm`).
fn anonymous_rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = statm.split_ascii_whitespace().skip(1);
    let resident: u64 = fields.next()?.parse().ok()?;
    let shared: u64 = fields.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared) * 4096)
}

fn memory(_: &mut Criterion) {
    let push = full_push(WORKLOADS);
    let held: usize = push.iter().map(|r| r.body.len() + r.name.len()).sum();
    let config = config();
    let snapshot = snapshot();
    // Resident memory first, in a process that has held nothing else yet.
    let before = anonymous_rss();
    let mesh = apply_all(&push);
    let decoded = anonymous_rss();
    let state = build_state(&config, &snapshot, &mesh, 1);
    let after = anonymous_rss();
    black_box((&mesh, &state));
    match (before, decoded, after) {
        (Some(before), Some(decoded), Some(after)) => println!(
            "memory: state + proxy state hold {} bytes resident per workload ({} of them istiod's state) ({} workloads, {} services, {} policies); the resources' bytes the store keeps add {} bytes per workload",
            after.saturating_sub(before) / WORKLOADS as u64,
            decoded.saturating_sub(before) / WORKLOADS as u64,
            WORKLOADS,
            SERVICES,
            POLICIES,
            held / WORKLOADS,
        ),
        _ => println!("memory: /proc/self/statm unreadable"),
    }
    drop((state, mesh));
    heap_by_part(&push, &config, &snapshot);
}

/// Exact heap bytes (asked of the allocator) per workload, by part: istiod's workloads,
/// services and policies, then the registry (a proxy state without policies) and the compiled
/// policies (the rest of the proxy state).
fn heap_by_part(push: &[Encoded], config: &MeshdConfig, snapshot: &Snapshot) {
    let is_workload = |r: &&Encoded| r.kind == ResourceKind::Address && r.name.contains("//Pod/");
    let workloads: Vec<&Encoded> = push.iter().filter(is_workload).collect();
    let services: Vec<&Encoded> = push
        .iter()
        .filter(|r| r.kind == ResourceKind::Address && !is_workload(r))
        .collect();
    let policies: Vec<&Encoded> = push
        .iter()
        .filter(|r| r.kind == ResourceKind::Authorization)
        .collect();
    let per_workload = |start: usize| live().saturating_sub(start) / WORKLOADS;
    let mut mesh = MeshState::default();
    let mut parts = Vec::new();
    for set in [&workloads, &services, &policies] {
        let start = live();
        for r in set {
            if let Err(e) = mesh.apply(r.kind, &r.name, &r.body) {
                panic!("{}: {e}", r.name);
            }
        }
        parts.push(per_workload(start));
    }
    let mut unpoliced = mesh.clone();
    for r in &policies {
        unpoliced.remove(r.kind, &r.name);
    }
    let start = live();
    let registry_only = build_state(config, snapshot, &unpoliced, 1);
    let registry = per_workload(start);
    drop(registry_only);
    let start = live();
    let state = build_state(config, snapshot, &mesh, 1);
    let proxy = per_workload(start);
    black_box(&state);
    println!(
        "heap per workload: istiod's workloads {} B, services {} B, policies {} B; registry {} B, compiled policies {} B; total {} B",
        parts[0],
        parts[1],
        parts[2],
        registry,
        proxy.saturating_sub(registry),
        parts.iter().sum::<usize>() + proxy,
    );
}

criterion_group!(benches, memory, full, deltas);
criterion_main!(benches);
