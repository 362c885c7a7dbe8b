//! The running proxy: binds every listener, feeds accepted connections into the stacks, and
//! stops accepting on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_hbone::{Client, ClientSettings, Server, ServerHandle, ServerSettings};
use meshd_identity::{IdentityHandle, IdentitySet};
use meshd_record::{Direction, Identity, Sinks};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{ConfigError, ProxyConfig};
use crate::conn::Target;
use crate::connector::MeshConnector;
use crate::entry::Gate;
use crate::entry::hbone::{HboneInbound, HboneRefusals};
use crate::entry::listener::{Accepted, Listener, serve};
use crate::identities::LocalIdentities;
use crate::layers::resolve::ResolveLayer;
use crate::own_ports::OwnPorts;
use crate::plugins::{PluginError, PluginRegistry};
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
        let identities = IdentitySet::single(identity);
        Proxy::start_on(listeners, config, identities, states, sinks, plugins, &[]).await
    }

    /// Binds every TCP listener of `config`, or none: on an error the ones already bound are
    /// closed, so a caller may retry (a port in use at boot) without holding half of them.
    pub async fn bind(config: &ProxyConfig) -> Result<BoundListeners, StartError> {
        BoundListeners::bind(config).await
    }

    /// Starts serving on listeners bound by [`Proxy::bind`] for the same `config`, with
    /// `reserved` ports added to meshd's own: the ports the daemon's operator endpoints were
    /// bound to (a port 0 in the configuration resolved), which no connection may be relayed
    /// to either. `identities` are meshd's own and the local workloads' (one per workload
    /// with its own): each connection is served under its workload's.
    pub async fn start_on(
        listeners: BoundListeners,
        config: &ProxyConfig,
        identities: IdentitySet,
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
            surplus_idle_timeout: config.pool.surplus_release_timeout,
            max_streams_per_connection: config.pool.max_streams_per_connection.get(),
            ..ClientSettings::default()
        };
        let identity = identities.own().clone();
        let client = Client::new(identity.clone(), client_settings)?;
        // Outbound names of workloads (a listener's, a SOCKS5 user's) are always checked;
        // only with identities of their own do inbound connections need the choice.
        let has_own = identities.has_workload_identities();
        let sources = LocalIdentities::new(identities, states.clone());
        let local = has_own.then(|| sources.clone());
        let connector = Arc::new(
            MeshConnector::new(client.clone(), config.socket_mark())
                .keep_client_address(config.original_source.then_some(config.mark))
                .with_identities(local.as_ref().map(|l| l.set().clone())),
        );

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

        let gate = Gate::new(states, sinks);
        let inbound_service = HboneInbound::new(inbound_stack.clone(), gate.clone(), local.clone());
        let refusals = Arc::new(HboneRefusals::new(gate.clone()));
        let server = |service| -> Result<Server, StartError> {
            let server = Server::new(&identity, ServerSettings::default(), service)?;
            Ok(match &local {
                Some(local) => server.with_identities(Arc::new(local.clone())),
                None => server,
            })
        };
        let hbone = server(inbound_service.clone())?
            .with_observer(refusals.clone())
            .spawn(hbone_listener)?;
        let hbone_quic = match config.listen.hbone_quic {
            #[cfg(feature = "quic")]
            Some(addr) => Some(
                server(inbound_service)?
                    .with_observer(refusals)
                    .spawn_quic(addr)?,
            ),
            // `ProxyConfig::check` refuses the key first; this keeps a caller that skipped
            // it from starting without the listener it asked for.
            #[cfg(not(feature = "quic"))]
            Some(_) => {
                drop((inbound_service, refusals));
                return Err(meshd_hbone::Error::TransportUnavailable("h3").into());
            }
            None => None,
        };
        let local_identity = Arc::new(Identity::new(identity.current().id().clone()));
        let mut tasks = JoinSet::new();
        let inbound_entry = Listener::new(Direction::Inbound, inbound_stack, gate.clone(), None);
        let outbound_entry = Listener::new(
            Direction::Outbound,
            outbound_stack,
            gate,
            Some(local_identity),
        )
        .with_identities(Some(sources));
        if let Some(listener) = inbound_plaintext {
            tasks.spawn(serve(listener, inbound_entry, Accepted::Captured));
        }
        if let Some(listener) = outbound {
            tasks.spawn(serve(listener, outbound_entry.clone(), Accepted::Captured));
        }
        if let Some(listener) = socks {
            tasks.spawn(serve(listener, outbound_entry.clone(), Accepted::Socks5));
        }
        for ((listener, target), spec) in explicit.into_iter().zip(&config.listeners) {
            tasks.spawn(serve(
                listener,
                outbound_entry.clone(),
                Accepted::Fixed(target, spec.workload.clone()),
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
