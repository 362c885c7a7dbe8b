//! meshd's operator views: the JSON shape of each, served by the admin endpoint at
//! `GET /status/<view>`, filled in by the proxy and the daemon, and printed by `meshd status
//! <view> --json`. A crate of its own so that what fills the views in (meshd-proxy) does not
//! depend on what prints them (meshd-status: an HTTP client and terminal tables).
//!
//! Field names are camelCase; a field may be added in a later
//! version, none is renamed or removed without a new view name. Timestamps are RFC 3339 (UTC),
//! durations seconds, addresses `ip:port`, identities `spiffe://…` URIs. Optional values are
//! `null` when unknown.
//!
//! It does not gather the data, fetch it or render it.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A view's timestamp: RFC 3339, UTC, as every view writes it.
pub fn rfc3339(at: impl Into<OffsetDateTime>) -> String {
    at.into().format(&Rfc3339).unwrap_or_default()
}

/// [`rfc3339`] to whole seconds, for times a person reads in a table (connection start).
pub fn rfc3339_seconds(at: impl Into<OffsetDateTime>) -> String {
    let at = at.into();
    rfc3339(at.replace_nanosecond(0).unwrap_or(at))
}

/// The names of the views, in the order the page and `meshd status` show them.
pub const VIEWS: [&str; 9] = [
    "summary",
    "traffic",
    "workloads",
    "services",
    "policies",
    "certs",
    "control-plane",
    "connections",
    "denials",
];

/// `GET /status/summary`: the state of this meshd at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// meshd's version.
    pub version: String,
    /// The configuration generation in force (1 at start, +1 per applied reload).
    pub generation: u64,
    /// Why the newest configuration on disk was rejected, while the previous one stays.
    pub last_reload_error: Option<String>,
    /// This meshd's identity.
    pub identity: String,
    /// When its certificate expires.
    pub not_after: String,
    /// Seconds until then (negative once expired).
    pub seconds_left: i64,
    /// Set when the certificate has expired or has less than a quarter of its lifetime left.
    pub certificate_warning: Option<String>,
    /// Local workloads.
    pub local_workloads: usize,
    /// Connections open now.
    pub open_connections: usize,
    /// Connections refused or denied since start.
    pub denials_total: u64,
}

/// `GET /status/workloads`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workloads {
    /// The configuration generation the view was made from.
    pub generation: u64,
    /// Every workload, local first, then by name.
    pub workloads: Vec<Workload>,
}

/// One workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// `namespace/name` of its WorkloadEntry.
    pub name: String,
    /// True when this meshd serves it.
    pub local: bool,
    /// Its SPIFFE identity.
    pub identity: String,
    /// Its address.
    pub address: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// How it is reached: `hbone`, `hbone-quic` or `tcp`.
    pub protocol: String,
    /// Local workloads: the AuthorizationPolicies that select it.
    pub policies: Vec<PolicyRef>,
    /// Local workloads: the effective PeerAuthentication mode of each of its ports (port `0`
    /// stands for every port it does not name).
    pub mtls: Vec<PortMode>,
}

/// A policy selecting a workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRef {
    /// `namespace/name`.
    pub policy: String,
    /// `ALLOW`, `DENY`, `AUDIT` or `CUSTOM`.
    pub action: String,
}

/// The PeerAuthentication mode of one port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMode {
    /// The port; `0` for the workload-wide mode.
    pub port: u16,
    /// `STRICT` or `PERMISSIVE`.
    pub mode: String,
    /// The PeerAuthentication that set it (`namespace/name`), `null` for the default.
    pub source: Option<String>,
}

/// `GET /status/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Services {
    /// The configuration generation the view was made from.
    pub generation: u64,
    /// Every service.
    pub services: Vec<Service>,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `namespace/name` of its ServiceEntry.
    pub name: String,
    /// Host names.
    pub hosts: Vec<String>,
    /// VIPs (addresses or CIDRs).
    pub vips: Vec<String>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// The service port.
    pub number: u16,
    /// Its name.
    pub name: Option<String>,
    /// The endpoint port when an endpoint names none.
    pub target_port: Option<u16>,
}

/// A service endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// The workload (`namespace/name`).
    pub workload: String,
    /// Its address.
    pub address: String,
    /// False while a recent connection to it failed (it is skipped for a while).
    pub healthy: bool,
}

/// `GET /status/policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policies {
    /// The configuration generation the view was made from.
    pub generation: u64,
    /// The mesh root namespace (its policies apply mesh-wide).
    pub root_namespace: String,
    /// AuthorizationPolicies, then PeerAuthentications, each by name.
    pub policies: Vec<Policy>,
}

/// One AuthorizationPolicy or PeerAuthentication.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// `AuthorizationPolicy` or `PeerAuthentication`.
    pub kind: String,
    /// `namespace/name`.
    pub name: String,
    /// `mesh`, `namespace` or `workload` (a selector), or `targetRef` (not enforced).
    pub scope: String,
    /// AuthorizationPolicy: `ALLOW`, `DENY`, `AUDIT`, `CUSTOM`; PeerAuthentication: its mTLS
    /// mode (`STRICT`, `PERMISSIVE`, `DISABLE`, `UNSET`).
    pub action: String,
    /// AuthorizationPolicy: its rules; PeerAuthentication: its port-level settings.
    pub rules: usize,
    /// What changes its meaning: dry-run, L7 parts, and every warning the loader reported.
    pub warnings: Vec<String>,
    /// `file:line:column` it was read from.
    pub source: String,
}

/// `GET /status/certs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certs {
    /// The identity the certificate proves.
    pub identity: String,
    /// Its serial number, hex bytes joined by `:`.
    pub serial: String,
    /// Its issuer's distinguished name.
    pub issuer: String,
    /// Start of its validity.
    pub not_before: String,
    /// End of its validity.
    pub not_after: String,
    /// Seconds until `notAfter` (negative once expired).
    pub seconds_left: i64,
    /// Set when it has expired or has less than a quarter of its lifetime left.
    pub warning: Option<String>,
    /// Certificates taken into use since start.
    pub rotations: u64,
    /// Certificate sets refused since start (the previous one stayed in use).
    pub failed_rotations: u64,
    /// The trust domains this meshd accepts peers from, with their roots.
    pub trust_domains: Vec<TrustDomain>,
    /// The local workloads' own identities (one identity per local workload), each with its
    /// certificate's expiry; empty when every workload is served under `identity`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadCert>,
}

/// One local workload's own identity in `GET /status/certs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCert {
    /// The identity (pinned: the service account's SPIFFE ID).
    pub identity: String,
    /// Its certificate's serial number, hex bytes joined by `:`.
    pub serial: String,
    /// End of its validity.
    pub not_after: String,
    /// Seconds until `notAfter` (negative once expired).
    pub seconds_left: i64,
    /// Set when it has expired or has less than a quarter of its lifetime left.
    pub warning: Option<String>,
}

/// A trust domain and its bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustDomain {
    /// The trust domain.
    pub trust_domain: String,
    /// Its roots.
    pub roots: Vec<Root>,
}

/// A root certificate of a bundle (never key material: there is none in a bundle).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    /// Its subject's distinguished name.
    pub subject: String,
    /// End of its validity.
    pub not_after: String,
}

/// `GET /status/connections`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connections {
    /// Open connections, oldest first.
    pub connections: Vec<Connection>,
}

/// One open connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    /// Its trace id (shared by both meshd instances of a tunnel).
    pub id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// False while it is being authorized and connected.
    pub established: bool,
    /// Where it came from.
    pub source: String,
    /// The source identity: the authenticated peer (inbound mTLS) or this meshd's (outbound).
    pub source_identity: Option<String>,
    /// The destination as asked for.
    pub destination: String,
    /// The address connected to.
    pub upstream: Option<String>,
    /// The destination identity expected (outbound) or served (inbound).
    pub destination_identity: Option<String>,
    /// `h2` or `h3` over HBONE, `tcp` otherwise.
    pub transport: String,
    /// True when the tunnel side uses mutual TLS.
    pub mtls: bool,
    /// Bytes from the source toward the destination so far.
    pub bytes_in: u64,
    /// Bytes back to the source so far.
    pub bytes_out: u64,
    /// When it was accepted.
    pub started: String,
    /// Seconds since then.
    pub age_seconds: f64,
}

/// `GET /status/denials`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Denials {
    /// How many are kept: older ones are dropped.
    pub capacity: usize,
    /// Refused or denied connections since start (kept or not).
    pub total: u64,
    /// The most recent first.
    pub denials: Vec<Denial>,
}

/// One refused or denied connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Denial {
    /// When it ended.
    pub at: String,
    /// Its trace id.
    pub id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// Where it came from.
    pub source: String,
    /// The source identity, `null` for plaintext.
    pub source_identity: Option<String>,
    /// The destination as asked for.
    pub destination: String,
    /// The refusal class: `denied`, `closed_by_policy`, `not_local`, `own_port`, `limited`,
    /// `handshake`, `unreachable`.
    pub outcome: String,
    /// The deciding policy (`namespace/name`), when a policy decided.
    pub policy: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// `GET /status/control-plane`: istiod as this meshd sees it (`configured: false` and nothing
/// else for a meshd that reads only its directory).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlane {
    /// Whether meshd joins an istiod (`controlPlane:` or `--istio-bundle`).
    pub configured: bool,
    /// istiod's configured address (`host:port`).
    pub address: Option<String>,
    /// What is dialled (`connectTo`, from istioctl's `hosts`, or the address).
    pub dial: Option<String>,
    /// The name istiod's certificate is verified against.
    pub server_name: Option<String>,
    /// `connected`, `connecting` or `backing off`.
    pub stream: Option<String>,
    /// Since when (RFC 3339).
    pub since: Option<String>,
    /// Why the last stream ended or the last attempt failed.
    pub last_error: Option<String>,
    /// Both types ACKed at least once since start.
    pub ready: bool,
    /// Streams opened since start.
    pub connections: u64,
    /// Per resource type.
    pub types: Vec<XdsType>,
    /// Resources in force, per source (`files`, `istiod`).
    pub sources: Vec<SourceCounts>,
    /// istiod workloads and services held but refused, by reason.
    pub refused: BTreeMap<String, usize>,
    /// Addresses claimed by a file's WorkloadEntry and an istiod Workload alike: connections
    /// to and from them are refused until one source drops the claim.
    pub conflicts: Vec<String>,
    /// When the persisted state meshd started on was written, if it started on one.
    pub started_on_persisted_state: Option<String>,
    /// The Istio CA certificate, when meshd's identity comes from it.
    pub certificate: Option<IstioCertificate>,
    /// The Istio CA certificates of local workloads with an identity of their own from it
    /// (`workloadIdentities: {…: {istioCa: …}}`), by SPIFFE ID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_certificates: BTreeMap<String, IstioCertificate>,
}

/// One xDS resource type's exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsType {
    /// The type URL.
    pub type_url: String,
    /// Resources held.
    pub resources: usize,
    /// ACKs sent.
    pub acks: u64,
    /// NACKs sent.
    pub nacks: u64,
    /// The last reply.
    pub last: Option<XdsReply>,
    /// The last NACK (kept after later ACKs).
    pub last_nack: Option<XdsReply>,
}

/// An ACK or NACK meshd sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct XdsReply {
    /// ACK (`true`) or NACK.
    pub ack: bool,
    /// The nonce of the response it answered.
    pub nonce: String,
    /// When (RFC 3339).
    pub at: String,
    /// The NACK's error detail.
    pub error: Option<String>,
}

/// Resources in force from one source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceCounts {
    /// `files` (the configuration directory) or `istiod`.
    pub source: String,
    /// Workloads.
    pub workloads: usize,
    /// Services.
    pub services: usize,
    /// Authorization policies.
    pub policies: usize,
}

/// The certificate from the Istio CA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IstioCertificate {
    /// How the certificate in use was obtained: `token`, `mtls` (renewed with the previous
    /// one) or `persisted` (read back at start).
    pub source: String,
    /// Its expiry (RFC 3339).
    pub not_after: Option<String>,
    /// The last renewal failure, until the next success.
    pub last_error: Option<String>,
}

/// `GET /status/traffic`: this node's traffic as a picture: who talks to whom (a graph of
/// workloads and peers) and connections, denials and bytes over the last minutes. Bounded:
/// at most `bucketCount` buckets, and the busiest-recent edges up to the caps below, whatever
/// the traffic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// Seconds each bucket covers.
    pub bucket_seconds: u64,
    /// Every bucket of the window, oldest first; the last is the current one (still filling).
    pub buckets: Vec<TrafficBucket>,
    /// The nodes the edges name, local workloads first (every local workload, idle or not, up
    /// to `maxNodes`).
    pub nodes: Vec<TrafficNode>,
    /// Who talked to whom: established open connections and those that ended within the
    /// window, one edge per (from, to, verdict), the most recently seen first.
    pub edges: Vec<TrafficEdge>,
    /// At most this many nodes are shown.
    pub max_nodes: usize,
    /// At most this many edges are shown.
    pub max_edges: usize,
    /// Edges known but not shown (past `maxEdges`, or naming a node past `maxNodes`).
    pub omitted_edges: usize,
    /// Nodes known but not shown.
    pub omitted_nodes: usize,
    /// Edges forgotten since start because meshd keeps a bounded number of them (the least
    /// recently seen goes first).
    pub forgotten_edges: u64,
}

/// One bucket of the traffic chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficBucket {
    /// Its start (RFC 3339).
    pub start: String,
    /// Connections accepted in it.
    pub connections: u64,
    /// Connections refused or denied in it (as the denials view counts them).
    pub denials: u64,
    /// Bytes carried (both directions) counted in it: meshd counts the bytes of open
    /// connections when a bucket ends with a connection closing, or when this view is read,
    /// so bytes can land in a later bucket than they flowed in while nobody watches.
    pub bytes: u64,
}

/// A node of the traffic graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficNode {
    /// Its name: a workload's `namespace/name` (or istiod uid), else a peer's SPIFFE identity,
    /// a service, or an address.
    pub id: String,
    /// `local` (a workload this meshd serves), `workload`, `service`, `identity` or `address`.
    pub kind: String,
}

/// An edge of the traffic graph: connections from one node to another with one verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficEdge {
    /// The source node's `id`.
    pub from: String,
    /// The destination node's `id`.
    pub to: String,
    /// `allowed` (carried traffic, or still open) or `denied` (refused or denied).
    pub verdict: String,
    /// Connections: open now, and ended since the edge appeared.
    pub connections: u64,
    /// Of which open now.
    pub open: u64,
    /// Bytes carried, both directions.
    pub bytes: u64,
    /// The last time a connection of it was seen (RFC 3339).
    pub last_seen: String,
    /// Denied edges: the outcome of the last one (`denied`, `not_local`, …).
    pub outcome: Option<String>,
    /// Denied edges: the policy that decided the last one, when a policy did.
    pub policy: Option<String>,
}
