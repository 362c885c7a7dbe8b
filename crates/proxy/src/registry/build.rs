//! Building the registry from the two sources: the configuration directory's WorkloadEntries
//! and ServiceEntries, and istiod's Workloads and Services (a union).
//!
//! - istiod workloads are keyed by uid, carry their own trust domain, their bound policies and
//!   the target port of each service they back; they have no labels, so a file's ServiceEntry
//!   selector never picks them, and istiod's services pick their endpoints from the workloads'
//!   `services` maps (unhealthy workloads are not endpoints).
//! - A refused istiod workload or service (waypoint, network gateway, ...) stays in the
//!   registry, marked, so that its addresses resolve to a refusal rather than to "outside the
//!   mesh". A workload with no address at all is not reachable and is left out.
//! - An address claimed by a file's workload and an istiod workload is a [`Conflict`] (see its
//!   documentation for the fail-closed behaviour).
//! - istiod's part is kept as its own indexes (`istiod.rs`), updated by what changed between
//!   two of istiod's states ([`Registry::with_mesh`]) and shared with the registry before;
//!   the directory's part is shared too, and only the conflicts are found again.

use std::sync::Arc;

use meshd_manifests::Snapshot;
use meshd_policy::networking::ServicePort;
use meshd_policy::values::parse_ip_block;
use meshd_workloadapi::MeshState;

use super::istiod::IstiodPart;
use super::{Conflict, FilePart, Origin, Port, Registry, Service, TUNNEL_ANNOTATION, Workload};

impl Registry {
    /// Builds the registry from the directory's snapshot and istiod's state (empty when meshd
    /// runs local-only); `is_local` decides which workload addresses belong to this machine.
    pub fn build(
        snapshot: &Snapshot,
        mesh: &MeshState,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        let mut files = FilePart::default();
        files.add(snapshot);
        files.local = files
            .workloads
            .iter()
            .filter(|w| is_local(w))
            .cloned()
            .collect();
        let mut istiod = IstiodPart::default();
        istiod.apply(&MeshState::default(), mesh, &is_local);
        Registry::assemble(Arc::new(files), istiod)
    }

    /// The registry for istiod's state `newer` beside this one's directory part: istiod's part
    /// updated by what changed since `older` (the state this registry was built with), shared
    /// with this registry otherwise. `is_local` is asked about the changed workloads only.
    pub fn with_mesh(
        &self,
        older: &MeshState,
        newer: &MeshState,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        let mut istiod = self.istiod.clone();
        istiod.apply(older, newer, &is_local);
        Registry::assemble(Arc::clone(&self.files), istiod)
    }

    fn assemble(files: Arc<FilePart>, istiod: IstiodPart) -> Self {
        let mut registry = Registry {
            files,
            istiod,
            ..Registry::default()
        };
        registry.find_conflicts();
        registry
    }

    /// Every address both sources claim, in address order: the directory's addresses looked
    /// up among istiod's (a machine's files are few; istiod's workloads are many).
    fn find_conflicts(&mut self) {
        let mut conflicts: Vec<Conflict> = self
            .files
            .by_address
            .iter()
            .filter_map(|(address, files)| {
                Some(Conflict {
                    address: *address,
                    file: files.first()?.key().to_string(),
                    istiod: self
                        .istiod
                        .by_address
                        .get(address)?
                        .first()?
                        .key()
                        .to_string(),
                })
            })
            .collect();
        conflicts.sort_by_key(|c| c.address);
        self.conflicted = conflicts.iter().map(|c| c.address).collect();
        self.conflicts = conflicts;
    }
}

impl FilePart {
    fn add(&mut self, snapshot: &Snapshot) {
        for entry in &snapshot.workload_entries {
            let meta = &entry.resource.metadata;
            let tunnel = meta.annotations.get(TUNNEL_ANNOTATION).map(String::as_str);
            let key = format!("{}/{}", meta.namespace(), meta.name());
            let spec = &entry.resource.spec;
            let td = meta.trust_domain();
            if let Some(w) = Workload::file(key, meta.namespace(), spec, tunnel, td) {
                self.add_workload(w);
            }
        }
        for entry in &snapshot.service_entries {
            let meta = &entry.resource.metadata;
            let spec = &entry.resource.spec;
            let mut service = Service {
                key: format!("{}/{}", meta.namespace(), meta.name()),
                namespace: meta.namespace().to_string(),
                name: meta.name().to_string(),
                hosts: spec.hosts.clone(),
                vips: spec
                    .addresses
                    .iter()
                    .filter_map(|a| parse_ip_block(a).ok())
                    .collect(),
                ports: spec.ports.iter().filter_map(port).collect(),
                origin: Origin::File,
                refused: None,
                endpoints: Vec::new(),
            };
            if let Some(selector) = &spec.workload_selector {
                // istiod's workloads carry no labels: a file's selector never picks them.
                service.endpoints = self
                    .workloads
                    .iter()
                    .filter(|w| {
                        w.namespace() == service.namespace
                            && !w.key().contains('#')
                            && selector
                                .labels
                                .iter()
                                .all(|(k, v)| w.labels().get(k) == Some(v))
                    })
                    .cloned()
                    .collect();
            }
            for (i, endpoint) in spec.endpoints.iter().flatten().enumerate() {
                let key = format!("{}#{i}", service.key);
                let td = meta.trust_domain();
                if let Some(w) = Workload::file(key, &service.namespace, endpoint, None, td) {
                    service.endpoints.push(self.add_workload(w));
                }
            }
            self.services.push(Arc::new(service));
        }
    }

    fn add_workload(&mut self, workload: Workload) -> Arc<Workload> {
        let workload = Arc::new(workload);
        for address in workload.addresses() {
            self.by_address
                .entry(address)
                .or_default()
                .push(Arc::clone(&workload));
        }
        self.by_identity
            .entry((
                workload.namespace().to_string(),
                workload.service_account().to_string(),
            ))
            .or_default()
            .push(Arc::clone(&workload));
        self.workloads.push(Arc::clone(&workload));
        workload
    }
}

fn port(p: &ServicePort) -> Option<Port> {
    Some(Port {
        number: u16::try_from(p.number?).ok()?,
        name: p.name.clone(),
        target: p.target_port.and_then(|t| u16::try_from(t).ok()),
    })
}
