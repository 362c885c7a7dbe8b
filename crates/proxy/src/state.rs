//! The configuration a connection is handled under: registry and compiled policies, built
//! together from one snapshot and swapped as a whole.

use std::sync::Arc;

use meshd_config::Snapshot;
use meshd_rbac::Engine;

use crate::registry::{Registry, Workload};

/// Everything built from one configuration snapshot.
#[derive(Debug)]
pub struct ProxyState {
    /// Workloads and services.
    pub registry: Registry,
    /// Compiled authorization.
    pub engine: Engine,
    /// The mesh trust domain: workload identities are `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub trust_domain: String,
    /// Counts snapshots applied, for logs.
    pub generation: u64,
    /// The snapshot it was built from (sources, for the configuration dump).
    pub snapshot: Arc<Snapshot>,
}

/// A state is replaced on every reload, and whichever connection drops the last reference frees
/// it. For a large configuration that is tens of milliseconds of deallocation (measured in
/// benches/reload.rs: ~50 ms for 10 000 policies), which must not stall a data-plane worker:
/// the compiled policies and the registry are handed to the blocking pool instead.
impl Drop for ProxyState {
    fn drop(&mut self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // not on a runtime (tools, tests): free here
        };
        let engine = std::mem::take(&mut self.engine);
        let registry = std::mem::take(&mut self.registry);
        let snapshot = std::mem::take(&mut self.snapshot);
        runtime.spawn_blocking(move || drop((engine, registry, snapshot)));
    }
}

impl ProxyState {
    /// Builds the state for a snapshot.
    pub fn build(
        snapshot: &Snapshot,
        trust_domain: &str,
        generation: u64,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        ProxyState {
            registry: Registry::build(snapshot, is_local),
            engine: Engine::compile(
                snapshot.policies(),
                snapshot.peer_auths(),
                &snapshot.root_namespace,
            ),
            trust_domain: trust_domain.to_string(),
            generation,
            snapshot: Arc::new(snapshot.clone()),
        }
    }

    /// Carries over from the state in force what a reload must not forget: which endpoints
    /// are ejected for failed connections (the rest is rebuilt from the files).
    pub fn succeed(&mut self, previous: &ProxyState) {
        self.registry.keep_health_of(&previous.registry);
    }

    /// The SPIFFE ID of a workload.
    pub fn spiffe_id(&self, workload: &Workload) -> String {
        format!("spiffe://{}", workload.principal(&self.trust_domain))
    }
}
