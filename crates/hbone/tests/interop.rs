//! Our server against an independent HTTP/2 implementation: Python's `h2` package over
//! Python's `ssl` (OpenSSL), so the wire format is checked against code we did not write.
//!
//! Needs `python3` with the `h2` package (`pip install h2`); the test fails, never skips,
//! when they are missing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{LOCALHOST, TTL, echo_stream};
use meshd_hbone::{Decision, ServerSettings, Transport};
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_h2_client_interoperates() {
    let ca = meshd_identity::DevCa::generate("cluster.local").unwrap();
    let server_svid = ca.issue("server-ns", "server-sa", TTL).unwrap();
    let client_svid = ca.issue("py-ns", "py-sa", TTL).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    std::fs::write(path("cert.pem"), &client_svid.cert_pem).unwrap();
    std::fs::write(path("key.pem"), &client_svid.key_pem).unwrap();
    std::fs::write(path("ca.pem"), ca.root_pem()).unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let identity = meshd_identity::IdentityHandle::fixed(server_svid.credential_set().unwrap());
    let server = common::spawn_server(
        &identity,
        Transport::H2,
        move |req| {
            let _ = tx.send(req);
            std::future::ready(Decision::accept(echo_stream))
        },
        ServerSettings::default(),
    )
    .await;
    let addr = server.local_addr();

    // At run time: a build shared by clones at other paths keeps the compile-time one.
    let script = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(
            || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            std::path::PathBuf::from,
        )
        .join("tests/h2_interop.py");
    let files = [path("cert.pem"), path("key.pem"), path("ca.pem")];
    let output = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(script)
            .arg(addr.ip().to_string())
            .arg(addr.port().to_string())
            .args(files)
            .arg(format!("{LOCALHOST}:8080"))
            .arg("10.255.0.1:8080")
            .output()
            .expect("python3 must be installed for the interop test")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python h2 client failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("OK"), "{stdout}");

    // Only the valid CONNECT reached the service, with the identity and headers Python sent.
    let req = rx.recv().await.unwrap();
    assert_eq!(req.peer_identity, client_svid.id);
    assert_eq!(req.authority, format!("{LOCALHOST}:8080").parse().unwrap());
    assert_eq!(
        req.headers.baggage.as_deref(),
        Some("k8s.namespace.name=python")
    );
    assert_eq!(
        req.headers.forwarded.unwrap().client,
        "10.9.8.7:6543".parse().unwrap()
    );
    assert_eq!(
        req.headers.traceparent.unwrap().to_string(),
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
    );
    assert!(rx.try_recv().is_err());
}
