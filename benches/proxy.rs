//! Through two meshd proxies (client meshd → HBONE → server meshd) against direct TCP, in the
//! same run: bulk throughput of one connection, round-trip latency of 1 byte on an established
//! connection, and connect + round trip on a warm tunnel pool.
//!
//! Both proxies run in this process on loopback (hosts .1 and .2 of a range from the test
//! fixture's allocator, HBONE on 15008), each with its own SPIFFE identity from a dev CA made
//! for the run; the mesh's resources come from the fixture's web/db mesh
//! (`meshd_integration::mesh`).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshd_identity::{DevCaSource, IdentityManager, IdentitySource};
use meshd_integration::mesh::Mesh;
use meshd_integration::resources::{Policy, Rule, principal};
use meshd_manifests::{LoadOptions, load_str};
use meshd_proxy::config::{ExplicitListener, LocalWorkloads};
use meshd_proxy::plugins::PluginRegistry;
use meshd_proxy::record::Sinks;
use meshd_proxy::{Proxy, ProxyConfig, ProxyState, local_predicate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const BULK: usize = 64 << 20;

/// Echoes everything back.
async fn echo(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// Reads until EOF, then answers with one byte: a bulk sink with an end-of-transfer ack.
async fn sink(listener: TcpListener) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 256 << 10];
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = s.write_all(&[1]).await;
        });
    }
}

struct Setup {
    _mesh: Mesh,
    _proxies: Vec<Proxy>,
    direct_echo: SocketAddr,
    mesh_echo: SocketAddr,
    direct_sink: SocketAddr,
    mesh_sink: SocketAddr,
}

async fn setup() -> Setup {
    let mut mesh = Mesh::web_db();
    let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
    let ca = mesh.ws.ca();
    let echo_listener = TcpListener::bind(SocketAddr::new(b, 0))
        .await
        .expect("bind");
    let sink_listener = TcpListener::bind(SocketAddr::new(b, 0))
        .await
        .expect("bind");
    let (echo_addr, sink_addr) = (
        echo_listener.local_addr().expect("addr"),
        sink_listener.local_addr().expect("addr"),
    );
    tokio::spawn(echo(echo_listener));
    tokio::spawn(sink(sink_listener));
    let db = mesh.workload_mut("db");
    db.ports = vec![
        ("echo".into(), echo_addr.port()),
        ("sink".into(), sink_addr.port()),
    ];
    mesh.policy(
        Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web"))),
    );
    let yaml = mesh.resources_yaml();
    let snapshot = load_str("bench.yaml", &yaml, &LoadOptions::default()).expect("config");
    let mut proxies = Vec::new();
    let mut listeners = Vec::new();
    for (ip, sa, workload, targets) in [
        (b, "db", "shop/db", vec![]),
        (a, "web", "shop/web", vec![echo_addr, sink_addr]),
    ] {
        let mut source = DevCaSource::new(&ca);
        source.namespace = "shop".into();
        source.service_account = sa.into();
        let identity = IdentityManager::start(&IdentitySource::DevCa(source))
            .await
            .expect("identity");
        let mut config = ProxyConfig {
            local: LocalWorkloads {
                addresses: vec![],
                workloads: vec![workload.into()],
            },
            ..ProxyConfig::default()
        };
        config.listen.hbone = SocketAddr::new(ip, 15008);
        config.listeners = targets
            .iter()
            .map(|t| ExplicitListener {
                listen: SocketAddr::new(ip, 0),
                target: t.to_string(),
                allow_remote: false,
                workload: None,
            })
            .collect();
        let state = ProxyState::build(
            &snapshot,
            &Default::default(),
            "cluster.local",
            1,
            local_predicate(&config),
        );
        let (_tx, rx) = watch::channel(Arc::new(state));
        let proxy = Proxy::start(
            &config,
            identity.handle(),
            rx,
            Sinks::default(),
            &PluginRegistry::builtin(),
        )
        .await
        .expect("proxy");
        listeners = proxy.addrs().listeners.clone();
        std::mem::forget(identity); // keep renewal running for the whole run
        std::mem::forget(_tx);
        proxies.push(proxy);
    }
    Setup {
        _mesh: mesh,
        _proxies: proxies,
        direct_echo: echo_addr,
        mesh_echo: listeners[0],
        direct_sink: sink_addr,
        mesh_sink: listeners[1],
    }
}

async fn bulk(addr: SocketAddr, chunk: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let mut sent = 0;
    while sent < BULK {
        s.write_all(chunk).await.expect("write");
        sent += chunk.len();
    }
    s.shutdown().await.expect("shutdown");
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
}

async fn roundtrip(s: &mut TcpStream) {
    s.write_all(&[7]).await.expect("write");
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.expect("read");
}

fn benches(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let setup = rt.block_on(setup());
    let chunk = vec![0xa5u8; 256 << 10];

    let mut group = c.benchmark_group("proxy/throughput-64MiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .throughput(Throughput::Bytes(BULK as u64));
    group.bench_function("direct-tcp", |b| {
        b.iter(|| rt.block_on(bulk(setup.direct_sink, &chunk)))
    });
    group.bench_function("meshd-to-meshd", |b| {
        b.iter(|| rt.block_on(bulk(setup.mesh_sink, &chunk)))
    });
    group.finish();

    let mut group = c.benchmark_group("proxy/roundtrip-1B");
    let mut direct = rt
        .block_on(TcpStream::connect(setup.direct_echo))
        .expect("connect");
    let mut mesh = rt
        .block_on(TcpStream::connect(setup.mesh_echo))
        .expect("connect");
    direct.set_nodelay(true).expect("nodelay");
    mesh.set_nodelay(true).expect("nodelay");
    group.bench_function("direct-tcp", |b| {
        b.iter(|| rt.block_on(roundtrip(black_box(&mut direct))))
    });
    group.bench_function("meshd-to-meshd", |b| {
        b.iter(|| rt.block_on(roundtrip(black_box(&mut mesh))))
    });
    group.finish();

    let mut group = c.benchmark_group("proxy/connect-and-roundtrip");
    for (name, addr) in [
        ("direct-tcp", setup.direct_echo),
        ("meshd-to-meshd-warm-pool", setup.mesh_echo),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut s = TcpStream::connect(addr).await.expect("connect");
                    s.set_nodelay(true).expect("nodelay");
                    roundtrip(&mut s).await;
                })
            })
        });
    }
    group.finish();
}

criterion_group!(proxy, benches);
criterion_main!(proxy);
