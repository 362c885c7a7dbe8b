//! What the endpoint tests share: stand-in handlers that count what they are asked to do, and
//! raw HTTP/1.1 requests over real sockets.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use meshd_admin::{Endpoint, Handlers, Readiness, ServeSettings, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Stand-in handlers and what they were asked to do.
pub struct Fixture {
    pub quits: Arc<AtomicUsize>,
    pub level: Arc<Mutex<String>>,
    pub readiness: Readiness,
    pub handlers: Handlers,
}

pub fn fixture() -> Fixture {
    let quits = Arc::new(AtomicUsize::new(0));
    let level = Arc::new(Mutex::new("info".to_string()));
    let readiness = Readiness::new(["certificates"]);
    let handlers = Handlers {
        config_dump: Arc::new(|| serde_json::json!({"generation": 7})),
        set_log_level: {
            let level = level.clone();
            Arc::new(move |new: &str| {
                if new.contains('!') {
                    return Err(format!("bad log filter {new:?}"));
                }
                let mut current = level.lock().unwrap();
                if !new.is_empty() {
                    *current = new.to_string();
                }
                Ok(current.clone())
            })
        },
        quit: {
            let quits = quits.clone();
            Arc::new(move || {
                quits.fetch_add(1, Ordering::SeqCst);
            })
        },
        status: Arc::new(|view: &str| match view {
            "summary" => Some(Ok(serde_json::json!({"generation": 7}))),
            "certs" => Some(Err("meshd is still starting".to_string())),
            _ => None,
        }),
        page: "<!DOCTYPE html><title>meshd</title>",
        metrics: Arc::new(|| Ok("# EOF\n".to_string())),
        metrics_content_type: "application/openmetrics-text; version=1.0.0; charset=utf-8",
        readiness: readiness.clone(),
    };
    Fixture {
        quits,
        level,
        readiness,
        handlers,
    }
}

pub async fn start(endpoint: Endpoint, handlers: Handlers) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        endpoint,
        handlers,
        ServeSettings::default(),
    ));
    addr
}

/// One HTTP/1.1 request as curl sends it (Host: the address; `X-Meshd-Admin` on a POST, as
/// the README tells operators); (status, headers+body as text).
pub async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let admin = if method == "POST" {
        "X-Meshd-Admin: 1\r\n"
    } else {
        ""
    };
    raw(addr, method, path, &format!("Host: {addr}\r\n{admin}")).await
}

/// One HTTP/1.1 request with exactly `headers` (each ending in CRLF) besides Connection and
/// Content-Length.
pub async fn raw(addr: SocketAddr, method: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}
