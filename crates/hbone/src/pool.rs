//! The HTTP/2 connection pool behind [`Client`](crate::Client).
//!
//! Keyed by (local identity, expected peer identity, peer address), as ztunnel's
//! `WorkloadKey` minus the source IP (meshd does not spoof sources). The local identity is the
//! one presented (the source workload's, with one identity per local workload), so two
//! source identities never share a connection: the server authorizes by the client
//! certificate, once per connection. Per key: a list of
//! connections, each with a slot counter capped at min(our stream limit, the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS), and one shared dial in flight ([`DialSlot`]) so concurrent
//! requests wait for one handshake, and share its failure, instead of each dialing in turn.
//!
//! Each connection has a driver task that polls h2, runs the PING keepalive and closes the
//! connection once it has been unused for the idle timeout, or for the shorter surplus timeout
//! while an older connection to the same key is open: checkout fills the oldest connection
//! first, so after a burst the extra connections drain and go, and one stays for reuse. A connection that fails (keepalive,
//! I/O error, GOAWAY) is marked closed before anything else, so it is never handed out again,
//! and removed from the pool when its driver ends. The driver also re-verifies the server's
//! certificate chain on every rotation and at each certificate's expiry; a chain that no longer
//! verifies evicts the connection at once (the next request redials, and meets the current
//! trust bundle), and its open streams get the revocation grace period to finish.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use meshd_identity::{IdentityHandle, SpiffeId};

use crate::dial::{DialSlot, Dialed, H2Connection, dial};
use crate::revoke::{self, PeerChain};
use crate::{ClientSettings, Error, keepalive};

/// Set in a connection's slot word once it must not take new streams.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// How long an idle-closed connection may take to say GOAWAY and close TLS cleanly.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The identity of a pooled connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) local: SpiffeId,
    pub(crate) peer: SpiffeId,
    pub(crate) addr: SocketAddr,
}

pub(crate) struct Pool {
    settings: ClientSettings,
    keys: Mutex<HashMap<PoolKey, Arc<KeyEntry>>>,
    next_id: AtomicU64,
    opened: AtomicU64,
}

struct KeyEntry {
    // The dial in flight, so a burst to a new key opens one connection, not hundreds.
    dial: Arc<DialSlot<Arc<PooledConn>>>,
    conns: Mutex<Vec<Arc<PooledConn>>>,
    tls: Arc<rustls::ClientConfig>,
}

struct PooledConn {
    id: u64,
    send: SendRequest<Bytes>,
    state: Arc<ConnState>,
}

/// Stream accounting shared by the pool, the driver and every open stream's [`SlotGuard`].
pub(crate) struct ConnState {
    // Streams in use, plus the CLOSED bit.
    slots: AtomicUsize,
    limit: usize,
    idle_since: Mutex<Instant>,
}

impl ConnState {
    fn try_reserve(self: &Arc<Self>, peer_limit: usize) -> Option<SlotGuard> {
        let limit = self.limit.min(peer_limit);
        let mut current = self.slots.load(Ordering::Acquire);
        loop {
            if current & CLOSED != 0 || current >= limit {
                return None;
            }
            match self.slots.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(SlotGuard {
                        state: Arc::clone(self),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    fn close(&self) {
        self.slots.fetch_or(CLOSED, Ordering::AcqRel);
    }

    fn is_closed(&self) -> bool {
        self.slots.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Closes the connection if it has no streams and has had none for `timeout`.
    fn close_if_idle(&self, timeout: Duration) -> bool {
        if lock(&self.idle_since).elapsed() < timeout {
            return false;
        }
        self.slots
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// One stream's claim on a pooled connection; released when the tunnel is dropped.
pub(crate) struct SlotGuard {
    state: Arc<ConnState>,
}

impl SlotGuard {
    /// Stops the connection from being handed out again (it failed under us).
    pub(crate) fn mark_broken(&self) {
        self.state.close();
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let before = self.state.slots.fetch_sub(1, Ordering::AcqRel);
        if before & !CLOSED == 1 {
            *lock(&self.state.idle_since) = Instant::now();
        }
    }
}

impl Pool {
    pub(crate) fn new(settings: ClientSettings) -> Pool {
        Pool {
            settings,
            keys: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            opened: AtomicU64::new(0),
        }
    }

    pub(crate) fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    /// A slot on a connection for `key`: a reusable one if any has room, else one on the
    /// connection being dialed (joining the dial in flight, or starting it). `identity` is
    /// the one presented, whose ID is `key.local`.
    pub(crate) async fn checkout(
        self: &Arc<Self>,
        key: &PoolKey,
        identity: &IdentityHandle,
    ) -> Result<(SendRequest<Bytes>, SlotGuard), Error> {
        let entry = self.entry(key, identity)?;
        loop {
            if let Some(found) = entry.reserve() {
                return Ok(found);
            }
            let conn = entry
                .dial
                .join_or_start(|| self.open(key.clone(), &entry, identity.clone()))
                .await?;
            // A server announcing zero streams still gets one from each dial, so a request
            // always makes progress (the response timeout bounds the wait for its stream).
            let peer_limit = conn.send.current_max_send_streams().max(1);
            if let Some(slot) = conn.state.try_reserve(peer_limit) {
                return Ok((conn.send.clone(), slot));
            }
            if conn.state.is_closed() {
                return Err(Error::Pool(
                    "new connection closed before its first stream".into(),
                ));
            }
            // Full already: more requests shared the dial than it has streams; dial another.
        }
    }

    /// Opens a connection for `key` and adds it to the pool: the future a [`DialSlot`] shares.
    /// It holds the pool and the entry weakly, since the entry stores it.
    fn open(
        self: &Arc<Self>,
        key: PoolKey,
        entry: &Arc<KeyEntry>,
        identity: IdentityHandle,
    ) -> impl Future<Output = Result<Arc<PooledConn>, Error>> + Send + 'static {
        let pool = Arc::downgrade(self);
        let weak_entry = Arc::downgrade(entry);
        let tls = entry.tls.clone();
        let settings = self.settings.clone();
        async move {
            let Dialed {
                send,
                mut connection,
                peer_chain,
                deadline,
            } = dial(key.addr, tls, &settings).await?;
            let id = {
                let pool = pool
                    .upgrade()
                    .ok_or_else(|| Error::Pool("client dropped".into()))?;
                pool.opened.fetch_add(1, Ordering::Relaxed);
                pool.next_id.fetch_add(1, Ordering::Relaxed)
            };
            let state = Arc::new(ConnState {
                slots: AtomicUsize::new(0),
                limit: settings.max_streams_per_connection as usize,
                idle_since: Mutex::new(Instant::now()),
            });
            let pings = connection.ping_pong();
            let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
            tokio::spawn(drive(
                connection,
                pings,
                ready_tx,
                Driver {
                    state: Arc::clone(&state),
                    pool,
                    key,
                    id,
                    settings: settings.clone(),
                    identity,
                    peer_chain,
                },
            ));
            // One PING round trip before first use: the server's SETTINGS precede its PONG, so
            // the stream limit read by `checkout` is the server's and not our guess; and under
            // TLS 1.3 a server rejecting our certificate is only heard on this first read.
            match tokio::time::timeout_at(deadline, ready_rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(Error::Pool("connection task ended".into())),
                Err(_) => {
                    state.close();
                    return Err(Error::Timeout {
                        what: "http2 settings exchange",
                        after: settings.handshake_timeout,
                    });
                }
            }
            let conn = Arc::new(PooledConn { id, send, state });
            if let Some(entry) = weak_entry.upgrade() {
                lock(&entry.conns).push(Arc::clone(&conn));
            }
            Ok(conn)
        }
    }

    fn entry(&self, key: &PoolKey, identity: &IdentityHandle) -> Result<Arc<KeyEntry>, Error> {
        let mut keys = lock(&self.keys);
        if let Some(entry) = keys.get(key) {
            return Ok(Arc::clone(entry));
        }
        let tls = meshd_identity::tls::client_config(identity, &key.peer)?;
        let entry = Arc::new(KeyEntry {
            dial: DialSlot::new(),
            conns: Mutex::new(Vec::new()),
            tls,
        });
        keys.insert(key.clone(), Arc::clone(&entry));
        Ok(entry)
    }

    /// Drops a finished connection, and its key when nothing else refers to it.
    fn remove(&self, key: &PoolKey, id: u64) {
        let mut keys = lock(&self.keys);
        let Some(entry) = keys.get(key) else {
            return;
        };
        let empty = {
            let mut conns = lock(&entry.conns);
            conns.retain(|c| c.id != id);
            conns.is_empty()
        };
        // Every handle to an entry is cloned under this lock, so a count of one means no
        // checkout is between `entry()` and pushing a new connection.
        if empty && Arc::strong_count(entry) == 1 {
            keys.remove(key);
        }
    }

    /// Whether a connection for `key` older than `id` is still open: then `id` is surplus.
    fn has_older(&self, key: &PoolKey, id: u64) -> bool {
        let keys = lock(&self.keys);
        keys.get(key).is_some_and(|entry| {
            lock(&entry.conns)
                .iter()
                .any(|c| c.id < id && !c.state.is_closed())
        })
    }

    pub(crate) fn connection_count(&self) -> usize {
        lock(&self.keys)
            .values()
            .map(|entry| lock(&entry.conns).len())
            .sum()
    }

    pub(crate) fn connections_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl KeyEntry {
    fn reserve(&self) -> Option<(SendRequest<Bytes>, SlotGuard)> {
        let conns = lock(&self.conns);
        conns.iter().find_map(|conn| {
            let slot = conn
                .state
                .try_reserve(conn.send.current_max_send_streams())?;
            Some((conn.send.clone(), slot))
        })
    }
}

/// What a connection's driver needs besides the connection itself.
struct Driver {
    state: Arc<ConnState>,
    pool: Weak<Pool>,
    key: PoolKey,
    id: u64,
    settings: ClientSettings,
    identity: IdentityHandle,
    peer_chain: PeerChain,
}

/// Polls one pooled connection until it fails, its keepalive fails, it has been idle, or the
/// server's certificate chain stops verifying.
async fn drive(
    mut connection: H2Connection,
    mut pings: Option<h2::PingPong>,
    ready: tokio::sync::oneshot::Sender<Result<(), Error>>,
    driver: Driver,
) {
    let Driver {
        state,
        pool,
        key,
        id,
        settings,
        identity,
        peer_chain,
    } = driver;
    if let Some(p) = pings.as_mut() {
        let warmup = tokio::select! {
            pong = p.ping(h2::Ping::opaque()) => pong.map(|_| ()).map_err(|e| h2_error(key.addr, e)),
            done = &mut connection => Err(match done {
                Ok(()) => Error::ClosedDuringSetup,
                Err(e) => h2_error(key.addr, e),
            }),
        };
        let failed = warmup.is_err();
        if ready.send(warmup).is_err() || failed {
            state.close();
            return;
        }
    } else if ready.send(Ok(())).is_err() {
        return;
    }
    let keepalive = async {
        match pings {
            Some(pings) => keepalive::run(pings, settings.keepalive).await,
            None => keepalive::never().await,
        }
    };
    tokio::pin!(keepalive);
    let revoked = revoke::revoked(&identity, &peer_chain);
    tokio::pin!(revoked);
    // Checking a few times per timeout keeps an idle connection's lifetime within 25 % of it.
    let shortest = settings.surplus_idle_timeout.min(settings.idle_timeout);
    let period = (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut idle_check = tokio::time::interval(period);
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = &mut connection => {
                state.close();
                if let Err(e) = result {
                    tracing::debug!(peer = %key.addr, error = %e, "hbone connection failed");
                }
                break;
            }
            error = &mut keepalive => {
                state.close();
                tracing::warn!(peer = %key.addr, %error, "hbone keepalive failed; closing connection");
                // Dropping the connection closes the socket; its streams see an error.
                break;
            }
            error = &mut revoked => {
                state.close();
                tracing::warn!(peer = %key.addr, peer.identity = %key.peer, %error,
                    "peer certificate no longer verifies; closing hbone connection");
                // Evicted at once, so the next request redials and meets the current bundle.
                // Without the pool's SendRequest, h2 says GOAWAY and closes as soon as the open
                // streams end; those that outlast the grace period are cut.
                if let Some(pool) = pool.upgrade() {
                    pool.remove(&key, id);
                }
                let _ = tokio::time::timeout(settings.revocation_grace, &mut connection).await;
                return;
            }
            _ = idle_check.tick() => {
                let surplus = pool.upgrade().is_some_and(|pool| pool.has_older(&key, id));
                let timeout = if surplus {
                    shortest
                } else {
                    settings.idle_timeout
                };
                if state.close_if_idle(timeout) {
                    tracing::debug!(peer = %key.addr, "closing idle hbone connection");
                    // Releasing the pool's SendRequest lets h2 send GOAWAY and close TLS once
                    // no handle and no stream is left.
                    if let Some(pool) = pool.upgrade() {
                        pool.remove(&key, id);
                    }
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut connection).await;
                    return;
                }
            }
        }
    }
    if let Some(pool) = pool.upgrade() {
        pool.remove(&key, id);
    }
}

/// An error during connection setup. An I/O error there is almost always the server's TLS
/// alert rejecting our certificate (TLS 1.3 delivers it on the client's first read), so it is
/// reported as a TLS error, with the typed identity cause when the alert carries one.
fn h2_error(addr: SocketAddr, e: h2::Error) -> Error {
    if !e.is_io() {
        return Error::h2(e);
    }
    match e.into_io() {
        Some(io) => Error::tls(addr, io),
        None => Error::ClosedDuringSetup,
    }
}

/// Locks a std mutex, ignoring poisoning: the guarded data is counters and lists that stay
/// consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
