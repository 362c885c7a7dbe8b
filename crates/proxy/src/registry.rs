//! The workload registry: which workloads and services exist, where they are, which are local,
//! built from a configuration snapshot.
//!
//! A WorkloadEntry is a workload on some machine; it is *local* when its address is one of this
//! machine's (or it is named in the daemon configuration), and meshd serves inbound traffic only
//! for local workloads. A ServiceEntry is a service: hosts and VIPs with ports, backed by
//! endpoints (WorkloadEntries picked by `workloadSelector`, or inline `endpoints`).
//!
//! Balancing: a connection to a service picks one of its endpoints at random, weighted by the
//! endpoint's `weight` (default 1), among those not marked unhealthy. An endpoint is marked
//! unhealthy for [`EJECTION`] after a connection to it fails (passive outlier detection; meshd
//! runs no active health checks). When every endpoint is marked, all are candidates again, so a
//! service never becomes unreachable because of stale marks.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd_manifests::Snapshot;
use meshd_policy::networking::{ServicePort, WorkloadEntrySpec};
use meshd_policy::values::parse_ip_block;
use rand::Rng;

use meshd_record::WorkloadMeta;

/// How long a failed endpoint is skipped.
pub const EJECTION: Duration = Duration::from_secs(10);

/// Marks kept before expired ones are first swept: a sweep is O(marks) under the registry's
/// lock, so below this (a few hundred endpoints failing at once) none is needed at all.
const PRUNE_UNHEALTHY_ABOVE: usize = 1024;

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

/// A workload, as the proxy needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// `namespace/name` of its WorkloadEntry (inline endpoints get `namespace/service#index`).
    pub key: String,
    /// Its namespace (part of its identity).
    pub namespace: String,
    /// Its address.
    pub address: IpAddr,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its service account (`default` when unset, as Istio).
    pub service_account: String,
    /// Named ports.
    pub ports: BTreeMap<String, u16>,
    /// How it is reached.
    pub protocol: Protocol,
    /// Load-balancing weight.
    pub weight: u32,
    // Built once with the registry and shared by every record of a connection to or from the
    // workload (two copies of four strings per connection, ~500 bytes, before).
    meta: Arc<WorkloadMeta>,
}

impl Workload {
    /// The Istio principal of the workload for a trust domain.
    pub fn principal(&self, trust_domain: &str) -> String {
        format!(
            "{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The workload as records label it.
    pub fn meta(&self) -> Arc<WorkloadMeta> {
        Arc::clone(&self.meta)
    }

    /// True when the workload accepts connections on `port`: any of its named ports, or any
    /// port at all when it names none.
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.values().any(|p| *p == port)
    }
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
    /// `namespace/name` of its ServiceEntry.
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
    /// Indices into the registry's workloads.
    endpoints: Vec<usize>,
}

/// Where a connection should go once the registry has looked at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The workload and port to reach; `None` for a destination outside the registry.
    pub workload: Option<usize>,
    /// The address to connect to (the workload's address and target port, or the original).
    pub address: SocketAddr,
    /// The service the connection was for, if any.
    pub service: Option<usize>,
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
}

/// The registry.
#[derive(Debug, Default)]
pub struct Registry {
    workloads: Vec<Workload>,
    services: Vec<Service>,
    by_address: HashMap<IpAddr, Vec<usize>>,
    /// (namespace, service account) → workloads with that identity.
    by_identity: HashMap<(String, String), Vec<usize>>,
    local: Vec<usize>,
    /// Shared with the registries that follow this one on reloads ([`Registry::keep_health_of`]).
    unhealthy: Arc<Mutex<Unhealthy>>,
}

/// Endpoint addresses marked unhealthy, until when; expired marks are swept in amortised O(1)
/// per new mark: a sweep runs only once the map has doubled since the last one left it (and
/// never below [`PRUNE_UNHEALTHY_ABOVE`]), so the map stays within twice the marks alive at the
/// last sweep, and a burst of failures does not pay an O(n) sweep each under the lock.
#[derive(Debug)]
struct Unhealthy {
    marks: HashMap<SocketAddr, Instant>,
    /// The size at which the next insert sweeps first.
    sweep_at: usize,
    /// Sweeps since the registry was built, for tests.
    sweeps: u64,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            marks: HashMap::new(),
            sweep_at: PRUNE_UNHEALTHY_ABOVE,
            sweeps: 0,
        }
    }
}

impl Unhealthy {
    fn mark(&mut self, address: SocketAddr, now: Instant) {
        if self.marks.len() >= self.sweep_at && !self.marks.contains_key(&address) {
            self.marks.retain(|_, until| *until > now);
            self.sweeps += 1;
            self.sweep_at = PRUNE_UNHEALTHY_ABOVE.max(self.marks.len().saturating_mul(2));
        }
        self.marks.insert(address, now + EJECTION);
    }
}

impl Registry {
    /// Builds the registry; `is_local` decides which workload addresses belong to this machine.
    pub fn build(snapshot: &Snapshot, is_local: impl Fn(&Workload) -> bool) -> Self {
        let mut registry = Registry::default();
        for entry in &snapshot.workload_entries {
            let meta = &entry.resource.metadata;
            let tunnel = meta.annotations.get(TUNNEL_ANNOTATION).map(String::as_str);
            let key = format!("{}/{}", meta.namespace(), meta.name());
            if let Some(w) = workload(key, meta.namespace(), &entry.resource.spec, tunnel) {
                registry.add_workload(w);
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
                endpoints: Vec::new(),
            };
            if let Some(selector) = &spec.workload_selector {
                service.endpoints = (0..registry.workloads.len())
                    .filter(|i| {
                        let w = &registry.workloads[*i];
                        w.namespace == service.namespace
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
                if let Some(w) = workload(key, &service.namespace, endpoint, None) {
                    service.endpoints.push(registry.add_workload(w));
                }
            }
            registry.services.push(service);
        }
        registry.local = (0..registry.workloads.len())
            .filter(|i| is_local(&registry.workloads[*i]))
            .collect();
        registry
    }

    fn add_workload(&mut self, workload: Workload) -> usize {
        let index = self.workloads.len();
        self.by_address
            .entry(workload.address)
            .or_default()
            .push(index);
        self.by_identity
            .entry((workload.namespace.clone(), workload.service_account.clone()))
            .or_default()
            .push(index);
        self.workloads.push(workload);
        index
    }

    /// Every workload.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// A workload by index.
    pub fn workload(&self, index: usize) -> &Workload {
        &self.workloads[index]
    }

    /// Every service.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// A service by index.
    pub fn service(&self, index: usize) -> &Service {
        &self.services[index]
    }

    /// The local workload serving `addr` (address and port), if any: the only destinations
    /// inbound traffic may reach.
    pub fn local_workload(&self, addr: SocketAddr) -> Option<&Workload> {
        self.local
            .iter()
            .map(|i| &self.workloads[*i])
            .find(|w| w.address == addr.ip().to_canonical() && w.serves_port(addr.port()))
    }

    /// The workload at an address (the first one listed, as outbound resolution picks).
    pub fn workload_at(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_address
            .get(&ip.to_canonical())
            .and_then(|ws| ws.first())
            .map(|i| &self.workloads[*i])
    }

    /// The one workload with this identity, if exactly one has it.
    pub fn workload_with_identity(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Option<&Workload> {
        match self
            .by_identity
            .get(&(namespace.to_string(), service_account.to_string()))
            .map(Vec::as_slice)
        {
            Some([only]) => Some(&self.workloads[*only]),
            _ => None,
        }
    }

    /// True when the workload at `index` (into [`Registry::workloads`]) is local.
    pub fn is_local(&self, index: usize) -> bool {
        self.local.contains(&index)
    }

    /// A service's endpoints.
    pub fn endpoints<'a>(&'a self, service: &'a Service) -> impl Iterator<Item = &'a Workload> {
        service
            .endpoints
            .iter()
            .filter_map(|i| self.workloads.get(*i))
    }

    /// False while a connection to `ip` (any port) failed within the last [`EJECTION`]: the
    /// endpoint is skipped until then.
    pub fn is_healthy(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        !unhealthy
            .marks
            .iter()
            .any(|(addr, until)| addr.ip() == ip && *until > now)
    }

    /// Local workloads.
    pub fn local_workloads(&self) -> impl Iterator<Item = &Workload> {
        self.local.iter().map(|i| &self.workloads[*i])
    }

    /// Resolves an address: a service VIP picks an endpoint and maps the port; a workload
    /// address is that workload; anything else passes through unchanged.
    pub fn resolve_addr(&self, addr: SocketAddr) -> Result<Resolved, ResolveError> {
        let ip = addr.ip().to_canonical();
        if let Some(index) = self
            .services
            .iter()
            .position(|s| s.vips.iter().any(|v| v.contains(&ip)))
        {
            return self.pick(index, addr.port());
        }
        let workload = self.by_address.get(&ip).and_then(|ws| ws.first().copied());
        Ok(Resolved {
            workload,
            address: SocketAddr::new(ip, addr.port()),
            service: None,
        })
    }

    /// Resolves a host name: a service host (or `name.namespace`, Kubernetes-style) picks an
    /// endpoint; a literal IP resolves as an address.
    pub fn resolve_host(&self, host: &str, port: u16) -> Result<Resolved, ResolveError> {
        if let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return self.resolve_addr(SocketAddr::new(ip, port));
        }
        let index = self
            .services
            .iter()
            .position(|s| {
                s.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
                    || host.eq_ignore_ascii_case(&format!("{}.{}", s.name, s.namespace))
            })
            .ok_or_else(|| ResolveError::UnknownHost(host.to_string()))?;
        self.pick(index, port)
    }

    fn pick(&self, index: usize, port: u16) -> Result<Resolved, ResolveError> {
        let service = &self.services[index];
        let service_port = service
            .ports
            .iter()
            .find(|p| p.number == port)
            .ok_or_else(|| ResolveError::NoSuchPort {
                service: service.key.clone(),
                port,
            })?;
        let candidates: Vec<(usize, SocketAddr)> = service
            .endpoints
            .iter()
            .map(|i| {
                (
                    *i,
                    SocketAddr::new(
                        self.workloads[*i].address,
                        target_port(&self.workloads[*i], service_port),
                    ),
                )
            })
            .collect();
        let healthy: Vec<(usize, SocketAddr)> = {
            let now = Instant::now();
            let unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
            candidates
                .iter()
                .filter(|(_, a)| unhealthy.marks.get(a).is_none_or(|until| *until <= now))
                .copied()
                .collect()
        };
        let pool = if healthy.is_empty() {
            &candidates
        } else {
            &healthy
        };
        let total: u64 = pool
            .iter()
            .map(|(i, _)| u64::from(self.workloads[*i].weight.max(1)))
            .sum();
        if total == 0 {
            return Err(ResolveError::NoEndpoints(service.key.clone()));
        }
        let mut ticket = rand::rng().random_range(0..total);
        for (i, address) in pool {
            let weight = u64::from(self.workloads[*i].weight.max(1));
            if ticket < weight {
                return Ok(Resolved {
                    workload: Some(*i),
                    address: *address,
                    service: Some(index),
                });
            }
            ticket -= weight;
        }
        Err(ResolveError::NoEndpoints(service.key.clone()))
    }

    /// Takes over `previous`'s endpoint health. A reload builds a new registry; an endpoint
    /// ejected for a failed connection must stay ejected for the rest of its [`EJECTION`], not
    /// be tried again by the first connection after every reload.
    pub fn keep_health_of(&mut self, previous: &Registry) {
        self.unhealthy = previous.unhealthy.clone();
    }

    /// Marks an endpoint address unhealthy after a failed connection. Only workload
    /// addresses are remembered (the only ones [`Registry::resolve_addr`] balances over), so
    /// failed passthrough destinations cannot grow the map; expired marks are dropped as new
    /// ones come (see [`Unhealthy`]).
    pub fn report_failure(&self, address: SocketAddr) {
        self.report_failure_at(address, Instant::now());
    }

    /// [`Registry::report_failure`] as if it happened at `now`, so tests can let marks expire
    /// without waiting [`EJECTION`].
    #[doc(hidden)]
    pub fn report_failure_at(&self, address: SocketAddr, now: Instant) {
        if !self.by_address.contains_key(&address.ip().to_canonical()) {
            return;
        }
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mark(address, now);
    }

    /// How many endpoint addresses are marked (expired marks included), for tests.
    #[doc(hidden)]
    pub fn unhealthy_len(&self) -> usize {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marks
            .len()
    }

    /// How many times expired marks were swept, for tests.
    #[doc(hidden)]
    pub fn unhealthy_sweeps(&self) -> u64 {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweeps
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

fn workload(
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
        labels: spec.labels.clone(),
        service_account: spec
            .service_account
            .clone()
            .unwrap_or_else(|| "default".to_string()),
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
    })
}

fn port(p: &ServicePort) -> Option<Port> {
    Some(Port {
        number: u16::try_from(p.number?).ok()?,
        name: p.name.clone(),
        target: p.target_port.and_then(|t| u16::try_from(t).ok()),
    })
}

/// The endpoint port: its port named like the service port, else the service's targetPort,
/// else the service port itself (Istio's order).
fn target_port(workload: &Workload, port: &Port) -> u16 {
    port.name
        .as_ref()
        .and_then(|n| workload.ports.get(n).copied())
        .or(port.target)
        .unwrap_or(port.number)
}
