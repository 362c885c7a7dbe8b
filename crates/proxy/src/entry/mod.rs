//! Where connections enter meshd. Every way in opens the connection's record here, once, with
//! the same set-up ([`Gate::open`]): HBONE CONNECTs over HTTP/2 and HTTP/3 and what the HBONE
//! server refuses before one ([`hbone`]), captured inbound and outbound connections, SOCKS5
//! ([`socks5`] reads its request) and explicit listeners ([`listener`]).
//!
//! The set-up: the configuration in force is taken, the source workload looked up
//! ([`ProxyState::source_workload`]), and the connection's [`Facts`] (trace, direction,
//! source, identity, source workload) made once and shared by the record and the context the
//! stack reads ([`Opened::toward`]), so the two cannot disagree. The record is opened before
//! anything can refuse the connection, so a failed handshake is recorded too.

pub(crate) mod hbone;
pub(crate) mod listener;
pub mod socks5;

use std::net::SocketAddr;
use std::sync::Arc;

use meshd_hbone::{TraceParent, Transport};
use meshd_identity::IdentityHandle;
use meshd_record::{
    ConnectionRecord, Direction, Facts, Identity, Outcome, RecordHandle, Sinks, WorkloadMeta,
};
use tokio::sync::watch;

use crate::conn::{Conn, ConnCtx, Downstream, Target};
use crate::state::ProxyState;

/// What every way in shares: the configurations connections are handled under and the sinks
/// their records go to.
#[derive(Clone)]
pub(crate) struct Gate {
    states: watch::Receiver<Arc<ProxyState>>,
    sinks: Sinks,
}

/// A connection as it arrives, before anything is decided about it.
pub(crate) struct Arrival {
    /// The peer's trace context (HBONE), or a new one.
    pub trace: TraceParent,
    /// Which way it goes.
    pub direction: Direction,
    /// Where it comes from.
    pub source: SocketAddr,
    /// Inbound: the peer's authenticated identity (none for plaintext); outbound: this
    /// meshd's.
    pub identity: Option<Arc<Identity>>,
    /// The HBONE transport it arrived on.
    pub transport: Option<Transport>,
    /// The destination as the client put it, when it is known on arrival (a CONNECT's
    /// authority); else the target given to [`Opened::toward`].
    pub destination: Option<String>,
}

impl Gate {
    /// Connections are handled under the configurations `states` delivers; records go to
    /// `sinks`.
    pub(crate) fn new(states: watch::Receiver<Arc<ProxyState>>, sinks: Sinks) -> Self {
        Gate { states, sinks }
    }

    /// Opens the record of a connection that just arrived: the one place records are opened.
    pub(crate) fn open(&self, arrival: Arrival) -> Opened {
        let Arrival {
            trace,
            direction,
            source,
            identity,
            transport,
            destination,
        } = arrival;
        let state = self.states.borrow().clone();
        let mut facts = Facts::new(trace, direction, source);
        facts.source_identity = identity;
        facts.source_workload = state.source_workload(direction, source, facts.peer());
        let facts = Arc::new(facts);
        let known = destination.is_some();
        let mut record =
            ConnectionRecord::new(facts.clone(), destination.unwrap_or_else(|| "-".into()));
        record.transport = transport.map(|t| t.to_string());
        // An inbound peer with an identity proved it in the mTLS handshake.
        record.mtls = facts.peer().is_some();
        Opened {
            facts,
            state,
            updates: self.states.clone(),
            record: RecordHandle::open(record, self.sinks.clone()),
            destination_known: known,
        }
    }
}

/// A connection whose record is open, not yet in a stack.
pub(crate) struct Opened {
    facts: Arc<Facts>,
    state: Arc<ProxyState>,
    updates: watch::Receiver<Arc<ProxyState>>,
    record: RecordHandle,
    destination_known: bool,
}

impl Opened {
    /// The connection ended before it reached a stack (a handshake, a missing original
    /// destination, a refusal by the HBONE server): recorded as `outcome`.
    pub(crate) fn fail(self, outcome: Outcome, reason: impl Into<String>) {
        self.record.fail_with(outcome, reason);
    }

    /// The connection presents `identity` (its source workload's), and comes from `workload`
    /// when one was named: the facts change before any stack sees them.
    pub(crate) fn with_source(
        mut self,
        identity: &IdentityHandle,
        workload: Option<Arc<WorkloadMeta>>,
    ) -> Opened {
        let id = identity.current().id().clone();
        let same = self.facts.source_identity.as_deref().map(Identity::id) == Some(&id);
        if same && workload.is_none() {
            return self;
        }
        let mut facts = (*self.facts).clone();
        facts.source_identity = Some(Arc::new(Identity::new(id)));
        if workload.is_some() {
            facts.source_workload = workload;
        }
        let facts = Arc::new(facts);
        self.record.update(|r| r.facts = Arc::clone(&facts));
        self.facts = facts;
        self
    }

    /// The connection asks for `target`: what the stack takes, its context sharing the
    /// record's facts.
    pub(crate) fn toward(self, target: Target, downstream: Box<dyn Downstream>) -> Conn {
        if !self.destination_known {
            self.record.update(|r| r.destination = target.to_string());
        }
        let ctx = ConnCtx {
            facts: self.facts,
            target,
            state: self.state,
            updates: self.updates,
            record: self.record,
        };
        Conn::new(ctx, downstream)
    }
}
