//! The workload registry: which workloads and services exist, where they are, which are local,
//! built from a configuration snapshot and what istiod sent (meshd-workloadapi's `MeshState`).
//!
//! A WorkloadEntry is a workload on some machine; it is *local* when its address is one of this
//! machine's (or it is named in the daemon configuration), and meshd serves inbound traffic only
//! for local workloads. A ServiceEntry is a service: hosts and VIPs with ports, backed by
//! endpoints (WorkloadEntries picked by `workloadSelector`, or inline `endpoints`). istiod's
//! Workloads and Services join them (`build.rs`): a union, where an address claimed by both a
//! file's workload and an istiod workload is a [`Conflict`], and where istiod's workloads and
//! services meshd must not reach directly (waypoint, network gateway, ...) stay, refused.
//!
//! Balancing: a connection to a service picks one of its endpoints at random, weighted by the
//! endpoint's `weight` (default 1), among those not marked unhealthy. An endpoint is marked
//! unhealthy for [`EJECTION`] after a connection to it fails (passive outlier detection; meshd
//! runs no active health checks). When every endpoint is marked, all are candidates again, so a
//! service never becomes unreachable because of stale marks.

mod build;
mod health;
mod istiod;
mod resolve;
mod workload;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use meshd_workloadapi::model::Refusal as MeshRefusal;

use health::Unhealthy;
use istiod::IstiodPart;
use meshd_workloadapi::Sym;
pub use workload::Workload;

/// How long a failed endpoint is skipped.
pub const EJECTION: Duration = Duration::from_secs(10);

/// The annotation that picks how a workload is reached: `none` (outside the mesh, plain TCP),
/// `quic` (HBONE over HTTP/3), absent or anything else: HBONE over HTTP/2.
pub const TUNNEL_ANNOTATION: &str = "meshd.io/tunnel";

/// How a workload is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Through its machine's meshd, over HBONE (the default).
    Hbone,
    /// Through its machine's meshd, over HBONE on HTTP/3 (QUIC): experimental, meshd to meshd
    /// only; chosen with the annotation `meshd.io/tunnel: quic`.
    HboneQuic,
    /// Directly over plain TCP: a workload without a meshd in front of it.
    Tcp,
}

/// Where a workload or service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A file of the configuration directory.
    File,
    /// istiod.
    Istiod,
}

/// A service port and where it leads on each endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The service port.
    pub number: u16,
    /// The port name (endpoints' named ports refer to it).
    pub name: Option<String>,
    /// The endpoint port when the endpoint does not name one.
    pub target: Option<u16>,
}

/// A service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// `namespace/name` of its ServiceEntry; `namespace/hostname` for an istiod service.
    pub key: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Host names.
    pub hosts: Vec<String>,
    /// Its VIPs (single addresses or CIDRs).
    pub vips: Vec<ipnet::IpNet>,
    /// Ports.
    pub ports: Vec<Port>,
    /// Where it came from.
    pub origin: Origin,
    /// Why meshd refuses connections to it (a service behind a waypoint).
    pub refused: Option<MeshRefusal>,
    /// Its endpoints, for a file's service (istiod's are kept apart, by service key, so that a
    /// workload pushed alone updates them without copying the service).
    endpoints: Vec<Arc<Workload>>,
}

/// Where a connection should go once the registry has looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The workload to reach; `None` for a destination outside the registry.
    pub workload: Option<Arc<Workload>>,
    /// The address to connect to (the workload's address and target port, or the original).
    pub address: SocketAddr,
    /// The service the connection was for, if any.
    pub service: Option<Arc<Service>>,
}

/// Why a destination cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A known service without this port.
    #[error("service {service} has no port {port}")]
    NoSuchPort {
        /// The service.
        service: String,
        /// The requested port.
        port: u16,
    },
    /// A known service with no endpoint.
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    /// A host name nothing in the registry carries.
    #[error("unknown host {0:?}")]
    UnknownHost(String),
    /// A workload or service from istiod that meshd must not reach directly.
    #[error("{target} is {reason}: meshd refuses to connect to it directly")]
    Refused {
        /// The workload's uid or the service's key.
        target: String,
        /// Why.
        reason: MeshRefusal,
    },
    /// An address both a file's workload and an istiod workload claim.
    #[error("{0}")]
    Conflict(Conflict),
}

/// An address claimed by a workload from a file and by one from istiod. meshd cannot know which
/// identity and which policies are right for it, so it fails closed: outbound connections to
/// the address are refused ([`ResolveError::Conflict`]) and neither claim is served as a local
/// workload, until one of the two sources stops claiming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The address.
    pub address: IpAddr,
    /// The file's workload (`namespace/name`).
    pub file: String,
    /// istiod's workload (uid).
    pub istiod: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {} is claimed by workload {} (file) and by workload {} (istiod); connections to it are refused until one source drops it",
            self.address, self.file, self.istiod
        )
    }
}

/// The registry: the directory's part, rebuilt when the directory is, and istiod's part,
/// updated resource by resource as istiod pushes ([`IstiodPart`], shared with the registry
/// before: a push of one workload costs that workload, not the mesh).
#[derive(Debug, Default)]
pub struct Registry {
    files: Arc<FilePart>,
    istiod: IstiodPart,
    conflicts: Vec<Conflict>,
    conflicted: HashSet<IpAddr>,
    /// Shared with the registries that follow this one on reloads ([`Registry::keep_health_of`]).
    unhealthy: Arc<Mutex<Unhealthy>>,
}

/// The directory's WorkloadEntries and ServiceEntries (few: a machine's own files).
#[derive(Debug, Default)]
struct FilePart {
    workloads: Vec<Arc<Workload>>,
    services: Vec<Arc<Service>>,
    by_address: HashMap<IpAddr, Vec<Arc<Workload>>>,
    /// (namespace, service account) → workloads with that identity.
    by_identity: HashMap<(String, String), Vec<Arc<Workload>>>,
    local: Vec<Arc<Workload>>,
}

impl Registry {
    /// Every workload: the directory's in file order, then istiod's by uid.
    pub fn workloads(&self) -> Vec<&Arc<Workload>> {
        let mut istiod: Vec<&Arc<Workload>> = self.istiod.workloads.values().collect();
        istiod.sort_by(|a, b| a.key().cmp(b.key()));
        self.files.workloads.iter().chain(istiod).collect()
    }

    /// Every service: the directory's in file order, then istiod's by key.
    pub fn services(&self) -> Vec<&Arc<Service>> {
        let mut istiod: Vec<&Arc<Service>> = self.istiod.services.values().collect();
        istiod.sort_by(|a, b| a.key.cmp(&b.key));
        self.files.services.iter().chain(istiod).collect()
    }

    /// Addresses claimed by both sources (see [`Conflict`]), for status and logs.
    pub fn conflicts(&self) -> &[Conflict] {
        &self.conflicts
    }

    /// The workloads at an address: the directory's first, then istiod's by uid.
    fn at(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<Workload>> {
        self.files
            .by_address
            .get(&ip)
            .into_iter()
            .flatten()
            .chain(self.istiod.by_address.get(&ip).into_iter().flatten())
    }

    /// The local workload serving `addr` (address and port), if any: the only destinations
    /// inbound traffic may reach. A refused istiod workload (meshd must not be its front door:
    /// its traffic belongs to a waypoint or gateway) and a conflicted address serve nothing.
    pub fn local_workload(&self, addr: SocketAddr) -> Option<&Workload> {
        let ip = addr.ip().to_canonical();
        if self.conflicted.contains(&ip) || self.refusal_at(ip).is_some() {
            return None;
        }
        self.local_workloads()
            .find(|w| w.addresses().any(|a| a == ip) && w.serves_port(addr.port()))
    }

    /// The first refused workload at an address, if any: one is enough to refuse the address
    /// (two istiod workloads may share one, e.g. host-network pods).
    pub fn refusal_at(&self, ip: IpAddr) -> Option<&Workload> {
        self.at(ip.to_canonical())
            .find(|w| w.refused().is_some())
            .map(|w| &**w)
    }

    /// The workload at an address (the first one listed, as outbound resolution picks).
    pub fn workload_at(&self, ip: IpAddr) -> Option<&Workload> {
        self.at(ip.to_canonical()).next().map(|w| &**w)
    }

    /// The one workload with this identity, if exactly one has it.
    pub fn workload_with_identity(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Option<&Workload> {
        let key = (namespace.to_string(), service_account.to_string());
        let mut with = self
            .files
            .by_identity
            .get(&key)
            .into_iter()
            .flatten()
            .chain(
                self.istiod
                    .by_identity
                    .get(&(Sym::from(namespace), Sym::from(service_account)))
                    .into_iter()
                    .flatten(),
            );
        match (with.next(), with.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }

    /// True when `workload` (one of [`Registry::workloads`]) is local.
    pub fn is_local(&self, workload: &Workload) -> bool {
        match workload.origin() {
            Origin::File => self.files.local.iter().any(|w| **w == *workload),
            Origin::Istiod => self.istiod.local.contains_key(workload.key()),
        }
    }

    /// A service's endpoints.
    pub fn endpoints<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Workload> {
        self.endpoints_shared(service).map(|w| &**w)
    }

    fn endpoints_shared<'a>(
        &'a self,
        service: &'a Service,
    ) -> impl Iterator<Item = &'a Arc<Workload>> {
        let istiod = match service.origin {
            Origin::File => None,
            Origin::Istiod => self.istiod.endpoints.get(service.key.as_str()),
        };
        service.endpoints.iter().chain(istiod.into_iter().flatten())
    }

    /// Local workloads: the directory's, then istiod's by uid.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Workload> {
        self.files
            .local
            .iter()
            .chain(self.istiod.local.values())
            .map(|w| &**w)
    }
}
