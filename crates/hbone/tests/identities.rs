//! One identity per local workload, over real TLS on loopback: the server presents the
//! certificate of the address the client dialed (127.0.0.1 and 127.0.0.2 are both local), and
//! the client's pool never lets two source identities share a connection.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use common::{Pki, TRANSPORTS, forward};
use meshd_hbone::{
    Client, ClientSettings, Decide, Peer, Server, ServerHandle, ServerIdentities, ServerSettings,
    Transport,
};
use meshd_identity::{IdentityHandle, SpiffeId};
use tokio::sync::mpsc;

const WEB_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// 127.0.0.2 is the workload `web`'s address; everything else is served as meshd itself.
struct ByAddress {
    web: IdentityHandle,
    own: IdentityHandle,
}

impl ServerIdentities for ByAddress {
    fn for_local(&self, local: IpAddr) -> IdentityHandle {
        if local == WEB_ADDR {
            self.web.clone()
        } else {
            self.own.clone()
        }
    }
}

/// A server on every address (port chosen by the kernel) choosing by local address, passing
/// each accepted tunnel's request to the test.
async fn server(
    pki: &Pki,
    web: IdentityHandle,
    transport: Transport,
) -> (
    ServerHandle,
    mpsc::UnboundedReceiver<(meshd_hbone::InboundRequest, meshd_hbone::TunnelStream)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let svc = tower::service_fn({
        let mut service = forward(tx);
        move |req| {
            let fut = service(req);
            async move { Ok::<_, std::convert::Infallible>(fut.await) }
        }
    });
    let chooser = Arc::new(ByAddress {
        web,
        own: pki.server.clone(),
    });
    let server = Server::new(&pki.server, ServerSettings::default(), Decide(svc))
        .unwrap()
        .with_identities(chooser);
    let any = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
    let handle = match transport {
        Transport::H2 => server
            .spawn(tokio::net::TcpListener::bind(any).await.unwrap())
            .unwrap(),
        #[cfg(feature = "quic")]
        Transport::H3 => server.spawn_quic(any).unwrap(),
        #[cfg(not(feature = "quic"))]
        Transport::H3 => unreachable!("HTTP/3 tests need the quic feature"),
    };
    (handle, rx)
}

fn at(ip: IpAddr, server: &ServerHandle) -> SocketAddr {
    SocketAddr::new(ip, server.local_addr().port())
}

// Each local address answers with its own workload's certificate, and the CONNECT tells the
// service which identity the connection presented.
#[tokio::test]
async fn the_server_presents_the_certificate_of_the_address_dialed() {
    for &transport in TRANSPORTS {
        let pki = Pki::new();
        let web_id = SpiffeId::istio("cluster.local", "shop", "web").unwrap();
        let (server, mut accepted) = server(&pki, pki.handle("shop", "web"), transport).await;
        let client = Client::new(pki.client.clone(), ClientSettings::default()).unwrap();

        let to_web = Peer::new(web_id.clone(), at(WEB_ADDR, &server)).with_transport(transport);
        let _tunnel = client
            .connect(&to_web, SocketAddr::new(WEB_ADDR, 80), Default::default())
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let (request, _) = accepted.recv().await.unwrap();
        assert_eq!(request.local_identity, web_id, "{transport:?}");

        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let to_own =
            Peer::new(pki.server_id.clone(), at(loopback, &server)).with_transport(transport);
        let _tunnel = client
            .connect(&to_own, SocketAddr::new(loopback, 80), Default::default())
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let (request, _) = accepted.recv().await.unwrap();
        assert_eq!(request.local_identity, pki.server_id, "{transport:?}");
    }
}

// A client expecting meshd's own identity at web's address meets web's certificate: the
// handshake fails with the exact mismatch, whatever it would have been served otherwise.
#[tokio::test]
async fn another_identity_at_the_workload_s_address_is_refused_by_the_client() {
    for &transport in TRANSPORTS {
        let pki = Pki::new();
        let (server, _accepted) = server(&pki, pki.handle("shop", "web"), transport).await;
        let client = Client::new(pki.client.clone(), common::fast_client()).unwrap();
        let wrong =
            Peer::new(pki.server_id.clone(), at(WEB_ADDR, &server)).with_transport(transport);
        let e = client
            .connect(&wrong, SocketAddr::new(WEB_ADDR, 80), Default::default())
            .await
            .unwrap_err();
        let mismatch = meshd_identity::Error::IdentityMismatch {
            expected: pki.server_id.to_string(),
            found: "spiffe://cluster.local/ns/shop/sa/web".into(),
        };
        match (transport, e) {
            (Transport::H2, meshd_hbone::Error::Tls { identity, .. }) => {
                assert_eq!(identity, Some(mismatch))
            }
            // quinn passes the rustls rejection on as text only.
            (Transport::H3, meshd_hbone::Error::Tls { source, .. }) => {
                let reason = source.to_string();
                assert!(reason.contains("shop/sa/web"), "{reason}")
            }
            (_, other) => panic!("expected a TLS identity error, got {other:?}"),
        }
    }
}

// Two source identities to the same peer: two connections, each authenticated as its own
// source (the server authorizes per connection, by the client certificate); a second tunnel
// of either reuses its own.
#[tokio::test]
async fn two_source_identities_never_share_a_connection() {
    for &transport in TRANSPORTS {
        let pki = Pki::new();
        let (server, mut accepted) = server(&pki, pki.handle("shop", "web"), transport).await;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let peer =
            Peer::new(pki.server_id.clone(), at(loopback, &server)).with_transport(transport);
        let first = Client::new(pki.client.clone(), ClientSettings::default()).unwrap();
        let second = first.as_identity(pki.handle("shop", "db"));
        let db = SpiffeId::istio("cluster.local", "shop", "db").unwrap();

        let mut held = Vec::new();
        for (client, want) in [
            (&first, &pki.client_id),
            (&second, &db),
            (&first, &pki.client_id),
            (&second, &db),
        ] {
            held.push(
                client
                    .connect(&peer, SocketAddr::new(loopback, 80), Default::default())
                    .await
                    .unwrap(),
            );
            let (request, _) = accepted.recv().await.unwrap();
            assert_eq!(&request.peer_identity, want, "{transport:?}");
        }
        if transport == Transport::H2 {
            // The pool is shared by both views: two connections, one per identity.
            assert_eq!(first.connections_opened(), 2);
            assert_eq!(second.pooled_connections(), 2);
        }
    }
}
