//! A slowloris on the metrics port while tunnels run: meshd's operator endpoints are bounded
//! (header timeout, connection cap) and on a thread of their own, so the flood's connections
//! are cut and the tunnels keep their latency.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshd_integration::echo_roundtrip;

use super::Nodes;

/// Slowloris connections kept open at once: several times the per-endpoint cap (32).
const FLOOD: usize = 160;
/// Tunnels timed before and during the flood.
const SAMPLES: usize = 40;

/// The median time of a new tunnel through A's listener 16001 and one 64-byte round trip.
fn tunnel_latency(mesh: &Nodes) -> Duration {
    let mut times: Vec<Duration> = (0..SAMPLES)
        .map(|_| {
            let started = Instant::now();
            let mut stream = TcpStream::connect((mesh.a, 16001)).unwrap();
            let payload = [5u8; 64];
            assert_eq!(
                echo_roundtrip(&mut stream, &payload).as_deref(),
                Some(&payload[..]),
                "the tunnel failed"
            );
            started.elapsed()
        })
        .collect();
    times.sort();
    times[SAMPLES / 2]
}

/// What the flood saw: how many connections it opened, and how long the longest-lived lasted.
#[derive(Default)]
struct Seen {
    opened: AtomicUsize,
    longest_ms: AtomicUsize,
}

/// Keeps [`FLOOD`] connections to `target`, each sending an endless header one byte per
/// 100 ms, reopening any the server closes, until `stop`.
fn slowloris(
    target: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Seen>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let open = |seen: &Seen| {
            seen.opened.fetch_add(1, Ordering::Relaxed);
            let mut stream = TcpStream::connect(target).ok()?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                .ok()?;
            Some((stream, Instant::now()))
        };
        let mut conns: Vec<Option<(TcpStream, Instant)>> =
            (0..FLOOD).map(|_| open(&seen)).collect();
        while !stop.load(Ordering::Relaxed) {
            for conn in conns.iter_mut() {
                let alive = match conn {
                    Some((stream, _)) => stream.write_all(b"a").is_ok(),
                    None => false,
                };
                if !alive {
                    if let Some((_, since)) = conn {
                        let lived = since.elapsed().as_millis() as usize;
                        seen.longest_ms.fetch_max(lived, Ordering::Relaxed);
                    }
                    *conn = open(&seen);
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Connections still open at the end count as living that long.
        for (_, since) in conns.into_iter().flatten() {
            let lived = since.elapsed().as_millis() as usize;
            seen.longest_ms.fetch_max(lived, Ordering::Relaxed);
        }
    })
}

#[test]
fn a_slowloris_on_the_metrics_port_is_cut_and_tunnels_keep_their_latency() {
    let mesh = Nodes::new();
    let _b = mesh.start("b", false);
    let _a = mesh.start("a", false);
    // Warm up (certificates, pool), then the baseline.
    tunnel_latency(&mesh);
    let baseline = tunnel_latency(&mesh);

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let flood = slowloris(SocketAddr::new(mesh.b, 15020), stop.clone(), seen.clone());
    std::thread::sleep(Duration::from_millis(500));
    let during = tunnel_latency(&mesh);
    // Long enough for the 5 s header timeout to cut the first connections, twice over.
    std::thread::sleep(Duration::from_secs(11));
    stop.store(true, Ordering::Relaxed);
    flood.join().unwrap();

    eprintln!(
        "tunnel median: {baseline:?} alone, {during:?} under the flood; flood opened {} connections, longest lived {} ms",
        seen.opened.load(Ordering::Relaxed),
        seen.longest_ms.load(Ordering::Relaxed)
    );
    // A generous bound: the same machine, minutes apart, varies by a few times, not tenfold.
    assert!(
        during <= baseline * 10 + Duration::from_millis(50),
        "tunnels slowed from {baseline:?} to {during:?}"
    );
    // No slowloris connection outlived the header timeout by much: each was cut, and the
    // ones past the cap were refused and reopened.
    let longest = Duration::from_millis(seen.longest_ms.load(Ordering::Relaxed) as u64);
    assert!(
        longest < meshd_admin::HEADER_READ_TIMEOUT + Duration::from_secs(3),
        "a slowloris connection lived {longest:?}"
    );
    assert!(
        seen.opened.load(Ordering::Relaxed) > FLOOD,
        "none was ever closed"
    );
    // The metrics endpoint answers again once the flood stops.
    super::scrape(mesh.b);
}
