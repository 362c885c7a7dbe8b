//! Real capture inside private network namespaces: install the rules with `nft`, connect, and
//! check where connections land and what `original_dst` reports.
//!
//! Needs root, iproute2 and nftables; without them these tests fail (they never skip).

// Test helpers unwrap too: a panic there is a test failure with a location.
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use meshd_redirect::netns::{Netns, NetnsPair};
use meshd_redirect::{
    DEFAULT_MARK, RedirectConfig, connect_marked, install, original_dst, show, uninstall,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Long enough for any local handshake; a connection not accepted by then went elsewhere.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a listener must stay idle to conclude no connection was sent its way.
const QUIET: Duration = Duration::from_millis(200);
/// The application port the tests connect to.
const APP_PORT: u16 = 8080;

fn cfg() -> RedirectConfig {
    RedirectConfig::default()
}

fn inbound_cfg() -> RedirectConfig {
    RedirectConfig {
        inbound_port: Some(15006),
        ..RedirectConfig::default()
    }
}

/// Binds a dual-stack listener on every address of the current namespace.
async fn listen(port: u16) -> TcpListener {
    TcpListener::bind(("::", port)).await.unwrap()
}

/// Accepts one connection or panics saying which listener stayed empty.
async fn accept(l: &TcpListener, what: &str) -> TcpStream {
    match tokio::time::timeout(ACCEPT_TIMEOUT, l.accept()).await {
        Ok(Ok((s, _))) => s,
        Ok(Err(e)) => panic!("{what}: accept failed: {e}"),
        Err(_) => panic!("{what}: no connection arrived within {ACCEPT_TIMEOUT:?}"),
    }
}

/// Panics if `l` accepts a connection within [`QUIET`].
async fn assert_idle(l: &TcpListener, what: &str) {
    if let Ok(Ok((s, _))) = tokio::time::timeout(QUIET, l.accept()).await {
        panic!("{what}: unexpected connection from {:?}", s.peer_addr());
    }
}

/// Sends a line each way, proving the two sockets are the ends of one connection.
async fn exchange(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

/// Connects from inside `ns` (a blocking connect on the namespace's thread); the socket stays
/// in `ns`, so its packets arrive at the other namespace from the network.
fn connect_from(ns: &Netns, dst: SocketAddr) -> TcpStream {
    let std = ns.run(|| std::net::TcpStream::connect_timeout(&dst, ACCEPT_TIMEOUT));
    let std = std.unwrap_or_else(|e| panic!("connect from {} to {dst}: {e}", ns.name()));
    std.set_nonblocking(true).unwrap();
    TcpStream::from_std(std).unwrap()
}

/// A listener made inside `ns`; turn it into a tokio one with [`into_tokio`] in a runtime.
fn listen_in(ns: &Netns, port: u16) -> std::net::TcpListener {
    let std = ns
        .run(|| std::net::TcpListener::bind(("::", port)))
        .unwrap();
    std.set_nonblocking(true).unwrap();
    std
}

fn into_tokio(l: std::net::TcpListener) -> TcpListener {
    TcpListener::from_std(l).unwrap()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

// install → show → install again (one table) → uninstall → absent → uninstall again.
#[test]
fn install_show_uninstall_idempotent() {
    let ns = Netns::new("idem");
    ns.run(|| {
        assert_eq!(show().unwrap(), None, "fresh namespace has no meshd table");
        install(&cfg()).unwrap();
        let table = show().unwrap().expect("table present after install");
        assert!(table.contains("table inet meshd"), "{table}");
        assert!(table.contains("redirect to :15001"), "{table}");
        assert!(
            table.contains("meta mark & 0x00000fff == 0x00000539"),
            "{table}"
        );

        // A second install replaces the first, with the new config, still as one table.
        install(&inbound_cfg()).unwrap();
        let table = show().unwrap().unwrap();
        assert_eq!(table.matches("table inet meshd").count(), 1, "{table}");
        assert_eq!(table.matches("chain output").count(), 1, "{table}");
        assert!(table.contains("redirect to :15006"), "{table}");

        uninstall().unwrap();
        assert_eq!(show().unwrap(), None);
        uninstall().unwrap();
        assert_eq!(show().unwrap(), None);
    });
}

// nft accepts every construct render() can emit: v4 and v6 exclusion sets, loopback capture,
// inbound capture with excluded ports, a custom mark.
#[test]
fn nft_accepts_full_config() {
    let ns = Netns::new("full");
    let cfg = RedirectConfig {
        inbound_port: Some(15006),
        exclude_outbound_cidrs: ["10.0.0.0/8", "10.9.0.0/16", "fd00::/8", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        exclude_inbound_ports: vec![22, 9090],
        capture_loopback: true,
        mark: 0x10000,
        mark_mask: 0xff0000,
        ..RedirectConfig::default()
    };
    let table = ns.run(|| {
        install(&cfg).unwrap();
        show().unwrap().unwrap()
    });
    assert!(
        table.contains("ip6 daddr { 2001:db8::/32, fd00::/8 } return"),
        "{table}"
    );
    assert!(table.contains("ip daddr 10.0.0.0/8 return"), "{table}");
    assert!(
        table.contains(
            "tcp dport { 22, 9090, 15000, 15001, 15006, 15008, 15020, 15021, 15080 } return"
        ),
        "{table}"
    );
}

// Plain outbound connections to a peer address are redirected to the outbound port, and the
// accepted socket reports the address the application dialled, for IPv4 and IPv6.
#[test]
fn outbound_redirected_with_original_dst() {
    let net = NetnsPair::new("out");
    net.local.run_async(|| async {
        install(&cfg()).unwrap();
        let capture = listen(15001).await;
        for ip in [NetnsPair::PEER_V4, NetnsPair::PEER_V6] {
            let dst = sa(ip, APP_PORT);
            // Nothing listens on the peer's port: only the redirect can make this succeed.
            let (client, server) = tokio::join!(TcpStream::connect(dst), accept(&capture, "15001"));
            let (mut client, mut server) = (client.unwrap(), server);
            assert_eq!(
                client.peer_addr().unwrap(),
                dst,
                "the application sees its target"
            );
            assert_eq!(original_dst(&server).unwrap(), dst);
            exchange(&mut client, &mut server).await;
        }
    });
}

// Loopback traffic is left alone by default (as ztunnel).
#[test]
fn loopback_not_captured() {
    let ns = Netns::new("lo");
    ns.run_async(|| async {
        install(&cfg()).unwrap();
        let capture = listen(15001).await;
        let app = listen(APP_PORT).await;
        for ip in ["127.0.0.1", "::1"] {
            let dst = sa(ip.parse().unwrap(), APP_PORT);
            let (client, server) = tokio::join!(TcpStream::connect(dst), accept(&app, "app"));
            exchange(&mut client.unwrap(), &mut { server }).await;
        }
        assert_idle(&capture, "15001").await;
    });
}

// meshd's own marked sockets reach the real destination; so do excluded destinations.
#[test]
fn marked_and_excluded_not_redirected() {
    let net = NetnsPair::new("mark");
    let real = listen_in(&net.peer, APP_PORT);
    net.local.run_async(move || async move {
        let real = into_tokio(real);
        let capture = listen(15001).await;
        install(&cfg()).unwrap();
        for ip in [NetnsPair::PEER_V4, NetnsPair::PEER_V6] {
            let dst = sa(ip, APP_PORT);
            let (client, server) = tokio::join!(
                connect_marked(dst, DEFAULT_MARK, ACCEPT_TIMEOUT),
                accept(&real, "peer's real listener")
            );
            let mut client = client.unwrap();
            assert!(client.nodelay().unwrap(), "connect_marked sets TCP_NODELAY");
            exchange(&mut client, &mut { server }).await;
        }
        assert_idle(&capture, "15001 (marked traffic)").await;

        // The same destinations unmarked, but excluded by CIDR, also go straight through.
        let excluded = RedirectConfig {
            exclude_outbound_cidrs: vec![
                "10.213.0.0/24".parse().unwrap(),
                "fd00:213::/64".parse().unwrap(),
            ],
            ..cfg()
        };
        install(&excluded).unwrap();
        for ip in [NetnsPair::PEER_V4, NetnsPair::PEER_V6] {
            let dst = sa(ip, APP_PORT);
            let (client, server) = tokio::join!(
                TcpStream::connect(dst),
                accept(&real, "peer's real listener")
            );
            exchange(&mut client.unwrap(), &mut { server }).await;
        }
        assert_idle(&capture, "15001 (excluded destinations)").await;
    });
}

// Connections arriving from the peer are redirected to the inbound port with the local
// address as original destination; HBONE (15008) and excluded ports (22) are not captured.
#[test]
fn inbound_redirected_except_hbone_and_excluded() {
    let net = NetnsPair::new("in");
    net.local.run_async(|| async {
        install(&inbound_cfg()).unwrap();
        let inbound = listen(15006).await;
        let hbone = listen(15008).await;
        let ssh = listen(22).await;
        for ip in [NetnsPair::LOCAL_V4, NetnsPair::LOCAL_V6] {
            let dst = sa(ip, APP_PORT);
            let mut client = connect_from(&net.peer, dst);
            let mut server = accept(&inbound, "15006").await;
            assert_eq!(original_dst(&server).unwrap(), dst);
            exchange(&mut client, &mut server).await;

            for (port, listener) in [(15008, &hbone), (22, &ssh)] {
                let mut client = connect_from(&net.peer, sa(ip, port));
                let mut server = accept(listener, &format!("direct listener on {port}")).await;
                exchange(&mut client, &mut server).await;
            }
            assert_idle(&inbound, "15006 (hbone and ssh traffic)").await;
        }
    });
}

// Without inboundPort, inbound traffic is not captured at all.
#[test]
fn no_inbound_capture_by_default() {
    let net = NetnsPair::new("noin");
    net.local.run_async(|| async {
        install(&cfg()).unwrap();
        let app = listen(APP_PORT).await;
        let mut client = connect_from(&net.peer, sa(NetnsPair::LOCAL_V4, APP_PORT));
        let mut server = accept(&app, "app").await;
        exchange(&mut client, &mut server).await;
    });
}

// Connections established before the rules are installed keep going where they went: only a
// connection's first packet (a SYN without ACK) is redirected. Without that, the kernel picks
// such a connection up mid-stream once the nat hooks exist (its next packet looks new), the
// redirect sends it to meshd's port, which resets it: an `install` under a running meshd broke
// its own established connections (its stream to istiod, issue 24).
#[test]
fn connections_established_before_install_are_left_alone() {
    let net = NetnsPair::new("est");
    let peer_app = listen_in(&net.peer, APP_PORT);
    net.local.run_async(|| async {
        let peer_app = into_tokio(peer_app);
        let local_app = listen(APP_PORT).await;
        // One connection out to the peer, one in from it, both before any rule.
        let out_dst = sa(NetnsPair::PEER_V4, APP_PORT);
        let (out_client, out_server) =
            tokio::join!(TcpStream::connect(out_dst), accept(&peer_app, "peer app"));
        let (mut out_client, mut out_server) = (out_client.unwrap(), out_server);
        let mut in_client = connect_from(&net.peer, sa(NetnsPair::LOCAL_V4, APP_PORT));
        let mut in_server = accept(&local_app, "local app").await;
        exchange(&mut out_client, &mut out_server).await;
        exchange(&mut in_client, &mut in_server).await;

        install(&inbound_cfg()).unwrap();
        let outbound = listen(15001).await;
        let inbound = listen(15006).await;
        // Both still carry data end to end, and neither reached meshd's ports.
        let carried = async {
            exchange(&mut out_client, &mut out_server).await;
            exchange(&mut in_client, &mut in_server).await;
        };
        if tokio::time::timeout(ACCEPT_TIMEOUT, carried).await.is_err() {
            panic!("a connection established before install stopped carrying data");
        }
        assert_idle(&outbound, "15001").await;
        assert_idle(&inbound, "15006").await;
        // New connections are captured.
        let (client, server) =
            tokio::join!(TcpStream::connect(out_dst), accept(&outbound, "15001"));
        exchange(&mut client.unwrap(), &mut { server }).await;
    });
}
