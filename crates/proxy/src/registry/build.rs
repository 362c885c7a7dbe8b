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

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use meshd_manifests::Snapshot;
use meshd_policy::networking::{ServicePort, WorkloadEntrySpec};
use meshd_policy::values::parse_ip_block;
use meshd_record::WorkloadMeta;
use meshd_workloadapi::MeshState;
use meshd_workloadapi::model::{self as xds, Health, Tunnel};

use super::{Conflict, Origin, Port, Protocol, Registry, Service, TUNNEL_ANNOTATION, Workload};

impl Registry {
    /// Builds the registry from the directory's snapshot and istiod's state (empty when meshd
    /// runs local-only); `is_local` decides which workload addresses belong to this machine.
    pub fn build(
        snapshot: &Snapshot,
        mesh: &MeshState,
        is_local: impl Fn(&Workload) -> bool,
    ) -> Self {
        let mut registry = Registry::default();
        registry.add_files(snapshot);
        registry.add_istiod(mesh);
        registry.find_conflicts();
        registry.local = (0..registry.workloads.len())
            .filter(|i| is_local(&registry.workloads[*i]))
            .collect();
        registry
    }

    fn add_files(&mut self, snapshot: &Snapshot) {
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
                service.endpoints = (0..self.workloads.len())
                    .filter(|i| {
                        let w = &self.workloads[*i];
                        w.origin == Origin::File
                            && w.namespace == service.namespace
                            && !w.key.contains('#')
                            && selector
                                .labels
                                .iter()
                                .all(|(k, v)| w.labels.get(k) == Some(v))
                    })
                    .collect();
            }
            for (i, endpoint) in spec.endpoints.iter().flatten().enumerate() {
                let key = format!("{}#{i}", service.key);
                if let Some(w) = file_workload(key, &service.namespace, endpoint, None) {
                    service.endpoints.push(self.add_workload(w));
                }
            }
            self.services.push(service);
        }
    }

    fn add_istiod(&mut self, mesh: &MeshState) {
        // Key order, so that a registry built twice from the same state is the same (views,
        // dumps, "the first workload at an address").
        let mut workloads: Vec<&Arc<xds::Workload>> = mesh.workloads().collect();
        workloads.sort_by(|a, b| a.uid.cmp(&b.uid));
        let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
        for w in workloads {
            let Some(workload) = istiod_workload(w) else {
                continue;
            };
            let index = self.add_workload(workload);
            if w.health == Health::Healthy {
                for key in w.services.keys() {
                    by_service.entry(key.as_str()).or_default().push(index);
                }
            }
        }
        let mut services: Vec<&Arc<xds::Service>> = mesh.services().collect();
        services.sort_by(|a, b| (&a.namespace, &a.hostname).cmp(&(&b.namespace, &b.hostname)));
        for s in services {
            let key = s.key();
            let endpoints = by_service.remove(key.as_str()).unwrap_or_default();
            self.services.push(Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                hosts: vec![s.hostname.clone()],
                vips: s.addresses.iter().map(|a| a.address).collect(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| Port {
                        number: p.service_port,
                        name: None,
                        target: p.target_port,
                    })
                    .collect(),
                origin: Origin::Istiod,
                refused: s.refused,
                endpoints,
                key,
            });
        }
    }

    pub(super) fn add_workload(&mut self, workload: Workload) -> usize {
        let index = self.workloads.len();
        for address in workload.addresses() {
            self.by_address.entry(address).or_default().push(index);
        }
        self.by_identity
            .entry((workload.namespace.clone(), workload.service_account.clone()))
            .or_default()
            .push(index);
        self.workloads.push(workload);
        index
    }

    /// Every address both sources claim, in address order.
    fn find_conflicts(&mut self) {
        let mut conflicts: Vec<Conflict> = self
            .by_address
            .iter()
            .filter_map(|(address, indices)| {
                let by = |origin| {
                    indices
                        .iter()
                        .map(|i| &self.workloads[*i])
                        .find(|w| w.origin == origin)
                        .map(|w| w.key.clone())
                };
                Some(Conflict {
                    address: *address,
                    file: by(Origin::File)?,
                    istiod: by(Origin::Istiod)?,
                })
            })
            .collect();
        conflicts.sort_by_key(|c| c.address);
        self.conflicted = conflicts.iter().map(|c| c.address).collect();
        self.conflicts = conflicts;
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
        service_targets: BTreeMap::new(),
    })
}

/// An istiod workload, or `None` when it has no address (nothing to reach or to refuse).
fn istiod_workload(w: &xds::Workload) -> Option<Workload> {
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
