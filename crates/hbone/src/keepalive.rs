//! HTTP/2 PING keepalive, as ztunnel's `do_ping_pong`: a PING every interval, and a connection
//! whose peer does not answer within the timeout is declared dead.
//!
//! TCP keepalive alone takes minutes to notice a vanished peer, and a pooled connection to a
//! dead peer would swallow new tunnels until then.

use h2::{Ping, PingPong};

use crate::{Error, Keepalive};

/// Runs until the peer fails to answer a PING in time (or the connection is gone); returns
/// why. Must be polled alongside the connection, which is what delivers the PONG.
pub(crate) async fn run(mut pings: PingPong, settings: Keepalive) -> Error {
    loop {
        tokio::time::sleep(settings.interval).await;
        match tokio::time::timeout(settings.timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return Error::h2(e),
            Err(_) => {
                return Error::Timeout {
                    what: "keepalive ping",
                    after: settings.timeout,
                };
            }
        }
    }
}

/// A keepalive that never fires, for a connection whose `PingPong` was already taken.
pub(crate) async fn never() -> Error {
    std::future::pending().await
}
