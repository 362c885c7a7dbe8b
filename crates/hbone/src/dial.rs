//! Dialing a peer: one mutual-TLS HTTP/2 connection ([`dial`]), and one dial in flight per
//! pool key, shared by every request that needs it ([`DialSlot`]).
//!
//! A request that finds no usable connection joins the dial already under way, or starts one;
//! everyone waiting gets its result, success or failure, at the same moment. So a burst to a new
//! peer opens one connection, and N requests to a dead peer fail together after one connect
//! timeout instead of one after another (N × the timeouts, which a lock around the dial gave).
//! Keys are independent: a dead peer never delays a request to another.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use h2::client::SendRequest;
use meshd_identity::Purpose;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::revoke::PeerChain;
use crate::{ClientSettings, Error, socket};

/// The HTTP/2 connection type the pool drives: h2 over rustls over TCP.
pub(crate) type H2Connection = h2::client::Connection<TlsStream<TcpStream>, Bytes>;

type SharedDial<T> = Shared<BoxFuture<'static, Result<T, Error>>>;

/// The dial in flight for one key, if any.
pub(crate) struct DialSlot<T: Clone> {
    current: Mutex<Option<(u64, SharedDial<T>)>>,
    next_id: AtomicU64,
}

impl<T: Clone + Send + Sync + 'static> DialSlot<T> {
    pub(crate) fn new() -> Arc<DialSlot<T>> {
        Arc::new(DialSlot {
            current: Mutex::new(None),
            next_id: AtomicU64::new(0),
        })
    }

    /// Waits for the dial in flight, or starts `start()` as it.
    ///
    /// The dial runs as long as anyone waits for it; if every waiter gives up, the next caller
    /// resumes it rather than starting over. `start`'s future must not hold the slot's owner
    /// strongly (it is stored inside it).
    pub(crate) async fn join_or_start<F, Fut>(self: &Arc<Self>, start: F) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        let dial = {
            let mut current = lock(&self.current);
            match &*current {
                Some((_, dial)) => dial.clone(),
                None => {
                    let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                    let slot: Weak<DialSlot<T>> = Arc::downgrade(self);
                    let attempt = start();
                    let dial = async move {
                        let result = attempt.await;
                        // Finished: whoever comes next dials afresh (a failure is not cached).
                        if let Some(slot) = slot.upgrade() {
                            let mut current = lock(&slot.current);
                            if current.as_ref().is_some_and(|(cur, _)| *cur == id) {
                                *current = None;
                            }
                        }
                        result
                    }
                    .boxed()
                    .shared();
                    *current = Some((id, dial.clone()));
                    dial
                }
            }
        };
        dial.await
    }
}

/// A new connection to a peer, before the pool's first PING round trip on it.
pub(crate) struct Dialed {
    pub(crate) send: SendRequest<Bytes>,
    pub(crate) connection: H2Connection,
    /// The certificates the server presented, to verify again on every rotation.
    pub(crate) peer_chain: PeerChain,
    /// The end of the handshake time: setup steps after the handshake (the pool's PING round
    /// trip) share it, so one dial never takes longer than connect + handshake timeouts.
    pub(crate) deadline: tokio::time::Instant,
}

/// Opens TCP, then mTLS, then HTTP/2 to `addr`.
pub(crate) async fn dial(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    settings: &ClientSettings,
) -> Result<Dialed, Error> {
    let tcp = match tokio::time::timeout(
        settings.connect_timeout,
        socket::connect(addr, settings.socket_mark),
    )
    .await
    {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => {
            return Err(Error::Connect {
                addr,
                source: crate::Cause::new(e),
            });
        }
        Err(_) => {
            return Err(Error::Timeout {
                what: "tcp connect",
                after: settings.connect_timeout,
            });
        }
    };
    socket::tune(&tcp);
    let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
    let handshake = async {
        let tls = meshd_identity::tls::connect(tls, tcp)
            .await
            .map_err(|e| Error::tls(addr, e))?;
        let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
        let peer_chain = PeerChain::new(certs, Purpose::ServerAuth);
        let (send, connection) =
            h2_builder(settings)
                .handshake(tls)
                .await
                .map_err(|e| Error::Http2Handshake {
                    addr,
                    source: crate::Cause::new(e),
                })?;
        Ok(Dialed {
            send,
            connection,
            peer_chain,
            deadline,
        })
    };
    tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| Error::Timeout {
            what: "tls and http2 handshake",
            after: settings.handshake_timeout,
        })?
}

fn h2_builder(settings: &ClientSettings) -> h2::client::Builder {
    let h = &settings.http2;
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(h.stream_window)
        .initial_connection_window_size(h.connection_window)
        .max_frame_size(h.max_frame_size)
        .max_header_list_size(h.max_header_list_size)
        .max_send_buffer_size(h.max_send_buffer)
        .enable_push(false)
        // Until the server's SETTINGS arrive, assume it allows what the pool will use.
        .initial_max_send_streams(settings.max_streams_per_connection as usize);
    builder
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_attempt_and_its_failure() {
        // Ten callers, one attempt, the same error for all; the next caller starts afresh.
        let slot = DialSlot::<u32>::new();
        let started = Arc::new(AtomicUsize::new(0));
        let call = || {
            let (slot, started) = (Arc::clone(&slot), Arc::clone(&started));
            async move {
                slot.join_or_start(|| {
                    started.fetch_add(1, Ordering::Relaxed);
                    async {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        Err(Error::Pool("dead".into()))
                    }
                })
                .await
            }
        };
        let results = futures::future::join_all((0..10).map(|_| call())).await;
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(Error::Pool(m)) if m == "dead"))
        );
        assert_eq!(started.load(Ordering::Relaxed), 1);
        let _ = call().await;
        assert_eq!(started.load(Ordering::Relaxed), 2);
    }
}
