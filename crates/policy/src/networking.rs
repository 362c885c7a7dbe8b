//! `networking.istio.io` WorkloadEntry and ServiceEntry: the workloads and services on machines.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::meta::ObjectMeta;

/// A workload on some machine (Istio's WorkloadEntry).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntry {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3`.
    pub api_version: String,
    /// Always `WorkloadEntry`.
    pub kind: String,
    /// Name, namespace (the workload's namespace, part of its identity).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The workload.
    #[serde(default)]
    pub spec: WorkloadEntrySpec,
    /// Ignored (written by Kubernetes controllers).
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of a WorkloadEntry, also the form of a ServiceEntry's inline `endpoints[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    /// IP address of the workload (meshd does not resolve hostnames for workloads).
    pub address: Option<String>,
    /// Named ports: service port name → the workload's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels, matched by selectors of policies and services.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Network the workload is on.
    pub network: Option<String>,
    /// Locality (`region/zone/subzone`).
    pub locality: Option<String>,
    /// Load-balancing weight.
    pub weight: Option<u32>,
    /// Service account: the workload's identity is `<td>/ns/<namespace>/sa/<serviceAccount>`.
    pub service_account: Option<String>,
}

/// A service: hosts and VIPs with ports, backed by endpoints (Istio's ServiceEntry).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntry {
    /// `networking.istio.io/v1`, `v1beta1` or `v1alpha3`.
    pub api_version: String,
    /// Always `ServiceEntry`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The service.
    #[serde(default)]
    pub spec: ServiceEntrySpec,
    /// Ignored (written by Kubernetes controllers).
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    /// Host names of the service; required.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs (or CIDRs) of the service.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Ports; required.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// MESH_EXTERNAL or MESH_INTERNAL.
    pub location: Option<String>,
    /// NONE, STATIC, DNS or DNS_ROUND_ROBIN.
    pub resolution: Option<String>,
    /// Inline endpoints (mutually exclusive with `workloadSelector`).
    pub endpoints: Option<Vec<WorkloadEntrySpec>>,
    /// Selects WorkloadEntries of the same namespace as endpoints.
    pub workload_selector: Option<ServiceWorkloadSelector>,
    /// Visibility; accepted and ignored (a meshd directory is one trust scope).
    pub export_to: Option<Vec<String>>,
    /// Additional identities the endpoints may present.
    pub subject_alt_names: Option<Vec<String>>,
}

/// `ports[]` of a ServiceEntry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    /// The service port.
    pub number: Option<u32>,
    /// Protocol (TCP, HTTP, …); meshd treats every port as TCP.
    pub protocol: Option<String>,
    /// Port name; endpoints' named ports refer to it.
    pub name: Option<String>,
    /// The endpoints' port when they do not name one.
    pub target_port: Option<u32>,
}

/// `workloadSelector` of a ServiceEntry (Istio's `WorkloadSelector` with `labels`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceWorkloadSelector {
    /// Labels a WorkloadEntry must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
