//! The configuration a connection is handled under: registry and compiled policies, built
//! together from one snapshot of the directory and one of istiod's state, and swapped as a
//! whole.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use meshd_identity::SpiffeId;
use meshd_manifests::Snapshot;
use meshd_rbac::Engine;
use meshd_record::{Direction, WorkloadMeta};
use meshd_workloadapi::MeshState;

use crate::registry::{Registry, Workload};

/// Everything built from one configuration snapshot.
#[derive(Debug)]
pub struct ProxyState {
    /// Workloads and services.
    pub registry: Registry,
    /// Compiled authorization, shared with the state before when neither the directory's nor
    /// istiod's policies changed (a push of addresses only).
    pub engine: Arc<Engine>,
    /// The mesh trust domain: workload identities are `spiffe://<td>/ns/<ns>/sa/<sa>`, unless
    /// a workload has its own or its namespace is mapped ([`ProxyState::trust_domain_of`]).
    pub trust_domain: String,
    /// meshd.yaml's `trustDomains`: namespaces whose workloads are in another trust domain
    /// than [`ProxyState::trust_domain`] (a workload's own trust domain wins).
    pub namespace_trust_domains: Arc<BTreeMap<String, String>>,
    /// Counts snapshots applied, for logs.
    pub generation: u64,
    /// The snapshot it was built from (sources, for the configuration dump).
    pub snapshot: Arc<Snapshot>,
    /// istiod's state it was built from: the next push is applied as what changed since.
    pub mesh: Arc<MeshState>,
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
        let mesh = std::mem::take(&mut self.mesh);
        runtime.spawn_blocking(move || drop((engine, registry, snapshot, mesh)));
    }
}

/// The files' policies and istiod's, compiled together.
fn compile(snapshot: &Snapshot, mesh: &MeshState) -> Engine {
    Engine::compile_all(
        snapshot.policies(),
        snapshot.peer_auths(),
        mesh.policies().map(|p| &**p),
        &snapshot.root_namespace,
    )
}

impl ProxyState {
    /// Builds the state for a snapshot of the directory and istiod's state (an empty
    /// [`MeshState`] for a local-only meshd): the union of both, istiod's policies beside the
    /// files' (never shadowed by them).
    pub fn build(
        snapshot: &Snapshot,
        mesh: &MeshState,
        trust_domain: &str,
        generation: u64,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        ProxyState {
            registry: Registry::build(snapshot, mesh, is_local),
            engine: Arc::new(compile(snapshot, mesh)),
            trust_domain: trust_domain.to_string(),
            namespace_trust_domains: Arc::default(),
            generation,
            snapshot: Arc::new(snapshot.clone()),
            // A clone of istiod's state shares its maps (see MeshState).
            mesh: Arc::new(mesh.clone()),
        }
    }

    /// The state for istiod's new state `mesh` beside this one's directory snapshot, built from
    /// what changed since this state's: the registry updated workload by workload, the
    /// compiled policies shared when no policy changed (else compiled again, whole). The same
    /// state as [`ProxyState::build`] gives from the same inputs; `is_local` is asked about
    /// the changed workloads only.
    pub fn with_mesh(
        &self,
        mesh: &MeshState,
        generation: u64,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        let engine = if mesh.same_policies(&self.mesh) {
            Arc::clone(&self.engine)
        } else {
            Arc::new(compile(&self.snapshot, mesh))
        };
        let mut state = ProxyState {
            registry: self.registry.with_mesh(&self.mesh, mesh, is_local),
            engine,
            trust_domain: self.trust_domain.clone(),
            namespace_trust_domains: Arc::clone(&self.namespace_trust_domains),
            generation,
            snapshot: Arc::clone(&self.snapshot),
            mesh: Arc::new(mesh.clone()),
        };
        state.succeed(self);
        state
    }

    /// Carries over from the state in force what a reload must not forget: which endpoints
    /// are ejected for failed connections (the rest is rebuilt from the files).
    pub fn succeed(&mut self, previous: &ProxyState) {
        self.registry.keep_health_of(&previous.registry);
    }

    /// Sets meshd.yaml's `trustDomains` (namespace → trust domain), kept by every state built
    /// from this one with [`ProxyState::with_mesh`].
    #[must_use]
    pub fn with_namespace_trust_domains(mut self, map: BTreeMap<String, String>) -> Self {
        self.namespace_trust_domains = Arc::new(map);
        self
    }

    /// A workload's trust domain: its own (annotation, istiod's), else its namespace's in
    /// `trustDomains`, else the mesh's. The one place both sources' identities are decided.
    pub fn trust_domain_of<'a>(&'a self, workload: &'a Workload) -> &'a str {
        let by_namespace = self.namespace_trust_domains.get(workload.namespace());
        workload.trust_domain(by_namespace.unwrap_or(&self.trust_domain))
    }

    /// The SPIFFE ID of a workload (see [`ProxyState::trust_domain_of`]), as views and dumps
    /// print it.
    pub fn spiffe_id(&self, workload: &Workload) -> String {
        format!(
            "spiffe://{}",
            workload.principal(self.trust_domain_of(workload))
        )
    }

    /// The SPIFFE ID of a workload, typed: what a tunnel to it must be answered by. `Err` when
    /// the trust domain, namespace or service account cannot form one.
    pub fn workload_identity(
        &self,
        workload: &Workload,
    ) -> Result<SpiffeId, meshd_identity::Error> {
        SpiffeId::istio(
            self.trust_domain_of(workload),
            workload.namespace(),
            workload.service_account(),
        )
    }

    /// The workload a connection comes from: by its source address when that workload's
    /// identity is the peer's (or there is no peer identity); else the one workload with the
    /// peer's identity (a peer meshd's connections may come from another of its machine's
    /// addresses); for outbound traffic from an application on this machine (often 127.0.0.1),
    /// the machine's one local workload.
    pub fn source_workload(
        &self,
        direction: Direction,
        source: SocketAddr,
        peer: Option<&SpiffeId>,
    ) -> Option<Arc<WorkloadMeta>> {
        let registry = &self.registry;
        // A peer identity outside Istio's form names no workload (and, as before, does not
        // keep the address lookup from finding one). The trust domain counts too: a federated
        // peer `td-b/ns/shop/sa/web` is not this mesh's `shop/web`.
        let peer =
            peer.and_then(|p| Some((p.trust_domain_name(), p.namespace()?, p.service_account()?)));
        let same_identity = |w: &Workload| {
            peer.is_none_or(|(td, ns, sa)| {
                td == self.trust_domain_of(w) && ns == w.namespace() && sa == w.service_account()
            })
        };
        registry
            .workload_at(source.ip())
            .filter(|w| same_identity(w))
            .or_else(|| {
                peer.and_then(|(_, ns, sa)| registry.workload_with_identity(ns, sa))
                    .filter(|w| same_identity(w))
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
}
