//! One server lifecycle for both transports: what HTTP/2 (`server/http2.rs`) and HTTP/3
//! (`quic/server.rs`) share, so the two cannot drift apart.
//!
//! - Where a server is in its life ([`Phase`]: running, draining, forced to stop), watched by
//!   every task, and the [`ServerHandle`](super::ServerHandle) side that moves it.
//! - Admission: the handshake budget before authentication, `max_connections` after it, the
//!   count of live connections, and the report of every connection refused on the way
//!   ([`Admission`], [`handshake`]).
//! - Each authenticated connection's [`Lifecycle`]: its streams, the idle check, draining
//!   (GOAWAY, then let open streams finish) and revocation (the client's chain stopped
//!   verifying: no new streams, a grace period for open ones, then close). The transport only
//!   turns the [`Step`]s this yields into its own frames.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshd_identity::{IdentityHandle, SpiffeId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use crate::admission::{HandshakeBudget, HandshakeTicket, Refusal};
use crate::observe::{Observer, Refused, Stage};
use crate::peer::Transport;
use crate::revoke::{self, PeerChain};
use crate::{Error, ServerSettings};

/// After the drain deadline, how long connections get to send their final GOAWAY and close.
pub(crate) const FORCE_GRACE: Duration = Duration::from_secs(1);

/// Where a server is in its life; every connection task watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Stop accepting, GOAWAY everyone, let open streams finish.
    Draining,
    /// The deadline passed: reset what is left.
    Force,
}

/// Waits until the phase is at least `target` (or the server is gone).
pub(crate) async fn reached(phase: &mut watch::Receiver<Phase>, target: Phase) {
    let at_least = |p: &Phase| match target {
        Phase::Running => true,
        Phase::Draining => *p != Phase::Running,
        Phase::Force => *p == Phase::Force,
    };
    // An error means the handle is gone, which only happens as the task is aborted.
    let _ = phase.wait_for(at_least).await;
}

/// How log lines name a transport's connections.
fn label(transport: Transport) -> &'static str {
    match transport {
        Transport::H2 => "hbone",
        Transport::H3 => "hbone/h3",
    }
}

/// What an accept loop checks before and after a handshake; one per server, cloned into each
/// connection task.
#[derive(Clone)]
pub(crate) struct Admission {
    pub(crate) budget: HandshakeBudget,
    /// Places for authenticated connections (`max_connections`).
    limit: Arc<Semaphore>,
    max_connections: usize,
    /// Connections held, handshakes included.
    pub(crate) active: Arc<AtomicUsize>,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) transport: Transport,
}

/// A connection admitted to its handshake: its place in the budget (given back once it
/// authenticates), and its count among the live connections (for as long as it lives).
pub(crate) struct Admitted {
    pub(crate) ticket: HandshakeTicket,
    pub(crate) active: ActiveGuard,
}

impl Admission {
    pub(crate) fn new(
        settings: &ServerSettings,
        observer: Arc<dyn Observer>,
        transport: Transport,
    ) -> Admission {
        Admission {
            budget: settings.handshake_budget(),
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            max_connections: settings.max_connections,
            active: Arc::new(AtomicUsize::new(0)),
            observer,
            transport,
        }
    }

    /// A place for a handshake from `peer_addr`, or `None` once the refusal is logged and
    /// reported. Closing at once tells the client to go elsewhere or retry, where queueing
    /// would hold its connect open for an unknown time.
    pub(crate) fn admit(&self, peer_addr: SocketAddr) -> Option<Admitted> {
        match self.budget.try_admit(peer_addr.ip()) {
            Ok(ticket) => Some(Admitted {
                ticket,
                active: ActiveGuard::new(&self.active),
            }),
            Err(refusal) => {
                log_refusal(refusal, peer_addr);
                self.observer.refused(&Refused {
                    stage: Stage::Budget,
                    peer_addr,
                    peer_identity: None,
                    authority: None,
                    transport: self.transport,
                    reason: refusal.reason(),
                    error: None,
                });
                None
            }
        }
    }

    /// The peer proved its identity: from here the connection counts against
    /// `max_connections`, not the handshake budget (its `ticket` goes back). Over the limit it
    /// is to be closed now, before HTTP is set up. The permit is held from authentication to
    /// the connection's end.
    pub(crate) fn authenticated(
        &self,
        ticket: HandshakeTicket,
    ) -> Result<OwnedSemaphorePermit, Error> {
        drop(ticket);
        Arc::clone(&self.limit)
            .try_acquire_owned()
            .map_err(|_| Error::ConnectionLimit {
                limit: self.max_connections,
            })
    }
}

/// Logs a connection closed before its handshake. Per-source refusals are what an abusive host
/// meets, at the rate it connects, so they are not worth a warning each.
fn log_refusal(refusal: Refusal, peer_addr: SocketAddr) {
    match refusal {
        Refusal::Total => tracing::warn!(
            src.addr = %peer_addr,
            "hbone handshake limit reached; closing new connection"
        ),
        Refusal::PerSource => tracing::debug!(
            src.addr = %peer_addr,
            "hbone per-source handshake limit reached; closing new connection"
        ),
    }
}

/// Counts a live connection for [`ServerHandle::active_connections`](super::ServerHandle).
pub(crate) struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(active: &Arc<AtomicUsize>) -> ActiveGuard {
        active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(Arc::clone(active))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a connection's handshake (TLS, authentication, HTTP set-up) within the handshake
/// timeout, unless the server starts draining first. A failure is logged and reported to the
/// observer (as [`Stage::ConnectionLimit`] or [`Stage::Handshake`]); `None` then, and on drain.
pub(crate) async fn handshake<T>(
    admission: &Admission,
    timeout: Duration,
    peer_addr: SocketAddr,
    phase: &mut watch::Receiver<Phase>,
    handshake: impl Future<Output = Result<T, Error>>,
) -> Option<T> {
    let label = label(admission.transport);
    let (stage, error) = tokio::select! {
        result = tokio::time::timeout(timeout, handshake) => match result {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(error)) => {
                tracing::warn!(src.addr = %peer_addr, %error, "{label} connection failed");
                let stage = match error {
                    Error::ConnectionLimit { .. } => Stage::ConnectionLimit,
                    _ => Stage::Handshake,
                };
                (stage, Some(error))
            }
            Err(_) => {
                tracing::warn!(src.addr = %peer_addr, "{label} handshake timed out");
                (Stage::Handshake, None)
            }
        },
        () = reached(phase, Phase::Draining) => return None,
    };
    let reason = match &error {
        Some(error) => error.to_string(),
        None => "handshake timed out".to_string(),
    };
    admission.observer.refused(&Refused {
        stage,
        peer_addr,
        peer_identity: None,
        authority: None,
        transport: admission.transport,
        reason: &reason,
        error: error.as_ref(),
    });
    None
}

/// What an authenticated connection must do next, as its [`Lifecycle`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Take no new streams (send GOAWAY) and let the open ones finish: the server drains, the
    /// connection was idle for the idle timeout, or the client's chain stopped verifying.
    /// Yielded once.
    GoAway,
    /// After [`Step::GoAway`], the last stream ended. Yielded once.
    Drained,
    /// Close now and reset what is left: the drain deadline passed, or the revocation grace
    /// period did.
    Close,
}

/// The life of one authenticated connection: its stream tasks, idle check, drain and
/// revocation. The transport's loop selects on [`Lifecycle::next`] beside its own accept and
/// acts on each [`Step`].
pub(crate) struct Lifecycle {
    transport: Transport,
    peer_addr: SocketAddr,
    peer_identity: SpiffeId,
    idle_timeout: Duration,
    revocation_grace: Duration,
    phase: watch::Receiver<Phase>,
    revoked: Pin<Box<dyn Future<Output = meshd_identity::Error> + Send>>,
    /// Running once the chain stopped verifying: when it ends, the connection closes.
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    idle_check: tokio::time::Interval,
    idle_since: Instant,
    draining: bool,
    /// A GOAWAY decided but not yet yielded (the server was draining already at the start).
    go_away: bool,
    drained: bool,
    streams: JoinSet<()>,
}

impl Lifecycle {
    /// The lifecycle of a connection from `peer_addr`, whose client proved `peer_identity`
    /// with `peer_chain` (re-verified against every new credential set of `identity`).
    pub(crate) fn new(
        settings: &ServerSettings,
        transport: Transport,
        (peer_addr, peer_identity): (SocketAddr, SpiffeId),
        identity: IdentityHandle,
        peer_chain: PeerChain,
        mut phase: watch::Receiver<Phase>,
    ) -> Lifecycle {
        // Checking a few times per timeout keeps an idle connection's lifetime within 25 % of
        // it.
        let period =
            (settings.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut idle_check = tokio::time::interval(period);
        idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let draining = *phase.borrow_and_update() != Phase::Running;
        Lifecycle {
            transport,
            peer_addr,
            peer_identity,
            idle_timeout: settings.idle_timeout,
            revocation_grace: settings.revocation_grace,
            phase,
            revoked: Box::pin(async move { revoke::revoked(&identity, &peer_chain).await }),
            grace: None,
            idle_check,
            idle_since: Instant::now(),
            draining,
            go_away: draining,
            drained: false,
            streams: JoinSet::new(),
        }
    }

    /// Whether new streams are refused unprocessed: the client's chain stopped verifying, so
    /// a request sent before our GOAWAY reached it is never served (it is safe to retry
    /// elsewhere).
    pub(crate) fn refusing(&self) -> bool {
        self.grace.is_some()
    }

    /// Runs one stream's task until it ends, the connection closes or the server is forced
    /// to stop.
    pub(crate) fn spawn(&mut self, stream: impl Future<Output = ()> + Send + 'static) {
        self.streams.spawn(stream);
    }

    /// Resets every open stream (their tasks are aborted).
    pub(crate) fn abort_streams(&mut self) {
        self.streams.abort_all();
    }

    /// Once the connection is gone: lets the stream tasks end on their own, or aborts them
    /// when the server is forced to stop.
    pub(crate) async fn finish(mut self) {
        tokio::select! {
            () = async { while self.streams.join_next().await.is_some() {} } => {}
            () = reached(&mut self.phase, Phase::Force) => self.streams.abort_all(),
        }
    }

    /// Waits for the next thing the connection must do. Cancel-safe: a transport's select
    /// may drop it whenever its own branch wins.
    pub(crate) async fn next(&mut self) -> Step {
        loop {
            if self.go_away {
                self.go_away = false;
                return Step::GoAway;
            }
            if self.draining && self.streams.is_empty() && !self.drained {
                self.drained = true;
                return Step::Drained;
            }
            tokio::select! {
                error = &mut self.revoked, if self.grace.is_none() => {
                    tracing::warn!(src.addr = %self.peer_addr, src.identity = %self.peer_identity,
                        %error, "client certificate no longer verifies; closing {} connection",
                        label(self.transport));
                    // Graceful rather than abrupt (ztunnel cuts at once on a CRL revocation) so
                    // a rotation that drops a root does not cut transfers mid-byte when they
                    // could finish; the grace bounds what a revoked peer keeps.
                    self.grace = Some(Box::pin(tokio::time::sleep(self.revocation_grace)));
                    self.start_draining();
                }
                () = sleep_opt(&mut self.grace) => return Step::Close,
                changed = self.phase.changed() => {
                    // A closed channel means the handle is gone: treat it as the deadline.
                    let now = match changed {
                        Ok(()) => *self.phase.borrow_and_update(),
                        Err(_) => Phase::Force,
                    };
                    match now {
                        Phase::Force => return Step::Close,
                        Phase::Draining => self.start_draining(),
                        Phase::Running => {}
                    }
                }
                Some(_) = self.streams.join_next(), if !self.streams.is_empty() => {
                    if self.streams.is_empty() {
                        self.idle_since = Instant::now();
                    }
                }
                _ = self.idle_check.tick(), if !self.draining => {
                    if self.streams.is_empty() && self.idle_since.elapsed() >= self.idle_timeout {
                        tracing::debug!(src.addr = %self.peer_addr, "closing idle {} connection",
                            label(self.transport));
                        self.start_draining();
                    }
                }
            }
        }
    }

    fn start_draining(&mut self) {
        if !self.draining {
            self.draining = true;
            self.go_away = true;
        }
    }
}

/// Waits for `sleep` if there is one, else forever.
async fn sleep_opt(sleep: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lifecycle for a client of a fresh dev CA, with `idle` as the idle timeout.
    fn lifecycle(idle: Duration, phase: watch::Receiver<Phase>) -> Lifecycle {
        let ttl = Duration::from_secs(3600);
        let ca = meshd_identity::DevCa::generate("cluster.local").unwrap();
        let server = ca.issue("server-ns", "server-sa", ttl).unwrap();
        let client = ca.issue("client-ns", "client-sa", ttl).unwrap();
        let identity = IdentityHandle::fixed(server.credential_set().unwrap());
        let certs = meshd_identity::pem::parse_certificates(client.cert_pem.as_bytes()).unwrap();
        let settings = ServerSettings {
            idle_timeout: idle,
            ..ServerSettings::default()
        };
        Lifecycle::new(
            &settings,
            Transport::H2,
            (([127, 0, 0, 1], 40000).into(), client.id),
            identity,
            PeerChain::new(&certs, meshd_identity::Purpose::ClientAuth),
            phase,
        )
    }

    async fn next(life: &mut Lifecycle) -> Step {
        tokio::time::timeout(Duration::from_secs(5), life.next())
            .await
            .unwrap_or_else(|_| panic!("no step within 5 s"))
    }

    #[tokio::test]
    async fn an_idle_connection_goes_away_then_is_drained() {
        // No stream for the idle timeout: GOAWAY, and at once drained (nothing is open).
        let (_phase, watch_phase) = watch::channel(Phase::Running);
        let mut life = lifecycle(Duration::from_millis(50), watch_phase);
        assert_eq!(next(&mut life).await, Step::GoAway);
        assert_eq!(next(&mut life).await, Step::Drained);
    }

    #[tokio::test]
    async fn a_drain_waits_for_open_streams_and_a_forced_stop_closes() {
        // Draining with a stream open: GOAWAY now, drained only once the stream ends.
        let (phase, watch_phase) = watch::channel(Phase::Running);
        let mut life = lifecycle(Duration::from_secs(600), watch_phase);
        let (end, ended) = tokio::sync::oneshot::channel::<()>();
        life.spawn(async move {
            let _ = ended.await;
        });
        phase.send_replace(Phase::Draining);
        assert_eq!(next(&mut life).await, Step::GoAway);
        let pending = tokio::time::timeout(Duration::from_millis(100), life.next()).await;
        assert!(pending.is_err(), "drained with a stream open: {pending:?}");
        let _ = end.send(());
        assert_eq!(next(&mut life).await, Step::Drained);
        // The deadline: close.
        phase.send_replace(Phase::Force);
        assert_eq!(next(&mut life).await, Step::Close);
    }

    #[tokio::test]
    async fn a_connection_accepted_while_draining_goes_away_first() {
        // The server was draining before the connection was set up: GOAWAY at once.
        let (_phase, watch_phase) = watch::channel(Phase::Draining);
        let mut life = lifecycle(Duration::from_secs(600), watch_phase);
        assert_eq!(next(&mut life).await, Step::GoAway);
        assert!(!life.refusing(), "draining is not revocation");
    }

    #[tokio::test]
    async fn a_dropped_handle_reads_as_the_deadline() {
        let (phase, watch_phase) = watch::channel(Phase::Running);
        let mut life = lifecycle(Duration::from_secs(600), watch_phase);
        drop(phase);
        assert_eq!(next(&mut life).await, Step::Close);
    }
}
