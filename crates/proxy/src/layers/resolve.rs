//! Outbound resolution: where does this connection go, and how (an HBONE tunnel to the
//! destination's meshd, or plain TCP for destinations outside the mesh)?

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use meshd_record::Identity;
use tower::{Layer, Service};

use crate::conn::{Conn, ConnCtx, Refusal, Target, TunnelRequest, Upstream};
use crate::error::ProxyError;
use crate::own_ports::OwnPorts;
use crate::registry::{Protocol, ResolveError};
use crate::relay::Relay;

/// Adds [`Resolve`].
#[derive(Debug, Clone)]
pub struct ResolveLayer {
    hbone_port: u16,
    own_ports: OwnPorts,
}

impl ResolveLayer {
    /// Peers' meshd listen for HBONE on `hbone_port`; `own_ports` are this meshd's listener
    /// ports, which outbound connections may not loop back into.
    pub fn new(hbone_port: u16, own_ports: OwnPorts) -> Self {
        ResolveLayer {
            hbone_port,
            own_ports,
        }
    }
}

impl<S> Layer<S> for ResolveLayer {
    type Service = Resolve<S>;

    fn layer(&self, inner: S) -> Resolve<S> {
        Resolve {
            inner,
            config: self.clone(),
        }
    }
}

/// See [`ResolveLayer`].
#[derive(Debug, Clone)]
pub struct Resolve<S> {
    inner: S,
    config: ResolveLayer,
}

impl<S> Service<Conn> for Resolve<S>
where
    S: Service<Conn<Upstream>, Response = Relay, Error = ProxyError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Relay;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Relay, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn) -> Self::Future {
        let mut inner = self.inner.clone();
        let config = self.config.clone();
        Box::pin(async move {
            match upstream(&conn.ctx, &config).await {
                Ok(upstream) => inner.call(conn.choose(upstream)).await,
                Err((refusal, error)) => Err(conn.refuse(refusal, error).await),
            }
        })
    }
}

async fn upstream(ctx: &ConnCtx, config: &ResolveLayer) -> Result<Upstream, (Refusal, ProxyError)> {
    let registry = &ctx.state.registry;
    let resolved = match &ctx.target {
        Target::Addr(addr) => registry.resolve_addr(*addr),
        Target::Host(host, port) => match registry.resolve_host(host, *port) {
            Err(ResolveError::UnknownHost(_)) => {
                // Not a mesh host: resolve it like the application would have, and pass through.
                let addr = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .ok()
                    .and_then(|mut addrs| addrs.next())
                    .ok_or_else(|| {
                        (
                            Refusal::Unreachable,
                            ProxyError::Resolve(ResolveError::UnknownHost(host.clone())),
                        )
                    })?;
                registry.resolve_addr(addr)
            }
            other => other,
        },
    }
    .map_err(|e| {
        if matches!(e, ResolveError::Refused { .. } | ResolveError::Conflict(_)) {
            // Never around what istiod put in front of a destination, nor to a contested
            // address: refused, loudly.
            tracing::warn!(
                target: "meshd::authz",
                source = %ctx.source(),
                "refused: {e}"
            );
        }
        (Refusal::Unreachable, ProxyError::Resolve(e))
    })?;

    // Any address of this machine, not only loopback (10.0.0.5:15001 loops as surely), and
    // whether it would go direct or through a tunnel to this same meshd.
    if config.own_ports.loops_back(resolved.address) {
        tracing::warn!(
            target: "meshd::authz",
            source = %ctx.source(),
            destination = %resolved.address,
            "refused: the destination is one of meshd's own ports"
        );
        return Err((
            Refusal::BadDestination,
            ProxyError::OwnPort(resolved.address),
        ));
    }
    let service = resolved.service.as_deref();
    let workload = resolved.workload.as_deref();
    // The identity the destination workload has, whatever the transport (ztunnel reports it
    // for every workload destination).
    let identity = workload.map(|w| ctx.state.workload_identity(w));
    ctx.record.update(|r| {
        r.destination_service = service.map(|s| s.key.clone());
        r.destination_service_host = service.and_then(|s| s.hosts.first().cloned());
        r.destination_identity = identity
            .as_ref()
            .and_then(|i| i.as_ref().ok())
            .map(|i| Arc::new(Identity::new(i.clone())));
        r.destination_workload = workload.map(|w| w.key().to_string());
        r.destination_workload_meta = workload.map(|w| w.meta());
    });
    match (workload, identity) {
        (Some(w), Some(identity)) if w.protocol() != Protocol::Tcp => {
            let peer = SocketAddr::new(w.address(), config.hbone_port);
            let identity = identity.map_err(|e| {
                // Names and namespaces are validated as DNS labels when loaded; a workload
                // whose identity is still not a SPIFFE ID cannot be tunnelled to.
                (
                    Refusal::Unreachable,
                    ProxyError::Tunnel {
                        addr: peer,
                        source: Box::new(meshd_hbone::Error::from(e)),
                    },
                )
            })?;
            let quic = w.protocol() == Protocol::HboneQuic;
            ctx.record.update(|r| {
                r.upstream_addr = Some(peer);
                r.transport = Some(if quic { "h3" } else { "h2" }.to_string());
                r.mtls = true;
            });
            Ok(Upstream::Tunnel(TunnelRequest {
                peer,
                identity,
                authority: resolved.address,
                service_host: service.and_then(|s| s.hosts.first().cloned()),
                client: ctx.source(),
                trace: ctx.facts.trace,
                quic,
                source: ctx.facts.source_identity.clone(),
            }))
        }
        _ => {
            let addr = resolved.address;
            ctx.record.update(|r| r.upstream_addr = Some(addr));
            Ok(Upstream::Direct(addr))
        }
    }
}
