//! Socket options capture needs: the original destination of a redirected connection, and the
//! mark that keeps meshd's own connections out of the capture; and the transparent connect
//! that keeps a client's address (`redirect.originalSource`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use socket2::{Domain, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use crate::DEFAULT_MARK;

/// The destination a REDIRECTed connection was addressed to before the kernel diverted it.
///
/// Tries `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST`, in the order the connection's family
/// suggests, falling back to the other (as ztunnel's `socket.rs`): a dual-stack `[::]`
/// listener accepts IPv4 connections as v4-mapped addresses, whose conntrack entry is IPv4.
/// IPv4-mapped results are returned as plain IPv4.
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(stream);
    let v6_first = match stream.local_addr()? {
        SocketAddr::V4(_) => false,
        SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_none(),
    };
    let lookup = |v6: bool| {
        if v6 {
            sock.original_dst_v6()
        } else {
            sock.original_dst_v4()
        }
    };
    let addr = match lookup(v6_first) {
        Ok(addr) => addr,
        Err(first) => match lookup(!v6_first) {
            Ok(addr) => addr,
            Err(second) => {
                let (e4, e6) = if v6_first {
                    (second, first)
                } else {
                    (first, second)
                };
                return Err(io::Error::new(
                    e4.kind(),
                    format!(
                        "no original destination (not a redirected connection?): \
                         SO_ORIGINAL_DST: {e4}; IP6T_SO_ORIGINAL_DST: {e6}"
                    ),
                ));
            }
        },
    };
    let addr = addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP socket address",
        )
    })?;
    Ok(SocketAddr::new(addr.ip().to_canonical(), addr.port()))
}

/// Sets `SO_MARK` on a socket so the capture rules exempt its traffic.
pub fn set_mark(socket: &impl AsFd, mark: u32) -> io::Result<()> {
    SockRef::from(socket).set_mark(mark).map_err(mark_error)
}

/// Connects to `dst` from a socket marked with `mark` (set before connecting, so not even the
/// SYN is captured), with `TCP_NODELAY`, giving up after `timeout`.
pub async fn connect_marked(
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = match dst {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    set_mark(&socket, mark)?;
    // Proxied bytes are already batched by the application; delaying them only adds latency.
    socket.set_nodelay(true)?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connect to {dst} timed out after {timeout:?}"),
        )),
    }
}

/// Connects to `dst` from `src` (port chosen by the kernel), an address that need not be this
/// machine's: the socket is `IP_TRANSPARENT` (`IPV6_TRANSPARENT`), marked with `mark` before
/// it binds, with `TCP_NODELAY`, giving up after `timeout`. The replies come back to it only
/// with the routing `install` adds for `originalSource`.
///
/// A `src` of the other family than `dst` is refused: there is no such address to bind; so is
/// a `dst` on loopback from a `src` that is not, which the kernel never delivers (the connect
/// would only time out).
pub async fn connect_transparent(
    src: IpAddr,
    dst: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let src = src.to_canonical();
    let socket = match (src, dst) {
        (IpAddr::V4(_), SocketAddr::V4(_)) => TcpSocket::new_v4()?,
        (IpAddr::V6(_), SocketAddr::V6(_)) => TcpSocket::new_v6()?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "cannot connect to {dst} from the client's address {src} \
                     (redirect.originalSource): the address families differ"
                ),
            ));
        }
    };
    if dst.ip().to_canonical().is_loopback() && !src.is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "cannot connect to {dst} from the client's address {src} \
                 (redirect.originalSource): the kernel drops packets between a loopback \
                 address and another; give the workload an address of the machine's"
            ),
        ));
    }
    set_transparent(&socket, dst.is_ipv6())?;
    set_mark(&socket, mark)?;
    socket.set_nodelay(true)?;
    socket.bind(SocketAddr::new(src, 0)).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind the client's address {src} (redirect.originalSource): {e}"),
        )
    })?;
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "connect to {dst} from {src} timed out after {timeout:?} \
                 (are the original-source rules installed? `meshd redirect install`)"
            ),
        )),
    }
}

/// Sets `IP_TRANSPARENT` (`IPV6_TRANSPARENT` on an IPv6 socket), naming the capability a
/// refusal lacks.
fn set_transparent(socket: &impl AsFd, v6: bool) -> io::Result<()> {
    let sock = SockRef::from(socket);
    let result = if v6 {
        sock.set_ip_transparent_v6(true)
    } else {
        sock.set_ip_transparent_v4(true)
    };
    result.map_err(transparent_error)
}

/// Checks at start-up that this process may connect from a client's address: set
/// `IP_TRANSPARENT` and `SO_MARK` with `mark` on a socket of each family this kernel has
/// (IPv4 at least), as ztunnel refuses to start when original source is required and the
/// listener cannot be made transparent.
pub fn verify_can_be_transparent(mark: u32) -> io::Result<()> {
    let v4 = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    set_transparent(&v4, false)?;
    set_mark(&v4, mark)?;
    // A kernel without IPv6 has no IPv6 clients to keep the address of.
    if let Ok(v6) = Socket::new(Domain::IPV6, Type::STREAM, None) {
        set_transparent(&v6, true)?;
    }
    Ok(())
}

/// Explains a failed `IP_TRANSPARENT`, naming the capability that is missing.
fn transparent_error(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot set IP_TRANSPARENT ({e}): meshd needs CAP_NET_ADMIN (or CAP_NET_RAW) \
             to connect to local workloads from their clients' addresses"
        ),
    )
}

/// Checks at start-up that this process may set `SO_MARK` (it needs `CAP_NET_ADMIN`), as
/// ztunnel's `verify_set_mark`: without it every upstream connection would be captured again.
pub fn verify_can_mark() -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    set_mark(&socket, DEFAULT_MARK)
}

/// Explains a failed `SO_MARK`, naming the capability that is missing.
fn mark_error(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot set SO_MARK ({e}): meshd needs CAP_NET_ADMIN to mark its own sockets, \
             or the redirect rules would capture its upstream connections too"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The permission error names the capability an operator must grant.
    #[test]
    fn mark_error_names_capability() {
        let e = mark_error(io::Error::from_raw_os_error(1));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        assert!(e.to_string().contains("SO_MARK"), "{e}");
    }

    // The transparent-socket error names the capability an operator must grant.
    #[test]
    fn transparent_error_names_capability() {
        let e = transparent_error(io::Error::from_raw_os_error(1));
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("CAP_NET_ADMIN"), "{e}");
        assert!(e.to_string().contains("IP_TRANSPARENT"), "{e}");
    }

    // What no socket can do is refused before any socket call, saying why: a client of the
    // other family, a workload on loopback from another machine's address.
    #[tokio::test]
    async fn impossible_transparent_connects_are_refused() {
        for (src, why) in [("::2", "address families differ"), ("10.0.0.1", "loopback")] {
            let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
            let src: IpAddr = src.parse().unwrap();
            let err = connect_transparent(src, dst, DEFAULT_MARK, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{src}");
            assert!(err.to_string().contains(why), "{err}");
        }
        // A v4-mapped client is an IPv4 one.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(mapped.to_canonical(), IpAddr::from([127, 0, 0, 1]));
    }

    // As root (the test environment), a socket may be transparent, and one bound to a local
    // address connects from it with the option set.
    #[tokio::test]
    async fn transparent_connect_as_root() {
        verify_can_be_transparent(DEFAULT_MARK).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let src: IpAddr = "127.0.0.2".parse().unwrap();
        let (stream, accepted) = tokio::join!(
            connect_transparent(src, addr, DEFAULT_MARK, Duration::from_secs(5)),
            listener.accept()
        );
        let (stream, (_, peer)) = (stream.unwrap(), accepted.unwrap());
        assert_eq!(peer.ip(), src);
        assert!(SockRef::from(&stream).ip_transparent_v4().unwrap());
        assert_eq!(SockRef::from(&stream).mark().unwrap(), DEFAULT_MARK);
    }

    // As root (the test environment), marking is permitted and sticks.
    #[test]
    fn can_mark_as_root() {
        verify_can_mark().unwrap();
        let socket = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        set_mark(&socket, 0x539).unwrap();
        assert_eq!(socket.mark().unwrap(), 0x539);
    }

    // A connection that was never redirected has no original destination, and says so.
    #[tokio::test]
    async fn original_dst_of_plain_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (_client, (accepted, _)) = (client.unwrap(), accepted.unwrap());
        let err = original_dst(&accepted).unwrap_err();
        assert!(err.to_string().contains("SO_ORIGINAL_DST"), "{err}");
    }

    // Connecting to a port nobody listens on fails fast rather than hanging.
    #[tokio::test]
    async fn connect_marked_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = connect_marked(addr, DEFAULT_MARK, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
