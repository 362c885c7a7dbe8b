//! The client side of `meshd status`: one `GET /status/<view>` to the admin endpoint, with an
//! error that tells a person what is wrong (meshd not running, a wrong address, meshd still
//! starting).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

/// How long one request may take, connecting included: the admin endpoint answers from memory,
/// so anything slower is not a healthy meshd.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a view could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing listens on the address.
    #[error(
        "cannot reach meshd's admin endpoint at {addr}: connection refused (is meshd running? its admin address is listen.admin in meshd.yaml; pass --admin ADDR)"
    )]
    NotRunning {
        /// The address tried.
        addr: SocketAddr,
    },
    /// Connecting failed otherwise, or no answer came in time.
    #[error("cannot reach meshd's admin endpoint at {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// What happened.
        reason: String,
    },
    /// Something answered, but not as meshd's admin endpoint does.
    #[error("{addr} is not meshd's admin endpoint (wrong --admin address?): {reason}")]
    NotMeshd {
        /// The address tried.
        addr: SocketAddr,
        /// What it answered.
        reason: String,
    },
    /// meshd is up but has no certificate or configuration in force yet.
    #[error("meshd at {addr} is still starting: {reason}")]
    Starting {
        /// The address tried.
        addr: SocketAddr,
        /// What it is waiting for.
        reason: String,
    },
}

/// Fetches one view (`summary`, `workloads`, … see [`crate::view::VIEWS`]) as JSON.
pub fn fetch(addr: SocketAddr, view: &str) -> Result<serde_json::Value, ClientError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Unreachable {
            addr,
            reason: format!("cannot start a runtime: {e}"),
        })?;
    runtime.block_on(async {
        match tokio::time::timeout(TIMEOUT, get(addr, &format!("/status/{view}"))).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Unreachable {
                addr,
                reason: format!("no answer within {} s", TIMEOUT.as_secs()),
            }),
        }
    })
}

async fn get(addr: SocketAddr, path: &str) -> Result<serde_json::Value, ClientError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ClientError::NotRunning { addr },
            _ => ClientError::Unreachable {
                addr,
                reason: e.to_string(),
            },
        })?;
    let not_meshd = |reason: String| ClientError::NotMeshd { addr, reason };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| not_meshd(e.to_string()))?;
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(|e| not_meshd(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| not_meshd(format!("no HTTP answer ({e})")))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| not_meshd(e.to_string()))?
        .to_bytes();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    match (status, json) {
        (http::StatusCode::OK, Some(value)) => Ok(value),
        (http::StatusCode::SERVICE_UNAVAILABLE, Some(value)) => Err(ClientError::Starting {
            addr,
            reason: value["pending"].as_str().unwrap_or("pending").to_string(),
        }),
        (status, _) => Err(not_meshd(format!("GET {path} answered {status}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-shot HTTP server answering `response` verbatim.
    fn serve_once(response: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.10.59.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(response.as_bytes());
            }
        });
        addr
    }

    #[test]
    fn nothing_listening_is_not_running() {
        // Bind then drop: the port is closed.
        let addr = TcpListener::bind("127.10.59.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert_eq!(
            fetch(addr, "summary"),
            Err(ClientError::NotRunning { addr })
        );
    }

    #[test]
    fn a_server_that_is_not_meshd_is_named_so() {
        let addr = serve_once("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
        let err = fetch(addr, "summary").unwrap_err();
        assert!(matches!(err, ClientError::NotMeshd { .. }), "{err}");
        assert!(err.to_string().contains("404"), "{err}");
    }

    #[test]
    fn a_non_http_answer_is_not_meshd() {
        let addr = serve_once("SSH-2.0-OpenSSH_9.2\r\n");
        let err = fetch(addr, "summary").unwrap_err();
        assert!(matches!(err, ClientError::NotMeshd { .. }), "{err}");
    }

    #[test]
    fn a_starting_meshd_says_what_it_waits_for() {
        let addr = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 38\r\n\r\n{\"pending\":\"meshd is still starting\"}\n",
        );
        assert_eq!(
            fetch(addr, "certs"),
            Err(ClientError::Starting {
                addr,
                reason: "meshd is still starting".into()
            })
        );
    }

    #[test]
    fn a_json_answer_is_returned() {
        let addr = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"a\":1}\n");
        assert_eq!(fetch(addr, "summary").unwrap(), serde_json::json!({"a": 1}));
    }
}
