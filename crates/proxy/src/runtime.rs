//! The running proxy: binds every listener, feeds accepted connections into the stacks, and
//! stops accepting on shutdown.

use std::collections::HashSet;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use meshd_hbone::{Client, ClientSettings, Server, ServerHandle, ServerSettings, TraceParent};
use meshd_identity::IdentityHandle;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::{ConfigError, ProxyConfig};
use crate::conn::{Conn, ConnCtx, Downstream, Target};
use crate::connector::MeshConnector;
use crate::inbound::{HboneInbound, HboneRefusals};
use crate::layers::ConnService;
use crate::layers::resolve::ResolveLayer;
use crate::own_ports::OwnPorts;
use crate::plugins::{PluginError, PluginRegistry};
use meshd_record::{ConnectionRecord, Direction, Outcome, RecordHandle, Sinks, WorkloadMeta};
use crate::registry::Workload;
use crate::relay::Relay;
use crate::socks5;
use crate::stack::{self, Plugins};
use crate::state::ProxyState;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// A plugin could not be built.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// An explicit listener's target is malformed.
    #[error("listeners: {0}")]
    Listener(String),
    /// The HBONE transport refused its settings or identity.
    #[error("HBONE: {0}")]
    Hbone(#[from] meshd_hbone::Error),
    /// The configuration is not safe to run.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// The addresses the proxy listens on (ports resolved when 0 was asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    /// Inbound HBONE.
    pub hbone: SocketAddr,
    /// Captured inbound plaintext.
    pub inbound_plaintext: Option<SocketAddr>,
    /// Captured outbound.
    pub outbound: Option<SocketAddr>,
    /// SOCKS5.
    pub socks5: Option<SocketAddr>,
    /// Explicit listeners, in configuration order.
    pub listeners: Vec<SocketAddr>,
    /// Every port no connection may be relayed to.
    pub own_ports: OwnPorts,
}

/// A running proxy.
pub struct Proxy {
    addrs: BoundAddrs,
    client: Client,
    hbone: ServerHandle,
    hbone_quic: Option<ServerHandle>,
    tasks: JoinSet<()>,
}

/// Decides which workloads are on this machine.
pub fn local_predicate(config: &ProxyConfig) -> impl Fn(&Workload) -> bool + Send + Sync + 'static {
    let addresses: HashSet<IpAddr> = config
        .local
        .addresses
        .iter()
        .map(|a| a.to_canonical())
        .collect();
    let workloads: HashSet<String> = config.local.workloads.iter().cloned().collect();
    let explicit = !addresses.is_empty() || !workloads.is_empty();
    move |w: &Workload| {
        if explicit {
            addresses.contains(&w.address) || workloads.contains(&w.key)
        } else {
            // Only an address of this machine can be bound (without IP_FREEBIND).
            std::net::TcpListener::bind((w.address, 0)).is_ok()
        }
    }
}

impl Proxy {
    /// Binds every configured listener and starts serving.
    pub async fn start(
        config: &ProxyConfig,
        identity: IdentityHandle,
        states: watch::Receiver<Arc<ProxyState>>,
        sinks: Sinks,
        plugins: &PluginRegistry,
    ) -> Result<Proxy, StartError> {
        let listeners = Proxy::bind(config).await?;
        Proxy::start_on(listeners, config, identity, states, sinks, plugins, &[]).await
    }

    /// Binds every TCP listener of `config`, or none: on an error the ones already bound are
    /// closed, so a caller may retry (a port in use at boot) without holding half of them.
    pub async fn bind(config: &ProxyConfig) -> Result<BoundListeners, StartError> {
        BoundListeners::bind(config).await
    }

    /// Starts serving on listeners bound by [`Proxy::bind`] for the same `config`, with
    /// `reserved` ports added to meshd's own: the ports the daemon's operator endpoints were
    /// bound to (a port 0 in the configuration resolved), which no connection may be relayed
    /// to either.
    pub async fn start_on(
        listeners: BoundListeners,
        config: &ProxyConfig,
        identity: IdentityHandle,
        states: watch::Receiver<Arc<ProxyState>>,
        sinks: Sinks,
        plugins: &PluginRegistry,
        reserved: &[u16],
    ) -> Result<Proxy, StartError> {
        for warning in config.check()? {
            tracing::warn!("{warning}");
        }
        // Each direction gets its own plugin instances: outbound traffic must not use up the
        // inbound limits (or the other way round).
        let inbound_plugins = Plugins::new(plugins.build(&config.plugins)?);
        let outbound_plugins = Plugins::new(plugins.build(&config.plugins)?);
        let client_settings = ClientSettings {
            socket_mark: config.socket_mark(),
            idle_timeout: config.pool.unused_release_timeout,
            max_streams_per_connection: config.pool.max_streams_per_connection.get(),
            ..ClientSettings::default()
        };
        let client = Client::new(identity.clone(), client_settings)?;
        let connector = Arc::new(MeshConnector::new(client.clone(), config.socket_mark()));

        let BoundListeners {
            hbone: hbone_listener,
            inbound_plaintext,
            outbound,
            socks,
            explicit,
        } = listeners;
        let own_ports = own_ports(
            config,
            [
                Some(&hbone_listener),
                inbound_plaintext.as_ref(),
                outbound.as_ref(),
                socks.as_ref(),
            ]
            .into_iter()
            .flatten()
            .chain(explicit.iter().map(|(l, _)| l)),
            reserved,
        );

        let inbound_stack = stack::inbound(inbound_plugins, own_ports.clone(), connector.clone());
        let outbound_stack = stack::outbound(
            outbound_plugins,
            ResolveLayer::new(config.hbone_port, own_ports.clone()),
            connector,
        );
        let addrs = BoundAddrs {
            hbone: local_addr(&hbone_listener),
            inbound_plaintext: inbound_plaintext.as_ref().map(local_addr),
            outbound: outbound.as_ref().map(local_addr),
            socks5: socks.as_ref().map(local_addr),
            listeners: explicit.iter().map(|(l, _)| local_addr(l)).collect(),
            own_ports,
        };

        let inbound_service =
            HboneInbound::new(inbound_stack.clone(), states.clone(), sinks.clone());
        let refusals = Arc::new(HboneRefusals::new(sinks.clone()));
        let hbone = Server::new(
            &identity,
            ServerSettings::default(),
            inbound_service.clone(),
        )?
        .with_observer(refusals.clone())
        .spawn(hbone_listener)?;
        let hbone_quic = match config.listen.hbone_quic {
            Some(addr) => Some(
                Server::new(&identity, ServerSettings::default(), inbound_service)?
                    .with_observer(refusals)
                    .spawn_quic(addr)?,
            ),
            None => None,
        };
        let local_identity = identity.current().id().to_string();
        let mut tasks = JoinSet::new();
        let inbound_entry = Entry {
            direction: Direction::Inbound,
            stack: inbound_stack.clone(),
            states: states.clone(),
            sinks: sinks.clone(),
            source_identity: None,
        };
        let outbound_entry = Entry {
            direction: Direction::Outbound,
            stack: outbound_stack,
            states: states.clone(),
            sinks: sinks.clone(),
            source_identity: Some(local_identity),
        };
        if let Some(listener) = inbound_plaintext {
            tasks.spawn(serve(listener, inbound_entry, Accepted::Captured));
        }
        if let Some(listener) = outbound {
            tasks.spawn(serve(listener, outbound_entry.clone(), Accepted::Captured));
        }
        if let Some(listener) = socks {
            tasks.spawn(serve(listener, outbound_entry.clone(), Accepted::Socks5));
        }
        for (listener, target) in explicit {
            tasks.spawn(serve(
                listener,
                outbound_entry.clone(),
                Accepted::Fixed(target),
            ));
        }
        Ok(Proxy {
            addrs,
            client,
            hbone,
            hbone_quic,
            tasks,
        })
    }

    /// Where the proxy listens.
    pub fn addrs(&self) -> &BoundAddrs {
        &self.addrs
    }

    /// The outbound HBONE client (its pool's figures, for metrics).
    pub fn hbone_client(&self) -> &Client {
        &self.client
    }

    /// Stops accepting everywhere; open HBONE streams get up to `deadline` to finish.
    pub async fn shutdown(mut self, deadline: Duration) {
        self.tasks.abort_all();
        if let Some(quic) = self.hbone_quic {
            quic.shutdown(deadline).await;
        }
        self.hbone.shutdown(deadline).await;
    }
}

/// Every TCP listener of the proxy, bound and not yet accepting (HBONE over QUIC binds in the
/// server).
#[derive(Debug)]
pub struct BoundListeners {
    hbone: TcpListener,
    inbound_plaintext: Option<TcpListener>,
    outbound: Option<TcpListener>,
    socks: Option<TcpListener>,
    explicit: Vec<(TcpListener, Target)>,
}

impl BoundListeners {
    async fn bind(config: &ProxyConfig) -> Result<BoundListeners, StartError> {
        let mut explicit = Vec::new();
        for listener in &config.listeners {
            let (host, port) = listener.target().map_err(StartError::Listener)?;
            explicit.push((bind(listener.listen).await?, Target::Host(host, port)));
        }
        Ok(BoundListeners {
            hbone: bind(config.listen.hbone).await?,
            inbound_plaintext: bind_optional(config.listen.inbound_plaintext).await?,
            outbound: bind_optional(config.listen.outbound).await?,
            socks: bind_optional(config.listen.socks5).await?,
            explicit,
        })
    }
}

/// meshd's own ports: the bound ones (port 0 resolved), the `reserved` ones bound elsewhere
/// (the operator endpoints), every configured one, and the HBONE port peers use.
fn own_ports<'a>(
    config: &ProxyConfig,
    bound: impl Iterator<Item = &'a TcpListener>,
    reserved: &[u16],
) -> OwnPorts {
    OwnPorts::new(
        bound
            .map(|l| local_addr(l).port())
            .chain(reserved.iter().copied())
            .chain(config.listen.configured_ports())
            .chain(config.listeners.iter().map(|l| l.listen.port()))
            .chain([config.hbone_port])
            .filter(|p| *p != 0)
            .collect::<Vec<_>>(),
    )
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

async fn bind_optional(addr: Option<SocketAddr>) -> Result<Option<TcpListener>, StartError> {
    match addr {
        Some(addr) => Ok(Some(bind(addr).await?)),
        None => Ok(None),
    }
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// How accepted connections on a listener find their target.
#[derive(Clone)]
enum Accepted {
    /// Redirected by the capture rules: the original destination.
    Captured,
    /// A SOCKS5 request names it.
    Socks5,
    /// An explicit listener's configured target.
    Fixed(Target),
}

/// What a listener needs to turn a socket into a [`Conn`].
#[derive(Clone)]
struct Entry {
    direction: Direction,
    stack: ConnService,
    states: watch::Receiver<Arc<ProxyState>>,
    sinks: Sinks,
    source_identity: Option<String>,
}

impl Entry {
    /// Serves one accepted connection. The set-up runs in its own allocation, freed once the
    /// connection is established: the task then holds only the relay.
    fn handle(
        self,
        stream: TcpStream,
        source: SocketAddr,
        accepted: Accepted,
    ) -> impl Future<Output = ()> + Send + 'static {
        let setup = Box::pin(self.establish(stream, source, accepted));
        async move {
            if let Some(relay) = setup.await {
                // Its failure is in the record already.
                let _ = relay.run().await;
            }
        }
    }

    /// Takes a connection through the stack: the relay to run, or `None` when it was refused
    /// or failed (and recorded as such).
    async fn establish(
        self,
        stream: TcpStream,
        source: SocketAddr,
        accepted: Accepted,
    ) -> Option<Relay> {
        let _ = stream.set_nodelay(true);
        let state = self.states.borrow().clone();
        let trace_id = TraceParent::random().to_string();
        // The record is opened before anything can fail, so a failed handshake is recorded too.
        let mut record =
            ConnectionRecord::new(trace_id.clone(), self.direction, source, "-".into());
        record.source_identity = self.source_identity.clone();
        record.source_workload_meta = source_workload(&state, self.direction, source, None);
        let record = RecordHandle::open(record, self.sinks.clone());
        let (target, downstream): (Target, Box<dyn Downstream>) = match accepted {
            Accepted::Captured => match meshd_redirect::original_dst(&stream) {
                Ok(dst) => (Target::Addr(dst), Box::new(stream)),
                Err(e) => {
                    let reason = format!("no original destination (was it redirected?): {e}");
                    record.fail_with(Outcome::Handshake, reason);
                    return None;
                }
            },
            Accepted::Socks5 => match socks5::handshake(stream, socks5::HANDSHAKE_TIMEOUT).await {
                Ok((request, target)) => (target, Box::new(request)),
                Err(e) => {
                    record.fail_with(Outcome::Handshake, e.to_string());
                    return None;
                }
            },
            Accepted::Fixed(target) => (target, Box::new(stream)),
        };
        record.update(|r| r.destination = target.to_string());
        let conn = Conn {
            ctx: ConnCtx {
                direction: self.direction,
                source,
                peer: None,
                target,
                trace_id,
                state,
                updates: self.states.clone(),
                record,
                upstream: None,
            },
            downstream,
        };
        self.stack.oneshot(conn).await.ok()
    }
}

/// The workload a connection comes from: by its source address when that workload's identity
/// is the peer's (or there is no peer identity); else the one workload with the peer's identity
/// (a peer meshd's connections may come from another of its machine's addresses); for
/// outbound traffic from an application on this machine (often 127.0.0.1), the machine's one
/// local workload.
pub(crate) fn source_workload(
    state: &ProxyState,
    direction: Direction,
    source: SocketAddr,
    peer: Option<&meshd_rbac::Peer>,
) -> Option<Arc<WorkloadMeta>> {
    let registry = &state.registry;
    let same_identity = |w: &Workload| {
        peer.is_none_or(|p| {
            p.namespace() == w.namespace && p.service_account() == w.service_account
        })
    };
    registry
        .workload_at(source.ip())
        .filter(|w| same_identity(w))
        .or_else(|| {
            peer.and_then(|p| registry.workload_with_identity(p.namespace(), p.service_account()))
        })
        .or_else(|| {
            let mut local = registry.local_workloads();
            match (direction, local.next(), local.next()) {
                (Direction::Outbound, Some(only), None) => Some(only),
                _ => None,
            }
        })
        .map(Workload::meta)
}

async fn serve(listener: TcpListener, entry: Entry, accepted: Accepted) {
    loop {
        match listener.accept().await {
            Ok((stream, source)) => {
                tokio::spawn(entry.clone().handle(stream, source, accepted.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
