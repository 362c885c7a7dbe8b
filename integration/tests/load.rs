//! Load between two machines made of network namespaces (10.216.0.0/24): 10 000 concurrent
//! connections, captured by the rules `meshd redirect install` writes and tunnelled over HBONE,
//! every byte checked end to end (SHA-256 of what was sent against what came back), no errors
//! allowed; meshd's RSS per held connection on each side is printed. The soak runs steady
//! connection churn and prints the slopes of RSS, descriptors and tasks.
//!
//! Ignored by default (minutes, ~10 000 descriptors per process). Run them with a release build,
//! as root: `cargo test --release -p meshd-integration --test load -- --ignored --nocapture --test-threads 1`
//! (`ten_thousand` or `soak` after `--` picks one; `MESHD_SOAK_SECONDS` shortens the soak).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_integration::Meshd;
use meshd_integration::mesh::{Mesh, Node, Port};
use meshd_integration::netns::{install_capture, run_in};
use meshd_integration::resources::{Policy, Rule, Workload, principal};
use meshd_redirect::netns::{Netns, VethEnd, veth_pair};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const LOCAL: &str = "10.216.0.1";
const PEER: &str = "10.216.0.2";
const ECHO_PORT: u16 = 7000;
/// Shortens the soak (seconds).
const SOAK_SECONDS_ENV: &str = "MESHD_SOAK_SECONDS";
const CONNECTIONS: usize = 10_000;
/// Bytes each connection sends (and gets back) per round.
const CHUNK: usize = 16 * 1024;
/// Connections being opened at once: enough to load meshd, few enough not to overflow the
/// listen backlogs (overflow only delays, by SYN retransmits, but muddles the timing).
const IN_FLIGHT: usize = 256;

fn machines() -> (Netns, Netns) {
    let local = Netns::new("load-l");
    let peer = Netns::new("load-p");
    let local_addr = [format!("{LOCAL}/24").parse().unwrap()];
    let peer_addr = [format!("{PEER}/24").parse().unwrap()];
    veth_pair(
        VethEnd {
            ns: &local,
            name: "veth0",
            addrs: &local_addr,
        },
        VethEnd {
            ns: &peer,
            name: "veth0",
            addrs: &peer_addr,
        },
    )
    .unwrap();
    // The soak opens and closes connections to one destination for ten minutes, faster than
    // the default port range (28 000 ports, each in TIME_WAIT for 60 s) allows: widen it and
    // let TIME_WAIT ports be reused, in each namespace, as benches/e2e does. Otherwise the
    // test client runs out of ports ("Cannot assign requested address"), not meshd.
    for ns in [&local, &peer] {
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65000").unwrap();
            std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1").unwrap();
        });
    }
    (local, peer)
}

/// Web on the local machine, db on the peer, db allowed to web.
fn mesh() -> Mesh {
    let mut mesh = Mesh::in_namespaces();
    let (local, peer) = (LOCAL.parse().unwrap(), PEER.parse().unwrap());
    mesh.workload(Workload::new("web", local).label("app", "web"));
    mesh.workload(Workload::new("db", peer).label("app", "db"));
    mesh.policy(
        Policy::allow("db-allow-web")
            .selector("app", "db")
            .rule(Rule::from(principal("web"))),
    );
    mesh.shared_dir = true;
    mesh.node(Node::new("b", peer, "db"));
    mesh.node(Node::new("a", local, "web"))
        .listen_on(Port::Outbound, "0.0.0.0:15001")
        .setting("redirect", "{}");
    mesh.write();
    mesh
}

/// Set in the echo server's process: this test binary run again inside the peer namespace, so
/// the server's 10 000 sockets count against its own open-file limit, not this process's.
const ECHO_ENV: &str = "MESHD_LOAD_ECHO";

/// The echo server process, killed on drop.
struct EchoProcess(std::process::Child);

impl Drop for EchoProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the echo server inside `peer` and waits until it listens.
fn echo_server(peer: &Netns) -> EchoProcess {
    let child = peer
        .command(std::env::current_exe().unwrap())
        .args(["echo_process", "--exact", "--ignored", "--nocapture"])
        .env(ECHO_ENV, format!("{PEER}:{ECHO_PORT}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let echo = EchoProcess(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = peer
            .command("ss")
            .args(["-Htln", &format!("sport = :{ECHO_PORT}")])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            return echo;
        }
        assert!(Instant::now() < deadline, "the echo server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// Not a test: the body of the echo server process the load tests start (it does nothing
// unless MESHD_LOAD_ECHO names the address to serve).
#[test]
#[ignore = "helper process of the load tests"]
fn echo_process() {
    let Ok(addr) = std::env::var(ECHO_ENV) else {
        return;
    };
    let addr: SocketAddr = addr.parse().unwrap();
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&addr.into()).unwrap();
    // A deep backlog: overflow only delays (SYN retransmits) but muddles the timing.
    socket.listen(4096).unwrap();
    socket.set_nonblocking(true).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(socket.into()).unwrap();
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
}

/// Deterministic, distinct bytes for each connection and round (xorshift).
fn payload(id: usize, round: u64) -> Vec<u8> {
    let mut x = (id as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round;
    (0..CHUNK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends one round and checks that the same bytes come back (by hash).
async fn exchange(stream: &mut TcpStream, id: usize, round: u64) -> Result<(), String> {
    let data = payload(id, round);
    let sent = Sha256::digest(&data);
    let (mut read, mut write) = stream.split();
    let mut back = vec![0u8; CHUNK];
    let (wrote, got) = tokio::join!(write.write_all(&data), read.read_exact(&mut back));
    wrote.map_err(|e| format!("connection {id} round {round}: write: {e}"))?;
    got.map_err(|e| format!("connection {id} round {round}: read: {e}"))?;
    if Sha256::digest(&back) != sent {
        return Err(format!("connection {id} round {round}: bytes differ"));
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn established(ns: &Netns, filter: &str) -> usize {
    let out = ns
        .command("ss")
        .args(["-Htn", "state", "established", filter])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn run(ns: &Netns, config: &std::path::Path) -> Command {
    let mut command = run_in(ns, config);
    // meshd reads `MESHD_*` variables as configuration keys: the soak's own setting is not one,
    // and meshd would refuse to start on it.
    command.env_remove(SOAK_SECONDS_ENV);
    command
}

/// Opens every connection (at most IN_FLIGHT opening at once) and runs its first round.
async fn open_all(to: SocketAddr) -> (Vec<(usize, TcpStream)>, Vec<String>) {
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut tasks = JoinSet::new();
    for id in 0..CONNECTIONS {
        let gate = gate.clone();
        tasks.spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            let mut stream = TcpStream::connect(to)
                .await
                .map_err(|e| format!("connection {id}: connect: {e}"))?;
            exchange(&mut stream, id, 1).await?;
            Ok::<_, String>((id, stream))
        });
    }
    let (mut held, mut errors) = (Vec::new(), Vec::new());
    while let Some(done) = tasks.join_next().await {
        match done.unwrap() {
            Ok(conn) => held.push(conn),
            Err(e) => errors.push(e),
        }
    }
    (held, errors)
}

/// A second round on every held connection at once, then a clean close in both directions.
async fn finish_all(held: Vec<(usize, TcpStream)>) -> Vec<String> {
    let mut tasks = JoinSet::new();
    for (id, mut stream) in held {
        tasks.spawn(async move {
            exchange(&mut stream, id, 2).await?;
            stream
                .shutdown()
                .await
                .map_err(|e| format!("connection {id}: shutdown: {e}"))?;
            let mut rest = Vec::new();
            stream
                .read_to_end(&mut rest)
                .await
                .map_err(|e| format!("connection {id}: close: {e}"))?;
            if rest.is_empty() {
                Ok(())
            } else {
                Err(format!("connection {id}: {} unexpected bytes", rest.len()))
            }
        });
    }
    let mut errors = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.unwrap() {
            errors.push(e);
        }
    }
    errors
}

/// Two machines, meshd on each, the client machine's traffic captured, the echo server on the
/// peer. Fields drop in declaration order: the meshd processes first, the namespaces last.
struct Rig {
    a: Meshd,
    b: Meshd,
    _echo: EchoProcess,
    _mesh: Mesh,
    local: Netns,
    peer: Netns,
}

fn rig() -> Rig {
    let (local, peer) = machines();
    let mesh = mesh();
    let _echo = echo_server(&peer);
    let (b_config, a_config) = (mesh.config("b"), mesh.config("a"));
    let b = Meshd::spawn(run(&peer, &b_config));
    let a = Meshd::spawn(run(&local, &a_config));
    install_capture(&local, &a_config);
    Rig {
        a,
        b,
        _echo,
        _mesh: mesh,
        local,
        peer,
    }
}

#[test]
#[ignore = "load: minutes and ~20 000 descriptors per side; run with --ignored"]
fn ten_thousand_concurrent_tunnelled_connections() {
    // 10 000 client sockets here (the echo server has its own process); meshd raises its own.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let rig = rig();
    let (local, peer, a, b) = (&rig.local, &rig.peer, &rig.a, &rig.b);
    for (name, m) in [("client", a), ("server", b)] {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", m.pid())).unwrap();
        let line = limits.lines().find(|l| l.starts_with("Max open files"));
        println!("{name} meshd: {}", line.unwrap_or_default());
    }

    let to: SocketAddr = format!("{PEER}:{ECHO_PORT}").parse().unwrap();
    let (a_idle, b_idle) = (rss_kib(a.pid()), rss_kib(b.pid()));
    let (a_pid, b_pid) = (a.pid(), b.pid());
    // Both rounds on one runtime: the sockets belong to the runtime that opened them.
    let (opened_in, a_held, b_held, hbone, errors) = local.run_async(|| async {
        let started = Instant::now();
        let (held, errors) = open_all(to).await;
        let opened_in = started.elapsed();
        assert!(
            errors.is_empty(),
            "{} errors, first: {:?}",
            errors.len(),
            errors.first()
        );
        assert_eq!(held.len(), CONNECTIONS);
        // The connections are meshd's: captured on A (its side of the redirect) and delivered
        // by B's own sockets to the echo server.
        assert_eq!(established(local, "sport = :15001"), CONNECTIONS);
        assert_eq!(
            established(peer, &format!("dport = :{ECHO_PORT}")),
            CONNECTIONS
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (a_held, b_held) = (rss_kib(a_pid), rss_kib(b_pid));
        let hbone = established(local, &format!("dst {PEER}:15008"));
        let errors = finish_all(held).await;
        (opened_in, a_held, b_held, hbone, errors)
    });
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    std::thread::sleep(Duration::from_secs(10));
    let (a_after, b_after) = (rss_kib(a.pid()), rss_kib(b.pid()));

    let per =
        |held: u64, idle: u64| (held.saturating_sub(idle) as f64) * 1024.0 / CONNECTIONS as f64;
    println!(
        "load: {CONNECTIONS} concurrent tunnelled connections, {} KiB each way per connection, \
         0 errors; opened (with first round) in {:.1} s over {hbone} HBONE connection(s)",
        2 * CHUNK / 1024,
        opened_in.as_secs_f64()
    );
    println!(
        "client meshd RSS: idle {a_idle} KiB, held {a_held} KiB ({:.0} B per connection), \
         10 s after close {a_after} KiB",
        per(a_held, a_idle)
    );
    println!(
        "server meshd RSS: idle {b_idle} KiB, held {b_held} KiB ({:.0} B per connection), \
         10 s after close {b_after} KiB",
        per(b_held, b_idle)
    );
}

/// Seconds the soak runs ([`SOAK_SECONDS_ENV`], default ten minutes).
fn soak_seconds() -> u64 {
    std::env::var(SOAK_SECONDS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600)
}

/// One reading of a meshd process: RSS (KiB), open descriptors, tokio tasks alive.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    rss: f64,
    fds: f64,
    tasks: f64,
}

fn sample(ns: &Netns, meshd: &Meshd, metrics: SocketAddr, at: f64) -> Sample {
    let fds = std::fs::read_dir(format!("/proc/{}/fd", meshd.pid()))
        .unwrap()
        .count();
    let (_, body) = ns
        .run(|| meshd_integration::http(metrics, "GET", "/metrics"))
        .unwrap();
    let tasks = body
        .lines()
        .find_map(|l| l.strip_prefix("tokio_num_alive_tasks "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    Sample {
        at,
        rss: rss_kib(meshd.pid()) as f64,
        fds: fds as f64,
        tasks,
    }
}

/// Least-squares slope of `value` over time, per minute.
fn slope_per_minute(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.at).sum::<f64>() / n;
    let mean_v = samples.iter().map(&value).sum::<f64>() / n;
    let num: f64 = samples
        .iter()
        .map(|s| (s.at - mean_t) * (value(s) - mean_v))
        .sum();
    let den: f64 = samples.iter().map(|s| (s.at - mean_t).powi(2)).sum();
    num / den * 60.0
}

/// Connections opened and closed back to back by `workers` clients until `until`; each
/// carries one hashed round. Returns (connections, errors).
async fn churn(to: SocketAddr, workers: usize, until: Instant) -> (usize, Vec<String>) {
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        tasks.spawn(async move {
            let (mut done, mut errors) = (0, Vec::new());
            while Instant::now() < until {
                let id = worker * 1_000_000 + done;
                let result = async {
                    let mut stream = TcpStream::connect(to)
                        .await
                        .map_err(|e| format!("connection {id}: connect: {e}"))?;
                    exchange(&mut stream, id, 1).await
                }
                .await;
                if let Err(e) = result {
                    errors.push(e);
                }
                done += 1;
            }
            (done, errors)
        });
    }
    let (mut total, mut errors) = (0, Vec::new());
    while let Some(done) = tasks.join_next().await {
        let (n, e) = done.unwrap();
        total += n;
        errors.extend(e);
    }
    (total, errors)
}

// Steady connection churn for MESHD_SOAK_SECONDS (default 600): no errors, and descriptors and
// tasks back to where they started once it stops; the slopes of RSS, descriptors and tasks
// during the churn are printed (the first minute, warm-up, is left out of them).
#[test]
#[ignore = "soak: ten minutes; run with --ignored"]
fn steady_churn_soak() {
    const WORKERS: usize = 16;
    let rig = rig();
    let (local, peer, a, b) = (&rig.local, &rig.peer, &rig.a, &rig.b);
    let to: SocketAddr = format!("{PEER}:{ECHO_PORT}").parse().unwrap();
    let a_metrics: SocketAddr = format!("{LOCAL}:15020").parse().unwrap();
    let b_metrics: SocketAddr = format!("{PEER}:15020").parse().unwrap();

    let seconds = soak_seconds();
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let first = (
        sample(local, a, a_metrics, 0.0),
        sample(peer, b, b_metrics, 0.0),
    );
    let load = std::thread::scope(|scope| {
        let load = scope.spawn(|| local.run_async(|| churn(to, WORKERS, until)));
        let mut samples = Vec::new();
        while Instant::now() < until {
            std::thread::sleep(Duration::from_secs(10));
            let at = start.elapsed().as_secs_f64();
            samples.push((
                sample(local, a, a_metrics, at),
                sample(peer, b, b_metrics, at),
            ));
        }
        (load.join().unwrap(), samples)
    });
    let ((connections, errors), samples) = load;
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    std::thread::sleep(Duration::from_secs(5));
    let last = (
        sample(local, a, a_metrics, 0.0),
        sample(peer, b, b_metrics, 0.0),
    );
    println!("soak: {seconds} s, {WORKERS} clients, {connections} connections, 0 errors");
    for (name, begin, end, pick) in [
        ("client", first.0, last.0, 0),
        ("server", first.1, last.1, 1),
    ] {
        let during: Vec<Sample> = samples
            .iter()
            .map(|s| if pick == 0 { s.0 } else { s.1 })
            .filter(|s| s.at >= 60.0)
            .collect();
        if during.len() >= 2 {
            println!(
                "{name} meshd slopes after the first minute: RSS {:+.1} KiB/min, descriptors \
                 {:+.2}/min, tasks {:+.2}/min",
                slope_per_minute(&during, |s| s.rss),
                slope_per_minute(&during, |s| s.fds),
                slope_per_minute(&during, |s| s.tasks)
            );
        }
        println!(
            "{name} meshd before → after: RSS {} → {} KiB, descriptors {} → {}, tasks {} → {}",
            begin.rss, end.rss, begin.fds, end.fds, begin.tasks, end.tasks
        );
        // Pooled HBONE connections may stay open on the client side (and their tasks): a few.
        assert!(
            end.fds <= begin.fds + 8.0,
            "{name}: descriptors grew: {begin:?} → {end:?}"
        );
        assert!(
            end.tasks <= begin.tasks + 16.0,
            "{name}: tasks grew: {begin:?} → {end:?}"
        );
    }
}
