//! SOCKS5 handshakes against a real socket pair.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_proxy::socks5::{HANDSHAKE_TIMEOUT, handshake};
use meshd_proxy::{Downstream, Refusal, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

#[tokio::test]
async fn connect_by_name_then_refused_by_policy() {
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    client.write_all(&[5, 2, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    client.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    client.write_all(&[5, 1, 0, 3, 7]).await.unwrap();
    client.write_all(b"db.shop").await.unwrap();
    client.write_all(&5432u16.to_be_bytes()).await.unwrap();
    let (request, target) = server.await.unwrap().unwrap();
    assert_eq!(target, Target::Host("db.shop".into(), 5432));
    Box::new(request).refuse(Refusal::Denied).await;
    let mut reply = [0u8; 10];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 2, "connection not allowed by ruleset");
}

#[tokio::test]
async fn connect_by_ipv6_then_accepted() {
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    client.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    client.read_exact(&mut choice).await.unwrap();
    let mut request = vec![5, 1, 0, 4];
    request.extend_from_slice(&"::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    request.extend_from_slice(&80u16.to_be_bytes());
    client.write_all(&request).await.unwrap();
    let (request, target) = server.await.unwrap().unwrap();
    assert_eq!(target, Target::Addr("[::1]:80".parse().unwrap()));
    let mut io = Box::new(request).accept().await.unwrap();
    let mut reply = [0u8; 10];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 0);
    client.write_all(b"hi").await.unwrap();
    let mut got = [0u8; 2];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hi");
}

#[tokio::test]
async fn rejects_auth_only_clients_and_other_commands() {
    // GSSAPI only: neither no authentication nor a user name.
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    client.write_all(&[5, 1, 1]).await.unwrap();
    let mut choice = [0u8; 2];
    client.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0xff]);
    assert!(server.await.unwrap().is_err());

    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    client.write_all(&[5, 1, 0]).await.unwrap();
    client.read_exact(&mut choice).await.unwrap();
    client
        .write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80])
        .await
        .unwrap(); // BIND
    let mut reply = [0u8; 10];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply[1], 7, "command not supported");
    assert!(server.await.unwrap().is_err());
}

#[tokio::test]
async fn a_silent_client_times_out() {
    // A client that connects and says nothing must not hold a socket and a task for ever.
    let (_client, server) = pair().await;
    let timeout = std::time::Duration::from_millis(200);
    let err = handshake(server, timeout).await.err().expect("times out");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(err.to_string(), "SOCKS5: no complete request within 200ms");
}

#[tokio::test]
async fn a_client_stalling_mid_request_times_out() {
    // The greeting alone is not enough: the whole request must arrive in time.
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, std::time::Duration::from_millis(200)));
    client.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    client.read_exact(&mut choice).await.unwrap();
    client.write_all(&[5, 1, 0]).await.unwrap(); // no address type, no address
    let err = server.await.unwrap().err().expect("times out");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
}

/// Sends an RFC 1929 greeting and sub-negotiation with `user`; returns the method choice and
/// the sub-negotiation status.
async fn with_user(client: &mut TcpStream, version: u8, user: &[u8]) -> ([u8; 2], [u8; 2]) {
    client.write_all(&[5, 2, 0, 2]).await.unwrap();
    let mut choice = [0u8; 2];
    client.read_exact(&mut choice).await.unwrap();
    let mut auth = vec![version, user.len() as u8];
    auth.extend_from_slice(user);
    auth.extend_from_slice(&[3, b'p', b'w', b'd']);
    client.write_all(&auth).await.unwrap();
    let mut status = [0u8; 2];
    let _ = client.read_exact(&mut status).await;
    (choice, status)
}

#[tokio::test]
async fn a_user_name_names_the_source_workload() {
    // Offered with no authentication, the user name is preferred: it names the workload.
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    let (choice, status) = with_user(&mut client, 1, b"shop/web").await;
    assert_eq!(choice, [5, 2]);
    assert_eq!(status, [1, 0]);
    client
        .write_all(&[5, 1, 0, 1, 10, 0, 0, 2, 0, 80])
        .await
        .unwrap();
    let (request, target) = server.await.unwrap().unwrap();
    assert_eq!(request.user(), Some("shop/web"));
    assert_eq!(target, Target::Addr("10.0.0.2:80".parse().unwrap()));
}

#[tokio::test]
async fn a_user_name_that_is_not_utf8_is_refused() {
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    let (_, status) = with_user(&mut client, 1, &[0xff, 0xfe]).await;
    assert_eq!(status, [1, 1], "RFC 1929 failure");
    let err = server.await.unwrap().err().expect("refused");
    assert_eq!(err.to_string(), "SOCKS5: user name is not UTF-8");
}

#[tokio::test]
async fn an_unknown_sub_negotiation_version_is_refused() {
    let (mut client, server) = pair().await;
    let server = tokio::spawn(handshake(server, HANDSHAKE_TIMEOUT));
    let _ = with_user(&mut client, 5, b"shop/web").await;
    let err = server.await.unwrap().err().expect("refused");
    assert_eq!(
        err.to_string(),
        "SOCKS5: unknown user name sub-negotiation version"
    );
}
