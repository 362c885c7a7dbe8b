//! TCP socket set-up shared by both sides: the marked connect and the options every HBONE
//! socket gets.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

/// TCP keepalive on HBONE sockets: 180 s idle, 180 s interval, as ztunnel; the PING keepalive
/// notices dead peers sooner, this keeps NAT and conntrack entries alive.
const TCP_KEEPALIVE: Duration = Duration::from_secs(180);

/// A TCP connection to `addr`, marked before connecting so not even the SYN is captured.
pub(crate) async fn connect(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let Some(mark) = mark else {
        return TcpStream::connect(addr).await;
    };
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket2::SockRef::from(&socket).set_mark(mark)?;
    socket.connect(addr).await
}

/// NODELAY (tunnels carry interactive traffic; h2 already batches frames) and TCP keepalive.
pub(crate) fn tune(tcp: &TcpStream) {
    // Best effort: a socket that refuses an option still works.
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE)
        .with_interval(TCP_KEEPALIVE);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}
