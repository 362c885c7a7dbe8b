//! Original source inside a private network namespace: a transparent socket bound to another
//! machine's address connects to a listener of this one, and the listener's replies come back
//! to it only with the routing `install` adds for `originalSource`. IPv4 and IPv6.
//!
//! Needs root, iproute2 and nftables; without them these tests fail (they never skip).

// Test helpers unwrap too: a panic there is a test failure with a location.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_redirect::netns::NetnsPair;
use meshd_redirect::{DEFAULT_MARK, RedirectConfig, connect_transparent, install, uninstall};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Long enough for a local handshake; a reply routed out of the machine never comes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The workload's port.
const PORT: u16 = 7000;

fn original_source() -> RedirectConfig {
    RedirectConfig {
        original_source: true,
        ..RedirectConfig::default()
    }
}

/// In `peer`'s namespace (the workload's machine), connects to `workload` from `client` (the
/// other machine's address) and returns the peer address the listener accepted, after a byte
/// each way; or the connect's error.
async fn connect_from_client(client: IpAddr, workload: IpAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(SocketAddr::new(workload, PORT)).await?;
    let dst = SocketAddr::new(workload, PORT);
    let (stream, accepted) = tokio::join!(
        connect_transparent(client, dst, DEFAULT_MARK, CONNECT_TIMEOUT),
        tokio::time::timeout(CONNECT_TIMEOUT, listener.accept())
    );
    let mut stream = stream?;
    let (mut server, seen) = accepted.map_err(|_| std::io::ErrorKind::TimedOut)??;
    server.write_all(b"x").await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(seen)
}

// With the routing installed the workload accepts the client's address and its replies reach
// the transparent socket, over both families; after uninstall they leave the machine and the
// connect times out.
#[test]
fn replies_come_back_only_with_the_routing() {
    let nodes = NetnsPair::new("origsrc");
    nodes.peer.run(|| install(&original_source()).unwrap());
    for (client, workload) in [
        (NetnsPair::LOCAL_V4, NetnsPair::PEER_V4),
        (NetnsPair::LOCAL_V6, NetnsPair::PEER_V6),
    ] {
        let seen = nodes
            .peer
            .run_async(|| connect_from_client(client, workload))
            .unwrap_or_else(|e| panic!("{client} → {workload}: {e}"));
        assert_eq!(seen.ip(), client);
    }

    nodes.peer.run(|| uninstall().unwrap());
    let err = nodes
        .peer
        .run_async(|| connect_from_client(NetnsPair::LOCAL_V4, NetnsPair::PEER_V4))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(err.to_string().contains("meshd redirect install"), "{err}");
}

// Capture without original source routes nothing back: the same connect times out.
#[test]
fn capture_alone_does_not_route_replies_back() {
    let nodes = NetnsPair::new("noorigsrc");
    nodes
        .peer
        .run(|| install(&RedirectConfig::default()).unwrap());
    let err = nodes
        .peer
        .run_async(|| connect_from_client(NetnsPair::LOCAL_V6, NetnsPair::PEER_V6))
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    nodes.peer.run(|| uninstall().unwrap());
}
