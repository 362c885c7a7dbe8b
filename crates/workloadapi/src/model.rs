//! meshd's model of istiod's resources: what the registry and the engine consume, every field of
//! the protos either mapped here or refused (see `convert/` for the field-by-field table).

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::intern::ServiceList;
pub use crate::intern::Sym;
pub use meshd_policy::values::StringPattern;

/// The trust domain of a workload whose `trust_domain` is empty (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// The service account of a workload whose `service_account` is empty (Istio's default).
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// One `istio.workload.Address` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A workload (resource name: its uid).
    Workload(Arc<Workload>),
    /// A service (resource name: `<namespace>/<hostname>`).
    Service(Arc<Service>),
}

/// Why meshd will not reach a workload or service istiod sent. Such a resource stays in the
/// model (dropping it would make its address look like a destination outside the mesh, which
/// meshd would dial directly, bypassing whatever stands in front of it); the proxy refuses
/// every connection to its addresses with this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Refusal {
    /// Bound to a waypoint: its L7 policy is enforced there, and meshd has no waypoint support;
    /// going direct would bypass it.
    Waypoint,
    /// Reached through a network gateway (another network): meshd has no double-HBONE.
    NetworkGateway,
    /// Expects an application tunnel (PROXY protocol) meshd does not speak.
    ApplicationTunnel,
    /// Reached with Istio's legacy sidecar mTLS, which meshd does not speak.
    LegacyIstioMtls,
    /// Has a hostname and no address: meshd does not resolve workload hostnames.
    HostnameOnly,
    /// Carries `extensions` meshd does not understand.
    Extensions,
}

impl Refusal {
    /// Every reason, for metrics that want a zero for each.
    pub const ALL: [Refusal; 6] = [
        Refusal::Waypoint,
        Refusal::NetworkGateway,
        Refusal::ApplicationTunnel,
        Refusal::LegacyIstioMtls,
        Refusal::HostnameOnly,
        Refusal::Extensions,
    ];

    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Waypoint => "waypoint",
            Refusal::NetworkGateway => "network_gateway",
            Refusal::ApplicationTunnel => "application_tunnel",
            Refusal::LegacyIstioMtls => "legacy_istio_mtls",
            Refusal::HostnameOnly => "hostname_only",
            Refusal::Extensions => "extensions",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Waypoint => "bound to a waypoint (meshd cannot enforce its L7 policy)",
            Refusal::NetworkGateway => "behind a network gateway (meshd has no double-HBONE)",
            Refusal::ApplicationTunnel => "expects an application tunnel meshd does not speak",
            Refusal::LegacyIstioMtls => {
                "reached with legacy Istio mTLS, which meshd does not speak"
            }
            Refusal::HostnameOnly => "has a hostname and no address",
            Refusal::Extensions => "carries extensions meshd does not understand",
        })
    }
}

/// How a workload is reached (`tunnel_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    /// Plain TCP: the workload has no mesh proxy in front of it.
    None,
    /// HBONE to its address, port 15008.
    Hbone,
}

/// `WorkloadStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Receives traffic.
    Healthy,
    /// Never picked as a service endpoint.
    Unhealthy,
}

/// `WorkloadType`, for records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadType {
    /// Deployment (also what istiod sends for WorkloadEntries).
    Deployment,
    /// CronJob.
    CronJob,
    /// Pod.
    Pod,
    /// Job.
    Job,
}

/// A service port and the port it leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortMapping {
    /// The port the service is reached at (1–65535).
    pub service_port: u16,
    /// The port on the endpoint; `None` when istiod sent 0 (a named target port this workload
    /// does not declare, or none given): meshd then uses the service's target port, else the
    /// service port itself (Istio's order for ServiceEntries).
    pub target_port: Option<u16>,
    /// `app_protocol` as sent (0 = unknown); meshd is L4 and only shows it.
    pub app_protocol: i32,
}

/// An `istio.workload.Workload`.
///
/// What only records and operators read is grouped in two shared parts, each held once for
/// every workload with the same values: [`Owner`] (a deployment's replicas share it) and
/// [`Placement`] (the workloads of one node share it). With 10⁵ workloads this halves the
/// model (benches/istiod.rs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    /// Its uid: the resource name (e.g. `cluster/networking.istio.io/WorkloadEntry/ns/name`).
    pub uid: Sym,
    /// Its name.
    pub name: Sym,
    /// Its namespace.
    pub namespace: Sym,
    /// Its addresses (0..n, v4 and v6 canonical; one, inline, for most workloads).
    pub addresses: Addresses,
    /// Its hostname (headless or hostname-only workloads).
    pub hostname: Sym,
    /// How it is reached.
    pub tunnel: Tunnel,
    /// It receives HBONE itself (no node proxy in front).
    pub native_tunnel: bool,
    /// Its trust domain (`cluster.local` when istiod sent none).
    pub trust_domain: Sym,
    /// Its service account (`default` when istiod sent none).
    pub service_account: Sym,
    /// The services it backs: `<namespace>/<hostname>` → its ports for that service.
    pub services: ServicePorts,
    /// The selector policies that apply to it, `<namespace>/<name>` (istiod resolved the
    /// selectors; namespace and mesh-wide policies are not listed).
    pub authorization_policies: Arc<[Sym]>,
    /// Its health.
    pub health: Health,
    /// `network_mode` HOST_NETWORK: shown only.
    pub host_network: bool,
    /// Load-balancing weight (`capacity`, 1 when unset).
    pub capacity: u32,
    /// Why meshd refuses to reach it, if it does.
    pub refused: Option<Refusal>,
    /// What runs it, for records.
    pub owner: Arc<Owner>,
    /// Where it runs, shown only.
    pub placement: Arc<Placement>,
}

/// A workload's addresses: inline up to one (the usual case), no allocation of their own.
pub type Addresses = smallvec::SmallVec<[IpAddr; 1]>;

/// What runs a workload (records and operators only), shared by the workloads that agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// `canonical_name`.
    pub canonical_name: Sym,
    /// `canonical_revision`.
    pub canonical_revision: Sym,
    /// `workload_type`.
    pub workload_type: WorkloadType,
    /// `workload_name`.
    pub workload_name: Sym,
}

/// Where a workload runs (shown only: meshd does not route by locality or network), shared
/// by the workloads that agree.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The cluster it belongs to.
    pub cluster_id: Sym,
    /// The network it is on (empty = the default network).
    pub network: Sym,
    /// The node it runs on.
    pub node: Sym,
    /// Locality (region, zone, subzone).
    pub locality: [Sym; 3],
}

impl Workload {
    /// `<td>/ns/<ns>/sa/<sa>`: its Istio principal, with its own trust domain.
    pub fn principal(&self) -> String {
        format!(
            "{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The services a workload backs and its ports for each, by service key (`<namespace>/
/// <hostname>`), in key order. A sorted shared slice rather than a `BTreeMap`: a workload backs
/// one or two services, and a map's first node takes ~500 bytes; the slice is shared by every
/// workload with the same services and ports (a deployment's replicas), and by the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePorts(ServiceList);

impl Default for ServicePorts {
    fn default() -> Self {
        ServicePorts(Arc::from(Vec::new()))
    }
}

impl ServicePorts {
    /// The ports for a service.
    pub fn get(&self, key: &str) -> Option<&[PortMapping]> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// The service keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Sym> {
        self.0.iter().map(|(k, _)| k)
    }

    /// (service key, ports), in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&Sym, &[PortMapping])> {
        self.0.iter().map(|(k, p)| (k, &**p))
    }

    /// How many services.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when it backs none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: AsRef<str>> FromIterator<(K, Vec<PortMapping>)> for ServicePorts {
    /// Sorted by key; of two entries with one key the last stays (as a map's insert). The
    /// keys, the port lists and the whole list are the process's shared copies.
    fn from_iter<I: IntoIterator<Item = (K, Vec<PortMapping>)>>(iter: I) -> Self {
        let mut entries: Vec<(K, Vec<PortMapping>)> = iter.into_iter().collect();
        entries.reverse();
        entries.sort_by(|a, b| a.0.as_ref().cmp(b.0.as_ref()));
        entries.dedup_by(|a, b| a.0.as_ref() == b.0.as_ref());
        crate::intern::with_pool(|pool| {
            let list: Vec<(Sym, Arc<[PortMapping]>)> = entries
                .iter()
                .map(|(k, v)| (pool.sym(k.as_ref()), pool.ports(v)))
                .collect();
            ServicePorts(pool.services(&list))
        })
    }
}

impl std::ops::Index<&str> for ServicePorts {
    type Output = [PortMapping];

    /// The ports for a service; panics when the workload does not back it (tests, as a map's
    /// index).
    fn index(&self, key: &str) -> &[PortMapping] {
        match self.get(key) {
            Some(ports) => ports,
            None => panic!("the workload does not back {key}"),
        }
    }
}

/// An address of a service (`NetworkAddress`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAddress {
    /// The network it is on.
    pub network: String,
    /// The address, or a CIDR when `length` was sent.
    pub address: IpNet,
}

/// `LoadBalancing`, kept to be shown: meshd balances by weight over healthy endpoints and does
/// not honour locality preferences.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadBalancing {
    /// `routing_preference` scopes, as sent.
    pub routing_preference: Vec<i32>,
    /// `mode` as sent.
    pub mode: i32,
    /// `health_policy` ALLOW_ALL: unhealthy endpoints are candidates too.
    pub allow_unhealthy: bool,
}

/// An `istio.workload.Service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its hostname (resource name `<namespace>/<hostname>`).
    pub hostname: String,
    /// Its VIPs.
    pub addresses: Vec<NetworkAddress>,
    /// Its ports.
    pub ports: Vec<PortMapping>,
    /// Identities its endpoints may present besides their own.
    pub subject_alt_names: Vec<String>,
    /// Load-balancing settings.
    pub load_balancing: Option<LoadBalancing>,
    /// `ip_families` as sent (shown only).
    pub ip_families: i32,
    /// Visible only in its namespace (`visibility` NAMESPACE).
    pub namespace_visible_only: bool,
    /// `canonical`, shown only.
    pub canonical: bool,
    /// Why meshd refuses to reach it, if it does.
    pub refused: Option<Refusal>,
}

impl Service {
    /// `<namespace>/<hostname>`: its resource name and the key workloads' `services` use.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }
}

/// An Authorization's scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Every workload in the mesh.
    Global,
    /// Every workload in its namespace.
    Namespace,
    /// The workloads that list it in `authorization_policies`.
    WorkloadSelector,
}

/// An Authorization's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Allow what matches.
    Allow,
    /// Deny what matches.
    Deny,
}

/// An `istio.security.Authorization`: a policy istiod converted to L4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Where it applies.
    pub scope: Scope,
    /// What it does.
    pub action: Action,
    /// Reported, never enforced.
    pub dry_run: bool,
    /// Groups OR: the policy matches when any group does.
    pub groups: Vec<Group>,
    /// The policy carried `extensions` meshd cannot evaluate: an ALLOW then allows nothing
    /// (it still applies), a DENY denies on its groups alone.
    pub extensions: bool,
}

impl Authorization {
    /// `<namespace>/<name>`: the resource name and what workloads list.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A group: every rule must hold (an empty group holds for every connection).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Group {
    /// Rules AND.
    pub rules: Vec<Rule>,
}

/// A rule: holds when any of its matches does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rule {
    /// Matches OR.
    pub matches: Vec<Match>,
}

/// A `(namespace, service account)` pair.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceAccount {
    /// The namespace.
    pub namespace: String,
    /// The service account.
    pub name: String,
}

/// A match: every field that is set must hold; within a field, values OR; every `not_` field
/// holds when none of its values hits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Match {
    /// Peer namespaces.
    pub namespaces: Vec<StringPattern>,
    /// Excluded peer namespaces.
    pub not_namespaces: Vec<StringPattern>,
    /// Peer service accounts.
    pub service_accounts: Vec<ServiceAccount>,
    /// Excluded peer service accounts.
    pub not_service_accounts: Vec<ServiceAccount>,
    /// Peer principals (`<td>/ns/<ns>/sa/<sa>`).
    pub principals: Vec<StringPattern>,
    /// Excluded peer principals.
    pub not_principals: Vec<StringPattern>,
    /// Source address blocks.
    pub source_ips: Vec<IpNet>,
    /// Excluded source address blocks.
    pub not_source_ips: Vec<IpNet>,
    /// Destination address blocks.
    pub destination_ips: Vec<IpNet>,
    /// Excluded destination address blocks.
    pub not_destination_ips: Vec<IpNet>,
    /// Destination ports.
    pub destination_ports: Vec<u16>,
    /// Excluded destination ports.
    pub not_destination_ports: Vec<u16>,
    /// The match carried `extensions` meshd cannot evaluate: it then never holds in an ALLOW,
    /// and holds on its other fields alone in a DENY.
    pub extensions: bool,
}

impl Match {
    /// True when no L4 field is set: what istiod emits for an L7-only part of a rule (and for a
    /// `trustDomains`-only source). Its meaning depends on the action: see meshd-rbac.
    pub fn is_empty(&self) -> bool {
        *self
            == Match {
                extensions: self.extensions,
                ..Match::default()
            }
    }
}
