//! Faults in the data path across three machines (see `machines.rs`): each test names what
//! must hold — nothing hangs, the failing connection ends with a clear error, and the other
//! connections carry on with every byte intact (SHA-256 of the whole payload).
//!
//! Machines: `sleep` 10.215.0.1, `httpbin` 10.215.0.2, `notsleep` 10.215.0.3; no policies, so
//! every connection is allowed unless a fault stops it.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use meshd_integration::machines::{Cluster, Machine, SEED_CAST};
use meshd_integration::traffic::{echo_transfer, payload, sha256};
use meshd_integration::{echo_on, echo_roundtrip};

const SLEEP: usize = 0;
const HTTPBIN: usize = 1;
const NOTSLEEP: usize = 2;
/// Every machine's echo application.
const ECHO: u16 = 8000;

fn cluster(label: &str) -> Cluster {
    let c = Cluster::new(label, &SEED_CAST, "");
    for m in &c.machines {
        echo_on(m.listen(ECHO));
    }
    c
}

/// How a connection ended for the application reading it.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Clean EOF.
    Eof,
    /// ECONNRESET.
    Reset,
    /// Still open after the read timeout: a hang.
    Hung,
    /// Data arrived.
    Data,
    /// Some other error.
    Other(ErrorKind),
}

/// Reads once with `limit` and says how the connection ended.
fn end_of(stream: &mut TcpStream, limit: Duration) -> End {
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf) {
        Ok(0) => End::Eof,
        Ok(_) => End::Data,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => End::Reset,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => End::Hung,
        Err(e) => End::Other(e.kind()),
    }
}

/// A hashed transfer from `from` to `to`'s echo in the background.
fn background<'s>(
    s: &'s thread::Scope<'s, '_>,
    from: &'s Machine,
    to: &'s Machine,
    len: usize,
    seed: u64,
) -> thread::ScopedJoinHandle<'s, Result<(), String>> {
    s.spawn(move || {
        let stream = from.connect(to.addr(ECHO)).map_err(|e| e.to_string())?;
        echo_transfer(stream, len, seed)
    })
}

/// Holds: a connection to a port nothing listens on ends promptly with a reset (httpbin's
/// meshd answers 503, sleep's meshd resets the application's connection), the failure is
/// logged on both sides with its reason, and a transfer running meanwhile over the same HBONE
/// connection is intact.
#[test]
fn destination_application_down_is_503_to_the_peer_and_a_reset_to_the_client() {
    let c = cluster("appdown");
    let (sleep, httpbin) = (c.m(SLEEP), c.m(HTTPBIN));
    thread::scope(|s| {
        let good = background(s, sleep, httpbin, 4 << 20, 1);
        let started = Instant::now();
        // Nothing written: unread data would make the kernel reset on its own. The reset may
        // arrive before connect() has returned (a loaded machine): that is the reset too.
        match sleep.connect(httpbin.addr(8001)) {
            Ok(mut down) => assert_eq!(end_of(&mut down, Duration::from_secs(5)), End::Reset),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        // Well under meshd's own 10 s timeouts: nothing waited for one. Loose enough for a
        // loaded CI machine.
        assert!(started.elapsed() < Duration::from_secs(5), "no hang");
        good.join().unwrap().expect("the concurrent transfer");
    });
    sleep
        .meshd()
        .wait_for_log("peer meshd refused the tunnel with HTTP status 503");
    let log = httpbin.meshd().wait_for_log("connection failed");
    assert!(
        log.lines().any(|l| l.contains("connection failed")
            && l.contains("10.215.0.2:8001")
            && l.contains("Connection refused")),
        "{log}"
    );
    // The machine stays usable: a fresh connection to the live application works.
    let stream = sleep.connect(httpbin.addr(ECHO)).unwrap();
    echo_transfer(stream, 1 << 20, 2).unwrap();
}

/// Holds: when httpbin's meshd dies, the connections through it end at once (no hang until a
/// timeout), new ones fail fast while it is down, and after a restart new connections succeed
/// straight away (the pool dropped the dead HBONE connection instead of waiting for the
/// keepalive to notice); traffic between the other two machines never notices.
#[test]
fn destination_meshd_killed_and_restarted() {
    let mut c = cluster("killed");
    let mut held = c.m(SLEEP).connect(c.m(HTTPBIN).addr(ECHO)).unwrap();
    assert!(echo_roundtrip(&mut held, b"before").is_some());
    let (stop, stopped) = mpsc::channel::<()>();
    thread::scope(|s| {
        // Owned by this closure: if an assertion below fails, unwinding drops it and the side
        // thread stops, instead of the scope waiting for it forever (a hang, not a failure).
        let stop = stop;
        let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
        // notsleep → sleep keeps flowing across the crash: connections of 256 KiB each.
        let side = s.spawn(move || {
            let mut n = 0;
            let mut done = false;
            while !done || n < 16 {
                done = done || !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty));
                let stream = notsleep
                    .connect(sleep.addr(ECHO))
                    .map_err(|e| e.to_string())?;
                echo_transfer(stream, 256 << 10, n)?;
                n += 1;
            }
            Ok::<u64, String>(n)
        });
        let started = Instant::now();
        httpbin.meshd().signal("KILL");
        let end = end_of(&mut held, Duration::from_secs(5));
        assert!(
            matches!(end, End::Eof | End::Reset),
            "the held connection ends: {end:?}"
        );
        // Well under meshd's own 10 s timeouts: nothing waited for one. Loose enough for a
        // loaded CI machine.
        assert!(started.elapsed() < Duration::from_secs(5), "no hang");

        // While it is down: a new connection ends at once, and the reason is logged.
        let started = Instant::now();
        let mut refused = sleep.connect(httpbin.addr(ECHO)).unwrap();
        let _ = refused.write_all(b"x");
        let end = end_of(&mut refused, Duration::from_secs(5));
        assert!(matches!(end, End::Eof | End::Reset), "{end:?}");
        // Well under meshd's own 10 s timeouts: nothing waited for one. Loose enough for a
        // loaded CI machine.
        assert!(started.elapsed() < Duration::from_secs(5), "no hang");
        let log = sleep.meshd().wait_for_log("connection failed");
        assert!(log.contains("10.215.0.2:15008"), "{log}");
        stop.send(()).unwrap();
        let n = side.join().unwrap().expect("notsleep → sleep, untouched");
        assert!(n >= 16);
    });

    c.m_mut(HTTPBIN).kill(); // reaps the dead process
    c.m_mut(HTTPBIN).start();
    let started = Instant::now();
    let stream = c.m(SLEEP).connect(c.m(HTTPBIN).addr(ECHO)).unwrap();
    echo_transfer(stream, 1 << 20, 3).expect("the first connection after the restart");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the keepalive window (20 s), in fact at once"
    );
}

/// An application that reads `after` bytes of each connection, then resets it (SO_LINGER 0).
fn serve_resetting(listener: TcpListener, after: usize) {
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; after];
                let _ = stream.read_exact(&mut buf);
                let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            });
        }
    });
}

/// An application that reads each connection to its end and reports how it ended.
fn serve_watching(listener: TcpListener) -> mpsc::Receiver<(usize, End)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let tx = tx.clone();
            thread::spawn(move || {
                let mut got = 0;
                let mut buf = [0u8; 16 * 1024];
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let end = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break End::Eof,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => break End::Reset,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break End::Hung,
                        Err(e) => break End::Other(e.kind()),
                    }
                };
                let _ = tx.send((got, end));
            });
        }
    });
    rx
}

/// Holds: a stream reset by the server application mid-transfer reaches the client as a reset
/// (never as a clean EOF that would pass a truncated payload off as complete), a client's
/// reset reaches the server application, and a transfer on the same HBONE connection at the
/// same time is intact.
#[test]
fn a_reset_mid_stream_reaches_the_other_end_and_spares_the_other_streams() {
    let c = cluster("reset");
    let (sleep, httpbin) = (c.m(SLEEP), c.m(HTTPBIN));
    serve_resetting(httpbin.listen(8002), 64 << 10);
    let watched = serve_watching(httpbin.listen(8003));
    thread::scope(|s| {
        let good = background(s, sleep, httpbin, 8 << 20, 7);

        // The server resets after 64 KiB of a 4 MiB upload.
        let started = Instant::now();
        let stream = sleep.connect(httpbin.addr(8002)).unwrap();
        let error = echo_transfer(stream, 4 << 20, 8).expect_err("a reset, not a success");
        assert!(
            error.contains("reset") || error.contains("Broken pipe"),
            "the client sees a reset: {error}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "no hang");

        // The client resets after 128 KiB.
        let mut stream = sleep.connect(httpbin.addr(8003)).unwrap();
        stream.write_all(&payload(128 << 10, 9)).unwrap();
        thread::sleep(Duration::from_millis(200));
        socket2::SockRef::from(&stream)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(stream);
        let (got, end) = watched
            .recv_timeout(Duration::from_secs(5))
            .expect("no hang");
        assert_eq!(end, End::Reset, "after {got} bytes");

        good.join().unwrap().expect("the concurrent transfer");
    });
}

/// Holds: a half-closed connection keeps carrying the other direction, both ways round: the
/// client's FIN reaches the server application, which answers afterwards, and a server's FIN
/// reaches the client, which keeps sending.
#[test]
fn half_closed_connections_keep_carrying_the_other_direction() {
    let c = cluster("halfopen");
    let (sleep, httpbin) = (c.m(SLEEP), c.m(HTTPBIN));
    // Reads to EOF, then answers with the SHA-256 of what it read.
    let digest = httpbin.listen(8004);
    thread::spawn(move || {
        for stream in digest.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut all = Vec::new();
            if stream.read_to_end(&mut all).is_ok() {
                let _ = stream.write_all(&sha256(&all));
            }
        }
    });
    // Sends 1 MiB and its FIN first, then reads the client's bytes to EOF.
    let greeter = httpbin.listen(8005);
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for stream in greeter.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.write_all(&payload(1 << 20, 10));
            let _ = stream.shutdown(Shutdown::Write);
            let mut all = Vec::new();
            let _ = stream.read_to_end(&mut all);
            let _ = tx.send(sha256(&all));
        }
    });

    let sent = payload(2 << 20, 11);
    let mut stream = sleep.connect(httpbin.addr(8004)).unwrap();
    stream.write_all(&sent).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert_eq!(
        answer,
        sha256(&sent),
        "client FIN first: the answer came back"
    );

    let mut stream = sleep.connect(httpbin.addr(8005)).unwrap();
    let mut greeting = Vec::new();
    stream.read_to_end(&mut greeting).unwrap();
    assert_eq!(sha256(&greeting), sha256(&payload(1 << 20, 10)));
    let upload = payload(512 << 10, 12);
    stream.write_all(&upload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = rx.recv_timeout(Duration::from_secs(10)).expect("no hang");
    assert_eq!(got, sha256(&upload), "server FIN first: the upload arrived");
}

/// `openssl` inside `m` with `m`'s SVID: a real TLS 1.3 peer that offers `h2` and then never
/// speaks HTTP/2. Its stdin is a pipe never written to, so it sends nothing after the
/// handshake.
fn openssl(m: &Machine, mode: &str, addr: &str) -> Child {
    let tls = m.tls_dir();
    let mut command = m.ns.command("openssl");
    command.arg(mode);
    if mode == "s_server" {
        command.args(["-accept", addr, "-verify", "1"]);
    } else {
        command.args(["-connect", addr]);
    }
    command
        .arg("-cert")
        .arg(tls.join("svid.pem"))
        .arg("-key")
        .arg(tls.join("svid_key.pem"))
        .arg("-CAfile")
        .arg(tls.join("svid_bundle.pem"))
        .args(["-alpn", "h2", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl (Debian package openssl)")
}

/// Kills a child on drop, so a failing test leaves no openssl behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to `limit` for `child` to exit; how long it took.
fn exits_within(child: &mut Child, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(started.elapsed());
        }
        thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The WorkloadEntries of two fake peers on notsleep's machine (extra addresses .4 and .5,
/// identity notsleep): one accepts TCP on 15008 and never starts TLS, the other completes TLS
/// with notsleep's real SVID and never sends HTTP/2's SETTINGS.
const STALLED_PEERS: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: stalled-tls, namespace: ambient-demo}
spec: {address: 10.215.0.4, serviceAccount: notsleep}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: stalled-h2, namespace: ambient-demo}
spec: {address: 10.215.0.5, serviceAccount: notsleep}
";

/// Holds, as a server: a client that stalls the TLS handshake, or completes it and never sends
/// the HTTP/2 preface, is closed by httpbin's meshd at its handshake timeout (10 s) and holds
/// nothing up meanwhile. As a client: sleep's meshd gives up on a peer that stalls TLS (its
/// handshake timeout) or HTTP/2 (its response timeout, 15 s), the application's connection is
/// reset, and connections to healthy peers carry on with their bytes intact.
#[test]
fn peers_that_stall_the_tls_handshake_or_the_http2_preface_time_out() {
    let c = Cluster::new("stall", &SEED_CAST, STALLED_PEERS);
    for m in &c.machines {
        echo_on(m.listen(ECHO));
    }
    let (sleep, httpbin, notsleep) = (c.m(SLEEP), c.m(HTTPBIN), c.m(NOTSLEEP));
    for ip in ["10.215.0.4/16", "10.215.0.5/16"] {
        notsleep.ns.ip(&["addr", "add", ip, "dev", "eth0"]).unwrap();
    }
    let silent_listener = notsleep
        .ns
        .run(|| TcpListener::bind("10.215.0.4:15008"))
        .unwrap();
    let _h2_stall = Reaped(openssl(notsleep, "s_server", "10.215.0.5:15008"));
    // The stalling server must be listening before traffic heads its way: otherwise the first
    // connection meets a closed port, not a stall (seen once in CI on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(10);
    while notsleep
        .ns
        .run(|| TcpStream::connect("10.215.0.5:15008"))
        .is_err()
    {
        assert!(Instant::now() < deadline, "openssl s_server never listened");
        thread::sleep(Duration::from_millis(20));
    }
    // The server-side stallers, from notsleep to httpbin's HBONE port.
    let mut silent = notsleep
        .ns
        .run(|| TcpStream::connect("10.215.0.2:15008"))
        .unwrap();
    let mut preface_stall = Reaped(openssl(notsleep, "s_client", "10.215.0.2:15008"));
    let started = Instant::now();
    thread::scope(|s| {
        let to_tls_stall = s.spawn(|| {
            let mut stream = sleep.connect("10.215.0.4:9000".parse().unwrap()).unwrap();
            let _ = stream.write_all(b"hello?");
            (
                end_of(&mut stream, Duration::from_secs(25)),
                started.elapsed(),
            )
        });
        let to_h2_stall = s.spawn(|| {
            let mut stream = sleep.connect("10.215.0.5:9000".parse().unwrap()).unwrap();
            let _ = stream.write_all(b"hello?");
            (
                end_of(&mut stream, Duration::from_secs(25)),
                started.elapsed(),
            )
        });
        // Healthy traffic meanwhile, to both healthy peers, every byte hashed.
        let mut n = 0;
        while started.elapsed() < Duration::from_secs(9) {
            for to in [httpbin, notsleep] {
                let stream = sleep.connect(to.addr(ECHO)).unwrap();
                echo_transfer(stream, 256 << 10, n).expect("healthy traffic");
                n += 1;
            }
        }
        let server_side =
            exits_within(&mut preface_stall.0, Duration::from_secs(8)).map(|_| started.elapsed());
        assert!(
            server_side.is_some_and(|t| t < Duration::from_secs(17)),
            "httpbin closes a client that never sends the HTTP/2 preface: {server_side:?}"
        );
        assert_eq!(
            end_of(&mut silent, Duration::from_secs(3)),
            End::Eof,
            "httpbin closes a client that never starts TLS"
        );
        let (end, at) = to_tls_stall.join().unwrap();
        assert_eq!(end, End::Reset, "TLS stall seen from the client ({at:?})");
        assert!(at < Duration::from_secs(17), "{at:?}");
        let (end, at) = to_h2_stall.join().unwrap();
        assert_eq!(
            end,
            End::Reset,
            "HTTP/2 stall seen from the client ({at:?})"
        );
        assert!(at < Duration::from_secs(22), "{at:?}");
    });
    httpbin.meshd().wait_for_log("hbone handshake timed out");
    let log = sleep.meshd().wait_for_log("10.215.0.4:15008");
    assert!(log.contains("timed out"), "{log}");
    drop(silent_listener);
}
