//! The SOCKS5 handshake (`meshd_proxy::socks5::handshake`) over a real loopback TCP connection.
//!
//! The input is everything the client sends, then it half-closes. The server must either refuse
//! or produce exactly the target a straightforward RFC 1928 reading of the bytes gives (the
//! reference below; with RFC 1929's user name sub-negotiation when the client offers it, which
//! meshd prefers), and what it writes back must be the replies that reading calls for.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use meshd_proxy::socks5;
use meshd_proxy::{Downstream, Refusal, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What RFC 1928 says about the bytes: the target of a complete CONNECT, or none.
pub fn reference(data: &[u8]) -> Option<Target> {
    let (&[5, n], rest) = data.split_first_chunk::<2>()? else {
        return None;
    };
    let (methods, rest) = rest.split_at_checked(usize::from(n))?;
    let rest = if methods.contains(&2) {
        user_name(rest)?.1
    } else if methods.contains(&0) {
        rest
    } else {
        return None;
    };
    let (&[5, 1, _, atyp], rest) = rest.split_first_chunk::<4>()? else {
        return None;
    };
    let port = |b: &[u8]| -> Option<u16> { Some(u16::from_be_bytes(*b.first_chunk::<2>()?)) };
    match atyp {
        1 => {
            let (ip, rest) = rest.split_first_chunk::<4>()?;
            Some(Target::Addr(SocketAddr::new(
                Ipv4Addr::from(*ip).into(),
                port(rest)?,
            )))
        }
        4 => {
            let (ip, rest) = rest.split_first_chunk::<16>()?;
            Some(Target::Addr(SocketAddr::new(
                Ipv6Addr::from(*ip).into(),
                port(rest)?,
            )))
        }
        3 => {
            let (&len, rest) = rest.split_first()?;
            let (name, rest) = rest.split_at_checked(usize::from(len))?;
            let name = String::from_utf8(name.to_vec()).ok()?;
            Some(Target::Host(name, port(rest)?))
        }
        _ => None,
    }
}

/// RFC 1929: `[1, ulen, user…, plen, password…]`; the user name (UTF-8) and what follows.
fn user_name(data: &[u8]) -> Option<(String, &[u8])> {
    let (&[1, len], rest) = data.split_first_chunk::<2>()? else {
        return None;
    };
    let (user, rest) = rest.split_at_checked(usize::from(len))?;
    let (&len, rest) = rest.split_first()?;
    let (_password, rest) = rest.split_at_checked(usize::from(len))?;
    Some((String::from_utf8(user.to_vec()).ok()?, rest))
}

struct Loopback {
    rt: tokio::runtime::Runtime,
    listener: TcpListener,
}

fn loopback() -> &'static Loopback {
    static LOOPBACK: OnceLock<Loopback> = OnceLock::new();
    LOOPBACK.get_or_init(|| {
        // Real sockets need real time: a paused clock would fire the handshake timeout while the
        // kernel still carries the bytes.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("runtime: {e}"),
        };
        let listener = rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        Loopback { rt, listener }
    })
}

/// Runs one handshake; panics when meshd disagrees with the reference.
pub fn run(data: &[u8]) {
    let lo = loopback();
    let expected = reference(data);
    lo.rt.block_on(async {
        let addr = lo
            .listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), lo.listener.accept());
        let mut client = client.unwrap_or_else(|e| panic!("connect: {e}"));
        let (server, _) = accepted.unwrap_or_else(|e| panic!("accept: {e}"));
        let client_side = async {
            // The server may stop reading and close early; later writes failing is expected.
            let _ = client.write_all(data).await;
            let _ = client.shutdown().await;
        };
        let server_side = async {
            let result = socks5::handshake(server, Duration::from_secs(5)).await;
            match result {
                Ok((request, target)) => {
                    let request: Box<dyn Downstream> = Box::new(request);
                    // Alternate answers so both reply paths run.
                    if data.len().is_multiple_of(2) {
                        drop(request.accept().await);
                    } else {
                        request.refuse(Refusal::Denied).await;
                    }
                    Some(target)
                }
                Err(_) => None,
            }
        };
        let ((), got) = tokio::join!(client_side, server_side);
        let mut replies = Vec::new();
        let read = client.read_to_end(&mut replies).await;
        assert_eq!(got, expected, "input {data:02x?}");
        // A server closing with the client's bytes unread sends RST, which may discard what
        // it wrote before: only a clean end of stream shows every reply.
        if read.is_ok() {
            check_replies(data, got.is_some(), &replies);
        }
    });
}

/// The bytes the server sent back are the ones the protocol calls for at the point it stopped.
fn check_replies(data: &[u8], connected: bool, replies: &[u8]) {
    let methods = || {
        data.get(2..2 + usize::from(data.get(1).copied().unwrap_or(0)))
            .filter(|_| data.first() == Some(&5))
    };
    let offers_user = methods().is_some_and(|m| m.contains(&2));
    let offers_no_auth = methods().is_some_and(|m| m.contains(&0));
    if data.len() >= 2 && data[0] == 5 && offers_user {
        // The user name method, then the sub-negotiation's status (when it was read whole).
        assert_eq!(replies.get(..2), Some(&[5u8, 2][..]), "method selection");
        if connected {
            assert_eq!(replies.get(2..4), Some(&[1u8, 0][..]), "user name status");
            let code = if data.len().is_multiple_of(2) { 0 } else { 2 };
            assert_eq!(
                &replies[4..],
                &[5, code, 0, 1, 0, 0, 0, 0, 0, 0],
                "CONNECT reply"
            );
        }
        return;
    }
    if data.len() < 2 || data[0] != 5 {
        assert!(
            replies.is_empty(),
            "replied to a non-SOCKS5 greeting: {replies:02x?}"
        );
        return;
    }
    if !offers_no_auth {
        // Either the method list was cut short (no reply) or it lacks "no authentication".
        assert!(
            replies.is_empty() || replies == [5, 0xff],
            "replies {replies:02x?}"
        );
        return;
    }
    assert_eq!(replies.get(..2), Some(&[5u8, 0][..]), "method selection");
    if connected {
        let code = if data.len().is_multiple_of(2) { 0 } else { 2 };
        assert_eq!(
            &replies[2..],
            &[5, code, 0, 1, 0, 0, 0, 0, 0, 0],
            "CONNECT reply"
        );
    }
}
