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

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use meshd_manifests::Snapshot;
use meshd_policy::networking::{ServicePort, WorkloadEntrySpec};
use meshd_policy::values::parse_ip_block;
use meshd_record::WorkloadMeta;
use meshd_workloadapi::MeshState;
use meshd_workloadapi::model::{self as xds, Tunnel};

use super::istiod::IstiodPart;
use super::{
    Conflict, FilePart, Origin, Port, Protocol, Registry, Service, TUNNEL_ANNOTATION, Workload,
};

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
                    file: files.first()?.key.clone(),
                    istiod: self.istiod.by_address.get(address)?.first()?.key.clone(),
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
            if let Some(w) = file_workload(key, meta.namespace(), &entry.resource.spec, tunnel) {
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
                        w.namespace == service.namespace
                            && !w.key.contains('#')
                            && selector
                                .labels
                                .iter()
                                .all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .cloned()
                    .collect();
            }
            for (i, endpoint) in spec.endpoints.iter().flatten().enumerate() {
                let key = format!("{}#{i}", service.key);
                if let Some(w) = file_workload(key, &service.namespace, endpoint, None) {
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
            .entry((workload.namespace.clone(), workload.service_account.clone()))
            .or_default()
            .push(Arc::clone(&workload));
        self.workloads.push(Arc::clone(&workload));
        workload
    }
}

/// The workload as records label it: its name, namespace and `app`/`version` labels.
fn meta(key: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Arc<WorkloadMeta> {
    let label = |keys: [&str; 2]| keys.iter().find_map(|k| labels.get(*k).cloned());
    Arc::new(WorkloadMeta {
        name: key
            .split_once('/')
            .map_or(key, |(_, name)| name)
            .to_string(),
        namespace: namespace.to_string(),
        app: label(["app", "app.kubernetes.io/name"]),
        version: label(["version", "app.kubernetes.io/version"]),
    })
}

fn file_workload(
    key: String,
    namespace: &str,
    spec: &WorkloadEntrySpec,
    tunnel: Option<&str>,
) -> Option<Workload> {
    Some(Workload {
        meta: meta(&key, namespace, &spec.labels),
        key,
        namespace: namespace.to_string(),
        address: spec
            .address
            .as_deref()?
            .parse::<IpAddr>()
            .ok()?
            .to_canonical(),
        other_addresses: Vec::new(),
        labels: spec.labels.clone(),
        service_account: spec
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_string()),
        trust_domain: None,
        ports: spec
            .ports
            .iter()
            .filter_map(|(name, p)| Some((name.clone(), u16::try_from(*p).ok()?)))
            .collect(),
        protocol: match tunnel {
            Some("none") | Some("tcp") | Some("TCP") => Protocol::Tcp,
            Some("quic") | Some("h3") => Protocol::HboneQuic,
            _ => Protocol::Hbone,
        },
        weight: spec.weight.unwrap_or(1),
        origin: Origin::File,
        refused: None,
        bound_policies: Arc::from([]),
        service_targets: Box::default(),
    })
}

/// An istiod workload, or `None` when it has no address (nothing to reach or to refuse).
pub(super) fn istiod_workload(w: &xds::Workload) -> Option<Workload> {
    let (address, others) = w.addresses.split_first()?;
    // Records name it as Istio's canonical labels would (`app`, `version`).
    let mut labels = BTreeMap::new();
    if !w.canonical_name.is_empty() {
        labels.insert("app".to_string(), w.canonical_name.clone());
    }
    if !w.canonical_revision.is_empty() {
        labels.insert("version".to_string(), w.canonical_revision.clone());
    }
    let name = if w.name.is_empty() { &w.uid } else { &w.name };
    Some(Workload {
        meta: meta(name, &w.namespace, &labels),
        key: w.uid.clone(),
        namespace: w.namespace.clone(),
        address: *address,
        other_addresses: others.to_vec(),
        // Labels are for selectors, which istiod resolved already: none are kept.
        labels: BTreeMap::new(),
        service_account: w.service_account.clone(),
        trust_domain: Some(w.trust_domain.clone()),
        ports: BTreeMap::new(),
        protocol: match w.tunnel {
            Tunnel::Hbone => Protocol::Hbone,
            Tunnel::None => Protocol::Tcp,
        },
        weight: w.capacity,
        origin: Origin::Istiod,
        refused: w.refused,
        bound_policies: w.authorization_policies.iter().cloned().collect(),
        service_targets: w
            .services
            .iter()
            .map(|(key, ports)| {
                let targets = ports
                    .iter()
                    .filter_map(|p| Some((p.service_port, p.target_port?)))
                    .collect();
                (key.clone(), targets)
            })
            .collect(),
    })
}

fn port(p: &ServicePort) -> Option<Port> {
    Some(Port {
        number: u16::try_from(p.number?).ok()?,
        name: p.name.clone(),
        target: p.target_port.and_then(|t| u16::try_from(t).ok()),
    })
}
