//! Inbound authorization: the destination must be a local workload, and the policy engine must
//! allow the connection. Allowed connections stay watched (by their [`Relay`]): when a new
//! configuration denies them, they are closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use meshd_identity::SpiffeId;
use meshd_rbac::{Connection, Destination, Peer};
use meshd_record::{Facts, Identity, RecordHandle, Verdict};
use tower::{Layer, Service};

use crate::conn::{Conn, Refusal, Target, Upstream};
use crate::error::ProxyError;
use crate::own_ports::OwnPorts;
use crate::relay::Relay;
use crate::state::ProxyState;

/// Adds [`Authorize`].
#[derive(Debug, Clone, Default)]
pub struct AuthorizeLayer {
    own_ports: OwnPorts,
}

impl AuthorizeLayer {
    /// Refuses `own_ports` before anything else, whatever the WorkloadEntries say.
    pub fn new(own_ports: OwnPorts) -> Self {
        AuthorizeLayer { own_ports }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Authorize<S> {
        Authorize {
            inner,
            own_ports: self.own_ports.clone(),
        }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    own_ports: OwnPorts,
}

/// What a decision is made on, kept to re-decide under later configurations: the
/// connection's facts (the same value its record holds) and its destination address.
#[derive(Debug, Clone)]
struct Decided {
    facts: Arc<Facts>,
    destination: SocketAddr,
}

/// The engine's form of a peer identity, from the typed SPIFFE ID's parts; `None` for an
/// identity outside Istio's `spiffe://<td>/ns/<ns>/sa/<sa>` form.
fn rbac_peer(id: &SpiffeId) -> Option<Peer> {
    Some(Peer::new(
        id.trust_domain_name(),
        id.namespace()?,
        id.service_account()?,
    ))
}

/// Re-decides an established connection under a new configuration; a denial closes it.
fn recheck(state: &ProxyState, facts: &Decided, record: &RecordHandle) -> Result<(), ProxyError> {
    let Err((_, error)) = decide(state, facts, record) else {
        return Ok(());
    };
    let (policy, reason) = match error {
        ProxyError::Denied { policy, reason } => (policy, reason),
        other => (None, other.to_string()),
    };
    tracing::info!(
        target: "meshd::authz",
        source = %facts.facts.source,
        destination = %facts.destination,
        policy = policy.as_deref().unwrap_or("-"),
        generation = state.generation,
        "closing connection after a configuration change: {reason}"
    );
    Err(ProxyError::ClosedByPolicyChange { policy, reason })
}

/// Decides one connection under one configuration: the destination workload and verdict, or
/// the refusal and error.
fn decide(
    state: &ProxyState,
    facts: &Decided,
    record: &RecordHandle,
) -> Result<(), (Refusal, ProxyError)> {
    let Some(workload) = state.registry.local_workload(facts.destination) else {
        return Err((
            Refusal::BadDestination,
            ProxyError::BadDestination(facts.destination.to_string()),
        ));
    };
    record.update(|r| {
        r.destination_workload = Some(workload.key().to_string());
        r.destination_workload_meta = Some(workload.meta());
        r.destination_identity = state
            .workload_identity(workload)
            .ok()
            .map(|id| Arc::new(Identity::new(id)));
    });
    let peer = match facts
        .facts
        .peer()
        .map(|id| rbac_peer(id).ok_or(id))
        .transpose()
    {
        Ok(peer) => peer,
        Err(id) => {
            // An identity outside Istio's form can match no principal or namespace: fail closed.
            let reason = format!(
                "peer identity is not an Istio workload identity: principal {:?} is not of the \
                 form <trust-domain>/ns/<namespace>/sa/<service-account>",
                id.principal()
            );
            record.update(|r| {
                r.verdict = Some(Verdict {
                    allowed: false,
                    policy: None,
                    reason: reason.clone(),
                })
            });
            return Err((
                Refusal::Denied,
                ProxyError::Denied {
                    policy: None,
                    reason,
                },
            ));
        }
    };
    let connection = Connection {
        peer,
        source_ip: facts.facts.source.ip(),
        destination: Destination {
            namespace: workload.namespace().to_string(),
            labels: workload.labels().clone(),
            ip: facts.destination.ip(),
            port: facts.destination.port(),
            bound_policies: workload.bound_policies(),
        },
    };
    let decision = state.engine.decide(&connection);
    let policy = decision.policy().map(ToString::to_string);
    let reason = decision.to_string();
    record.update(|r| {
        r.verdict = Some(Verdict {
            allowed: decision.allowed(),
            policy: policy.clone(),
            reason: reason.clone(),
        })
    });
    if decision.allowed() {
        Ok(())
    } else {
        tracing::info!(
            target: "meshd::authz",
            source = %facts.facts.source,
            peer = %Plaintext(facts.facts.peer()),
            destination = %facts.destination,
            policy = policy.as_deref().unwrap_or("-"),
            "connection denied: {reason}"
        );
        Err((Refusal::Denied, ProxyError::Denied { policy, reason }))
    }
}

/// A peer for log lines: its principal, or `plaintext`.
struct Plaintext<'a>(Option<&'a SpiffeId>);

impl std::fmt::Display for Plaintext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => f.write_str(&id.principal()),
            None => f.write_str("plaintext"),
        }
    }
}

impl<S> Service<Conn> for Authorize<S>
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
        let own_ports = self.own_ports.clone();
        Box::pin(async move {
            let Target::Addr(destination) = conn.ctx.target else {
                let error = ProxyError::BadDestination(conn.ctx.target.to_string());
                return Err(conn.refuse(Refusal::BadDestination, error).await);
            };
            // Before the registry is asked: a WorkloadEntry without ports serves every port,
            // meshd's own included, and no configuration may turn meshd into a relay.
            if own_ports.contains(destination.port()) {
                tracing::warn!(
                    target: "meshd::authz",
                    source = %conn.ctx.source(),
                    peer = %Plaintext(conn.ctx.peer()),
                    %destination,
                    "refused: the destination is one of meshd's own ports"
                );
                let error = ProxyError::OwnPort(destination);
                return Err(conn.refuse(Refusal::BadDestination, error).await);
            }
            let facts = Decided {
                facts: conn.ctx.facts.clone(),
                destination,
            };
            if let Err((refusal, error)) = decide(&conn.ctx.state, &facts, &conn.ctx.record) {
                return Err(conn.refuse(refusal, error).await);
            }
            conn.ctx
                .record
                .update(|r| r.upstream_addr = Some(destination));
            let record = conn.ctx.record.clone();
            let updates = conn.ctx.updates.clone();
            let mut relay = inner
                .call(conn.choose(Upstream::Direct(destination)))
                .await?;
            // Kept for the connection's lifetime: the facts and the record, not the context.
            relay.recheck(
                updates,
                Box::new(move |state: &ProxyState| recheck(state, &facts, &record)),
            );
            Ok(relay)
        })
    }
}
