//! The operator listeners' limits over real sockets, with short limits so each test takes a few
//! seconds: a slowloris is cut by the header timeout, an idle kept-alive connection by the
//! same timer, a response never read by the connection lifetime, a flood by the connection
//! cap; and the endpoints keep answering while the caller's own runtime is blocked, because they run on
//! a thread of their own.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use meshd_admin::{Endpoint, Limits, OperatorRuntime, ServeSettings, THREAD_NAME, serve};

use support::fixture;

const SHORT: Limits = Limits {
    header_read_timeout: Duration::from_millis(400),
    connection_lifetime: Duration::from_millis(1500),
    max_connections: 4,
};

/// Long enough for any limit above to have acted, short of hyper's own 30 s default.
const CUT_WITHIN: Duration = Duration::from_secs(6);

async fn start(endpoint: Endpoint) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let settings = ServeSettings {
        allowed_hosts: Vec::new(),
        limits: SHORT,
    };
    tokio::spawn(serve(listener, endpoint, fixture().handlers, settings));
    addr
}

/// Reads until the server closes the connection; how long that took, or `None` if it was
/// still open after [`CUT_WITHIN`].
fn closed_after(stream: &mut TcpStream, started: Instant) -> Option<Duration> {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < CUT_WITHIN {
        match stream.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

/// Sends `bytes` one at a time, 50 ms apart, from a thread; stops at the first failed write.
fn trickle(mut stream: TcpStream, bytes: &'static [u8]) {
    std::thread::spawn(move || {
        for b in bytes {
            if stream.write_all(&[*b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_is_cut_by_the_header_timeout() {
    // Headers sent byte by byte never complete within the timeout: the connection is closed.
    let addr = start(Endpoint::Metrics).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        trickle(
            stream.try_clone().unwrap(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        );
        let took = closed_after(&mut stream, started).expect("the slowloris was never cut");
        assert!(took >= SHORT.header_read_timeout, "{took:?}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed() {
    // One request answered, then nothing: the wait for the next request is bounded too.
    let addr = start(Endpoint::Readiness).await;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let started = Instant::now();
        closed_after(&mut stream, started).expect("the idle connection was never closed");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_never_read_is_cut_by_the_connection_lifetime() {
    // A client asks for a large scrape and never reads it: the response fills the socket
    // buffers and the write waits. After the lifetime (and its grace) the connection is cut,
    // so reading afterwards finds the response truncated.
    const BODY: usize = 32 << 20;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut handlers = fixture().handlers;
    handlers.metrics = std::sync::Arc::new(|| Ok("x".repeat(BODY)));
    let settings = ServeSettings {
        allowed_hosts: Vec::new(),
        limits: SHORT,
    };
    tokio::spawn(serve(listener, Endpoint::Metrics, handlers, settings));
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        std::thread::sleep(SHORT.connection_lifetime + Duration::from_secs(3));
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut received = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
        assert!(
            received < BODY,
            "the whole response arrived: {received} bytes"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    // Four silent connections fill the endpoint; the fifth is closed before the header timeout
    // could have acted, and once the four are cut a new one is served.
    let addr = start(Endpoint::Readiness).await;
    tokio::task::spawn_blocking(move || {
        let held: Vec<TcpStream> = (0..SHORT.max_connections)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        let mut extra = TcpStream::connect(addr).unwrap();
        let started = Instant::now();
        let took = closed_after(&mut extra, started).expect("the extra connection stayed");
        assert!(took < SHORT.header_read_timeout, "{took:?}");
        for mut stream in held {
            closed_after(&mut stream, Instant::now()).expect("a held connection stayed");
        }
        assert_eq!(
            ready_status(addr).as_deref(),
            Some("HTTP/1.1 500"),
            "served again once the flood is gone"
        );
    })
    .await
    .unwrap();
}

/// The status line's first 12 bytes of `GET /healthz/ready`.
fn ready_status(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .write_all(b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.get(..12).map(str::to_string)
}

#[tokio::test]
async fn the_endpoints_answer_while_the_callers_runtime_is_blocked() {
    // This test's runtime has one thread, blocked below in a synchronous request: only a
    // thread of the endpoints' own can answer it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let f = fixture();
    let mut runtime = OperatorRuntime::start(f.handlers, ServeSettings::default()).unwrap();
    runtime.serve(Endpoint::Readiness, listener).unwrap();
    let [(Endpoint::Readiness, addr)] = runtime.bound() else {
        panic!("{:?}", runtime.bound());
    };
    assert_eq!(ready_status(*addr).as_deref(), Some("HTTP/1.1 500"));
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n == THREAD_NAME), "{names:?}");
    // Dropped: the listener is closed.
    let addr = *addr;
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still listening after drop");
        std::thread::sleep(Duration::from_millis(20));
    }
}
