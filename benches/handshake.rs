//! Cost of a full HBONE mutual-TLS handshake on loopback, against a plain TCP baseline.
//!
//! Both benchmarks in the `handshake` group do the same work apart from TLS: connect to a
//! loopback server, send one byte, read it back, close. The TLS one runs meshd's real configs
//! (TLS 1.3, aws-lc-rs, P-256 SVIDs from the dev CA, SPIFFE verification both ways, resumption
//! off, so every iteration is a full handshake). The ratio of the two means is printed at the
//! end; it is what to compare across machines, not the absolute times.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use meshd_identity::{DevCa, IdentityHandle, SpiffeId, tls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// SVID lifetime for the bench: long enough to outlast any run.
const TTL: Duration = Duration::from_secs(24 * 3600);

/// Total time and iterations per benchmark, so the ratio can be printed after the group.
static TOTALS: Mutex<[(Duration, u64); 2]> = Mutex::new([(Duration::ZERO, 0); 2]);
const BASELINE: usize = 0;
const MTLS: usize = 1;

fn record(slot: usize, elapsed: Duration, iters: u64) {
    if let Ok(mut totals) = TOTALS.lock() {
        totals[slot].0 += elapsed;
        totals[slot].1 += iters;
    }
}

fn mean(slot: usize) -> Option<Duration> {
    let totals = TOTALS.lock().ok()?;
    let (total, iters) = totals[slot];
    u32::try_from(iters)
        .ok()
        .filter(|n| *n > 0)
        .map(|n| total / n)
}

/// Echo server: accept, read one byte, write it back.
async fn tcp_echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let mut byte = [0u8; 1];
                if tcp.read_exact(&mut byte).await.is_ok() {
                    let _ = tcp.write_all(&byte).await;
                }
            });
        }
    });
    addr
}

/// The same echo behind meshd's mTLS server config.
async fn mtls_echo_server(server: Arc<tls::rustls::ServerConfig>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(mut stream) = tls::accept(server, tcp).await else {
                    return;
                };
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).await.is_ok() {
                    let _ = stream.write_all(&byte).await;
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    addr
}

fn bench_handshake(c: &mut Criterion) {
    let rt = Runtime::new().expect("tokio runtime");

    let ca = DevCa::generate("cluster.local").expect("dev CA");
    let server_set = ca
        .issue("bench", "server", TTL)
        .and_then(|svid| svid.credential_set())
        .expect("server SVID");
    let client_set = ca
        .issue("bench", "client", TTL)
        .and_then(|svid| svid.credential_set())
        .expect("client SVID");
    let server_id = SpiffeId::istio("cluster.local", "bench", "server").expect("id");
    let server_config =
        tls::server_config(&IdentityHandle::fixed(server_set)).expect("server config");
    let client_config =
        tls::client_config(&IdentityHandle::fixed(client_set), &server_id).expect("client config");

    let (tcp_addr, tls_addr) = rt.block_on(async {
        (
            tcp_echo_server().await,
            mtls_echo_server(server_config).await,
        )
    });

    let mut group = c.benchmark_group("handshake");
    // A full handshake is ~10x a TCP connect; 8 s lets 100 samples complete on a small machine.
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("tcp_connect_echo_baseline", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut tcp = TcpStream::connect(tcp_addr).await.expect("connect");
                    tcp.set_nodelay(true).expect("nodelay");
                    tcp.write_all(b"x").await.expect("write");
                    let mut byte = [0u8; 1];
                    tcp.read_exact(&mut byte).await.expect("read");
                    black_box(byte);
                }
                let elapsed = start.elapsed();
                record(BASELINE, elapsed, iters);
                elapsed
            })
        })
    });
    group.bench_function("mtls_full_handshake_echo", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
                    tcp.set_nodelay(true).expect("nodelay");
                    let mut stream = tls::connect(client_config.clone(), tcp)
                        .await
                        .expect("mTLS handshake");
                    stream.write_all(b"x").await.expect("write");
                    let mut byte = [0u8; 1];
                    stream.read_exact(&mut byte).await.expect("read");
                    black_box(byte);
                }
                let elapsed = start.elapsed();
                record(MTLS, elapsed, iters);
                elapsed
            })
        })
    });
    group.finish();

    if let (Some(base), Some(mtls)) = (mean(BASELINE), mean(MTLS)) {
        println!(
            "handshake: mTLS {:?} / TCP baseline {:?} per connection = {:.1}x",
            mtls,
            base,
            mtls.as_secs_f64() / base.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench_handshake);
criterion_main!(benches);
