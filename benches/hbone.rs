//! HBONE transport cost on loopback, each group against plain TCP and plain mTLS baselines
//! doing the same work in the same run.
//!
//! - `bulk_1_stream`: 64 MiB per iteration through one connection/stream, acknowledged by the
//!   receiver (throughput). Also HBONE with 1 MiB and 16 MiB stream windows, the measurement
//!   behind the 4 MiB default.
//! - `bulk_16_streams`: the same 64 MiB split over 16 concurrent connections (TCP, TLS) or 16
//!   streams on one pooled HBONE connection.
//! - `open_stream`: open, one-byte round trip, close: TCP connect; full mTLS handshake; an
//!   HBONE stream on a warm pool; an HBONE stream on a cold pool (TCP + TLS + HTTP/2 + CONNECT).
//! - `rr_1k`: 1 KiB request, 1 KiB response, on one established connection/stream.
//!
//! Ratios against plain TLS are printed at the end; compare those across machines, not the
//! absolute figures.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use meshd_hbone::{
    Client, ClientSettings, Decision, Http2Settings, Peer, Server, ServerSettings, TunnelStream,
};
use meshd_identity::{DevCa, IdentityHandle, SpiffeId, tls};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(24 * 3600);
const BULK: usize = 64 << 20;
const CHUNK: usize = 256 << 10;
const STREAMS: usize = 16;

/// Total time and iterations, per (group, bench), for the ratio summary.
type Totals = BTreeMap<(&'static str, &'static str), (Duration, u64)>;

/// Mean time per iteration, per (group, bench), for the ratio summary.
static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

fn record(group: &'static str, bench: &'static str, elapsed: Duration, iters: u64) {
    if let Ok(mut totals) = TOTALS.lock() {
        let e = totals.entry((group, bench)).or_default();
        e.0 += elapsed;
        e.1 += iters;
    }
}

/// What every server side does with a connection or stream.
#[derive(Clone, Copy)]
enum Role {
    /// Count bytes; after every `n` bytes, write a one-byte acknowledgement.
    Sink(usize),
    /// Echo everything.
    Echo,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, role: Role) {
    let mut buf = vec![0u8; CHUNK];
    let mut count = 0usize;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match role {
            Role::Sink(every) => {
                count += n;
                while count >= every {
                    count -= every;
                    if s.write_all(&[1]).await.is_err() {
                        return;
                    }
                }
            }
            Role::Echo => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

struct Fixture {
    client: IdentityHandle,
    server: IdentityHandle,
    server_id: SpiffeId,
}

impl Fixture {
    fn new() -> Fixture {
        let ca = DevCa::generate("cluster.local").expect("dev ca");
        let s = ca.issue("server-ns", "server-sa", TTL).expect("svid");
        let c = ca.issue("client-ns", "client-sa", TTL).expect("svid");
        Fixture {
            server_id: s.id.clone(),
            server: IdentityHandle::fixed(s.credential_set().expect("set")),
            client: IdentityHandle::fixed(c.credential_set().expect("set")),
        }
    }

    async fn tcp_server(&self, role: Role) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, role));
            }
        });
        addr
    }

    async fn tls_server(&self, role: Role) -> SocketAddr {
        let cfg = tls::server_config(&self.server).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    if let Ok(s) = tls::accept(cfg, tcp).await {
                        serve(s, role).await;
                    }
                });
            }
        });
        addr
    }

    async fn hbone_server(&self, role: Role, http2: Http2Settings) -> SocketAddr {
        let svc = tower::service_fn(move |_req| async move {
            Ok::<_, Infallible>(Decision::accept(move |s: TunnelStream| serve(s, role)))
        });
        let settings = ServerSettings {
            http2,
            ..ServerSettings::default()
        };
        let server = Server::new(&self.server, settings, meshd_hbone::Decide(svc)).expect("server");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let handle = server.spawn(listener).expect("spawn");
        let addr = handle.local_addr();
        // The bench process exits when done; keep the server for its lifetime.
        std::mem::forget(handle);
        addr
    }

    async fn tcp(&self, addr: SocketAddr) -> TcpStream {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let _ = tcp.set_nodelay(true);
        tcp
    }

    async fn tls(&self, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
        let cfg = tls::client_config(&self.client, &self.server_id).expect("client config");
        tls::connect(cfg, self.tcp(addr).await).await.expect("tls")
    }

    fn hbone_client(&self, http2: Http2Settings) -> Client {
        let settings = ClientSettings {
            http2,
            ..ClientSettings::default()
        };
        Client::new(self.client.clone(), settings).expect("client")
    }

    async fn hbone(&self, client: &Client, addr: SocketAddr) -> TunnelStream {
        let peer = Peer::new(self.server_id.clone(), addr);
        client
            .connect(&peer, addr, Default::default())
            .await
            .expect("tunnel")
    }
}

/// Sends `n` bytes and waits for the receiver's acknowledgement.
async fn push<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, n: usize, chunk: &[u8]) {
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        s.write_all(&chunk[..k]).await.expect("write");
        left -= k;
    }
    s.flush().await.expect("flush");
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).await.expect("ack");
}

async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, msg: &[u8], buf: &mut [u8]) {
    s.write_all(msg).await.expect("write");
    s.flush().await.expect("flush");
    s.read_exact(&mut buf[..msg.len()]).await.expect("read");
}

fn http2_with_window(stream: u32) -> Http2Settings {
    Http2Settings {
        stream_window: stream,
        connection_window: stream.saturating_mul(4).min(i32::MAX as u32),
        max_send_buffer: stream as usize,
        ..Http2Settings::client_default()
    }
}

fn bulk_1_stream(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    const G: &str = "bulk_1_stream";
    let mut g = c.benchmark_group(G);
    g.throughput(Throughput::Bytes(BULK as u64));
    let chunk = vec![0x5au8; CHUNK];
    let role = Role::Sink(BULK);

    let addr = rt.block_on(fx.tcp_server(role));
    let mut s = rt.block_on(fx.tcp(addr));
    g.bench_function("tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    push(&mut s, BULK, &chunk).await;
                }
                let e = start.elapsed();
                record(G, "tcp", e, iters);
                e
            })
        })
    });

    let addr = rt.block_on(fx.tls_server(role));
    let mut s = rt.block_on(fx.tls(addr));
    g.bench_function("tls", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    push(&mut s, BULK, &chunk).await;
                }
                let e = start.elapsed();
                record(G, "tls", e, iters);
                e
            })
        })
    });

    for (name, window) in [
        ("hbone", meshd_hbone::DEFAULT_STREAM_WINDOW),
        ("hbone_window_1MiB", 1 << 20),
        ("hbone_window_16MiB", 16 << 20),
    ] {
        let server_h2 = Http2Settings {
            max_header_list_size: meshd_hbone::DEFAULT_SERVER_MAX_HEADER_LIST,
            ..http2_with_window(window)
        };
        let server_h2 = if window == meshd_hbone::DEFAULT_STREAM_WINDOW {
            Http2Settings::server_default()
        } else {
            server_h2
        };
        let client_h2 = if window == meshd_hbone::DEFAULT_STREAM_WINDOW {
            Http2Settings::client_default()
        } else {
            http2_with_window(window)
        };
        let addr = rt.block_on(fx.hbone_server(role, server_h2));
        let client = fx.hbone_client(client_h2);
        let mut s = rt.block_on(fx.hbone(&client, addr));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        push(&mut s, BULK, &chunk).await;
                    }
                    let e = start.elapsed();
                    record(G, name, e, iters);
                    e
                })
            })
        });
    }
    g.finish();
}

/// Runs `push` on every stream concurrently, each for its share of `BULK`.
async fn push_all<S>(streams: Vec<S>) -> Vec<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; CHUNK];
                push(&mut s, BULK / STREAMS, &chunk).await;
                s
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("task"));
    }
    out
}

fn bulk_16_streams(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    const G: &str = "bulk_16_streams";
    let mut g = c.benchmark_group(G);
    g.throughput(Throughput::Bytes(BULK as u64));
    let role = Role::Sink(BULK / STREAMS);

    macro_rules! bench {
        ($name:expr, $streams:expr) => {{
            let mut streams = Some($streams);
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            let s = streams.take().expect("streams");
                            streams = Some(push_all(s).await);
                        }
                        let e = start.elapsed();
                        record(G, $name, e, iters);
                        e
                    })
                })
            });
        }};
    }

    let addr = rt.block_on(fx.tcp_server(role));
    let tcp = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..STREAMS {
            v.push(fx.tcp(addr).await);
        }
        v
    });
    bench!("tcp", tcp);

    let addr = rt.block_on(fx.tls_server(role));
    let tls = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..STREAMS {
            v.push(fx.tls(addr).await);
        }
        v
    });
    bench!("tls", tls);

    let addr = rt.block_on(fx.hbone_server(role, Http2Settings::server_default()));
    let client = fx.hbone_client(Http2Settings::client_default());
    let hbone = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..STREAMS {
            v.push(fx.hbone(&client, addr).await);
        }
        v
    });
    assert_eq!(
        client.connections_opened(),
        1,
        "16 streams share one connection"
    );
    bench!("hbone", hbone);
    g.finish();
}

fn open_stream(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    const G: &str = "open_stream";
    let mut g = c.benchmark_group(G);
    let msg = [7u8; 1];

    macro_rules! bench {
        ($name:expr, $open:expr) => {
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut buf = [0u8; 1];
                        let start = Instant::now();
                        for _ in 0..iters {
                            let mut s = $open.await;
                            round_trip(&mut s, &msg, &mut buf).await;
                            black_box(&buf);
                        }
                        let e = start.elapsed();
                        record(G, $name, e, iters);
                        e
                    })
                })
            });
        };
    }

    let addr = rt.block_on(fx.tcp_server(Role::Echo));
    bench!("tcp", fx.tcp(addr));
    let addr = rt.block_on(fx.tls_server(Role::Echo));
    bench!("tls", fx.tls(addr));
    let addr = rt.block_on(fx.hbone_server(Role::Echo, Http2Settings::server_default()));
    let warm = fx.hbone_client(Http2Settings::client_default());
    drop(rt.block_on(fx.hbone(&warm, addr)));
    bench!("hbone_warm_pool", fx.hbone(&warm, addr));
    bench!("hbone_cold_pool", async {
        // A fresh client per iteration: TCP + TLS + HTTP/2 + PING + CONNECT.
        let cold = fx.hbone_client(Http2Settings::client_default());
        fx.hbone(&cold, addr).await
    });
    g.finish();
}

fn rr_1k(c: &mut Criterion, rt: &Runtime, fx: &Fixture) {
    const G: &str = "rr_1k";
    let mut g = c.benchmark_group(G);
    g.throughput(Throughput::Elements(1));
    let msg = [3u8; 1024];

    macro_rules! bench {
        ($name:expr, $stream:expr) => {{
            let mut s = $stream;
            g.bench_function($name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let mut buf = [0u8; 1024];
                        let start = Instant::now();
                        for _ in 0..iters {
                            round_trip(&mut s, &msg, &mut buf).await;
                        }
                        let e = start.elapsed();
                        record(G, $name, e, iters);
                        e
                    })
                })
            });
        }};
    }

    let addr = rt.block_on(fx.tcp_server(Role::Echo));
    bench!("tcp", rt.block_on(fx.tcp(addr)));
    let addr = rt.block_on(fx.tls_server(Role::Echo));
    bench!("tls", rt.block_on(fx.tls(addr)));
    let addr = rt.block_on(fx.hbone_server(Role::Echo, Http2Settings::server_default()));
    let client = fx.hbone_client(Http2Settings::client_default());
    bench!("hbone", rt.block_on(fx.hbone(&client, addr)));
    g.finish();
}

/// Prints each bench's mean and its ratio to the group's TLS (and TCP) baseline.
fn summary(_c: &mut Criterion) {
    let Ok(totals) = TOTALS.lock() else { return };
    let mean = |g: &'static str, b: &'static str| {
        totals
            .get(&(g, b))
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| t.as_secs_f64() / *n as f64)
    };
    println!("\nHBONE summary (time per iteration; ratio = baseline time / this time):");
    for ((g, b), _) in totals.iter() {
        let Some(m) = mean(g, b) else { continue };
        let vs = |base: &'static str| {
            mean(g, base)
                .map(|x| format!("{:.2}", x / m))
                .unwrap_or_else(|| "-".into())
        };
        let rate = if g.starts_with("bulk") {
            format!("{:>9.1} MiB/s", BULK as f64 / m / (1 << 20) as f64)
        } else {
            format!("{:>9.1} µs/op ", m * 1e6)
        };
        println!(
            "  {g:<16} {b:<20} {rate}   vs tls {:>5}   vs tcp {:>5}",
            vs("tls"),
            vs("tcp")
        );
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let fx = Fixture::new();
    bulk_1_stream(c, &rt, &fx);
    bulk_16_streams(c, &rt, &fx);
    open_stream(c, &rt, &fx);
    rr_1k(c, &rt, &fx);
}

criterion_group! {
    name = hbone;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches, summary
}
criterion_main!(hbone);
