//! SOCKS5 (RFC 1928) as an outbound entry: CONNECT only, to an IPv4, IPv6 or host-name target;
//! no authentication, or a user name (RFC 1929) that names the local workload whose identity
//! the connection presents (its password is ignored: the user name selects, it does not
//! authenticate; who can reach the port is what `socks5.allowRemote` guards). The reply is sent once the stack has decided, so the application sees a
//! refusal as a SOCKS5 error code rather than a connection that opens and closes.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::conn::{BoxIo, Downstream, Refusal, Target};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
/// RFC 1929 user name and password.
const USER_PASSWORD: u8 = 2;
/// The version of RFC 1929's sub-negotiation.
const USER_PASSWORD_VERSION: u8 = 1;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;

/// SOCKS5 reply codes.
mod reply {
    pub const SUCCEEDED: u8 = 0;
    pub const GENERAL_FAILURE: u8 = 1;
    pub const NOT_ALLOWED: u8 = 2;
    pub const HOST_UNREACHABLE: u8 = 4;
    pub const COMMAND_NOT_SUPPORTED: u8 = 7;
    pub const ADDRESS_NOT_SUPPORTED: u8 = 8;
}

/// A SOCKS5 client whose request was read and not yet answered.
pub struct Socks5Request {
    stream: TcpStream,
    user: Option<String>,
}

impl Socks5Request {
    /// The RFC 1929 user name the client sent: the local workload it speaks for.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }
}

/// How long a client has to send its greeting and request: a local application sends both at
/// once, so a few seconds is generous, and an idle client cannot hold a socket for ever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the greeting and the CONNECT request within `timeout`. Protocol errors are answered
/// as SOCKS5 allows and returned as errors; a client too slow gets `TimedOut`.
pub async fn handshake(
    stream: TcpStream,
    timeout: Duration,
) -> io::Result<(Socks5Request, Target)> {
    tokio::time::timeout(timeout, read_request(stream))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("SOCKS5: no complete request within {timeout:?}"),
            ))
        })
}

async fn read_request(mut stream: TcpStream) -> io::Result<(Socks5Request, Target)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await?;
    if header[0] != VERSION {
        return Err(invalid("not SOCKS version 5"));
    }
    let mut methods = vec![0u8; usize::from(header[1])];
    stream.read_exact(&mut methods).await?;
    let user = if methods.contains(&USER_PASSWORD) {
        stream.write_all(&[VERSION, USER_PASSWORD]).await?;
        Some(read_user(&mut stream).await?)
    } else if methods.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_AUTH]).await?;
        None
    } else {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(invalid(
            "client offers neither no authentication nor a user name",
        ));
    };

    let mut request = [0u8; 4];
    stream.read_exact(&mut request).await?;
    if request[0] != VERSION {
        return Err(invalid("not SOCKS version 5"));
    }
    if request[1] != CMD_CONNECT {
        send_reply(&mut stream, reply::COMMAND_NOT_SUPPORTED).await?;
        return Err(invalid("only CONNECT is supported"));
    }
    let target = match request[3] {
        1 => {
            let mut ip = [0u8; 4];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Target::Addr(SocketAddr::new(Ipv4Addr::from(ip).into(), port))
        }
        4 => {
            let mut ip = [0u8; 16];
            stream.read_exact(&mut ip).await?;
            let port = stream.read_u16().await?;
            Target::Addr(SocketAddr::new(Ipv6Addr::from(ip).into(), port))
        }
        3 => {
            let len = stream.read_u8().await?;
            let mut name = vec![0u8; usize::from(len)];
            stream.read_exact(&mut name).await?;
            let port = stream.read_u16().await?;
            let name = String::from_utf8(name).map_err(|_| invalid("host name is not UTF-8"))?;
            Target::Host(name, port)
        }
        _ => {
            send_reply(&mut stream, reply::ADDRESS_NOT_SUPPORTED).await?;
            return Err(invalid("unknown address type"));
        }
    };
    Ok((Socks5Request { stream, user }, target))
}

/// RFC 1929's sub-negotiation: the user name (a workload key, `namespace/name`) is kept, the
/// password read and dropped. Answered with success: whether the workload is local is the
/// entry's decision, answered as a refused CONNECT.
async fn read_user(stream: &mut TcpStream) -> io::Result<String> {
    let version = stream.read_u8().await?;
    if version != USER_PASSWORD_VERSION {
        return Err(invalid("unknown user name sub-negotiation version"));
    }
    let len = stream.read_u8().await?;
    let mut name = vec![0u8; usize::from(len)];
    stream.read_exact(&mut name).await?;
    let len = stream.read_u8().await?;
    let mut password = vec![0u8; usize::from(len)];
    stream.read_exact(&mut password).await?;
    let Ok(name) = String::from_utf8(name) else {
        // Status 1: failure; the client must close.
        stream.write_all(&[USER_PASSWORD_VERSION, 1]).await?;
        return Err(invalid("user name is not UTF-8"));
    };
    stream.write_all(&[USER_PASSWORD_VERSION, 0]).await?;
    Ok(name)
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("SOCKS5: {message}"))
}

async fn send_reply(stream: &mut TcpStream, code: u8) -> io::Result<()> {
    // The bound address is not meaningful through a proxy; 0.0.0.0:0 as most servers send.
    stream
        .write_all(&[VERSION, code, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
}

impl Downstream for Socks5Request {
    fn accept(mut self: Box<Self>) -> BoxFuture<'static, io::Result<BoxIo>> {
        Box::pin(async move {
            send_reply(&mut self.stream, reply::SUCCEEDED).await?;
            Ok(Box::new(self.stream) as BoxIo)
        })
    }

    fn refuse(mut self: Box<Self>, refusal: Refusal) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let code = match refusal {
                Refusal::Denied | Refusal::BadDestination => reply::NOT_ALLOWED,
                Refusal::Unreachable => reply::HOST_UNREACHABLE,
                Refusal::Limited => reply::GENERAL_FAILURE,
            };
            let _ = send_reply(&mut self.stream, code).await;
        })
    }
}
