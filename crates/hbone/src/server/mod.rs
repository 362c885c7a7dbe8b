//! The server side: the [`Server`] value both transports serve from, and the
//! [`ServerHandle`] that drains or stops either.
//!
//! - `http2.rs`: HBONE over HTTP/2 on TCP ([`Server::spawn`]), and `fuzzing.rs` its fuzz seam.
//! - `lifecycle.rs`: what HTTP/2 and HTTP/3 (`quic/server.rs`) share: admission, handshake
//!   failure reports, and each connection's idle check, drain and revocation.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meshd_identity::IdentityHandle;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tower::Service;

use crate::observe::{NoObserver, Observer};
use crate::responder::{BoxError, ConnectService, Inbound};
use crate::{Error, ServerSettings};

#[cfg(feature = "fuzzing")]
mod fuzzing;
mod http2;
mod identities;
pub(crate) mod lifecycle;

pub(crate) use identities::Identities;
pub use identities::ServerIdentities;

use lifecycle::{Admission, FORCE_GRACE, Phase};

/// An HBONE server: TLS and HTTP/2 settings plus the caller's CONNECT service.
pub struct Server {
    /// The identity presented on this connection (the default one until a connection's
    /// local address chose).
    pub(crate) identity: IdentityHandle,
    pub(crate) tls: Arc<rustls::ServerConfig>,
    /// Every identity the server may present, and how it chooses.
    pub(crate) identities: Arc<Identities>,
    pub(crate) settings: Arc<ServerSettings>,
    pub(crate) service: ConnectService,
    pub(crate) observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server presenting `identity`'s current SVID and handing each valid CONNECT, with its
    /// [`Responder`](crate::Responder), to `service`.
    ///
    /// The service is cloned per request (`oneshot`) and runs in the stream's task for the
    /// tunnel's whole life; one that ends or fails without answering answers `503`.
    pub fn new<S>(
        identity: &IdentityHandle,
        settings: ServerSettings,
        service: S,
    ) -> Result<Server, Error>
    where
        S: Service<Inbound, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        settings.validate()?;
        let service = tower::ServiceBuilder::new()
            .map_err(Into::into)
            .service(service);
        let identities = Identities::single(identity)?;
        Ok(Server {
            identity: identity.clone(),
            tls: Arc::clone(identities.default_config()),
            identities: Arc::new(identities),
            settings: Arc::new(settings),
            service: ConnectService::new(service),
            observer: Arc::new(NoObserver),
        })
    }

    /// Presents, on each connection, the identity `chooser` picks for the local address it
    /// arrived on (one identity per local workload) instead of the one given to
    /// [`Server::new`]. Each CONNECT carries the identity presented
    /// ([`InboundRequest::local_identity`](crate::InboundRequest::local_identity)), for the
    /// service to check against its destination.
    pub fn with_identities(mut self, chooser: Arc<dyn ServerIdentities>) -> Server {
        self.identities = Arc::new(Identities::choosing(
            (self.identity.clone(), Arc::clone(&self.tls)),
            chooser,
        ));
        self
    }

    /// Tells `observer` about every connection and request refused before the service is
    /// asked (budget, handshake, connection limit, malformed CONNECT).
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Server {
        self.observer = observer;
        self
    }
}

/// Controls a running server; dropping it stops the server abruptly, [`shutdown`] drains it.
///
/// [`shutdown`]: ServerHandle::shutdown
pub struct ServerHandle {
    local_addr: SocketAddr,
    phase: watch::Sender<Phase>,
    task: Option<JoinHandle<()>>,
    admission: Admission,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Spawns a transport's accept loop, which watches the phase this handle moves.
    pub(crate) fn start<F, Fut>(local_addr: SocketAddr, admission: Admission, accept: F) -> Self
    where
        F: FnOnce(watch::Receiver<Phase>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (phase, watch_phase) = watch::channel(Phase::Running);
        ServerHandle {
            local_addr,
            phase,
            task: Some(tokio::spawn(accept(watch_phase))),
            admission,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently held (including ones still in their handshake).
    pub fn active_connections(&self) -> usize {
        self.admission.active.load(Ordering::Relaxed)
    }

    /// Connections still in their TLS handshake (not yet authenticated).
    pub fn handshakes_in_flight(&self) -> usize {
        self.admission.budget.in_flight()
    }

    /// Graceful shutdown: stop accepting, send GOAWAY on every connection, let open streams
    /// finish for up to `deadline`, then reset whatever is left and close.
    pub async fn shutdown(mut self, deadline: Duration) {
        let Some(mut task) = self.task.take() else {
            return;
        };
        self.phase.send_replace(Phase::Draining);
        if tokio::time::timeout(deadline, &mut task).await.is_ok() {
            return;
        }
        self.phase.send_replace(Phase::Force);
        if tokio::time::timeout(FORCE_GRACE, &mut task).await.is_err() {
            task.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection.
            task.abort();
        }
    }
}
