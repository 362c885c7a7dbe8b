//! `security.istio.io` PeerAuthentication.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::meta::{ObjectMeta, WorkloadSelector};

/// An Istio PeerAuthentication: whether plaintext may reach the workloads it covers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthentication {
    /// `security.istio.io/v1` or `v1beta1`.
    pub api_version: String,
    /// Always `PeerAuthentication`.
    pub kind: String,
    /// Name, namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy; absent means UNSET at its level.
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
    /// Ignored (written by Kubernetes controllers).
    #[serde(default)]
    pub status: Option<IgnoredAny>,
}

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Narrows the policy to workloads with these labels (workload level).
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port.
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the workload's (target) port number.
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// The level a PeerAuthentication applies at (Istio's mesh → namespace → workload order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerAuthnLevel {
    /// In the root namespace without a selector: every workload.
    Mesh,
    /// Without a selector, or with a selector without labels: its namespace.
    Namespace,
    /// With selector labels, outside the root namespace: matching workloads of its namespace.
    Workload,
    /// With selector labels in the root namespace: ignored, as Istio ignores it.
    Ignored,
}

impl PeerAuthentication {
    /// The level this policy applies at, given the mesh root namespace.
    pub fn level(&self, root_namespace: &str) -> PeerAuthnLevel {
        let in_root = self.metadata.namespace() == root_namespace;
        match (&self.spec.selector, in_root) {
            (None, true) => PeerAuthnLevel::Mesh,
            (Some(s), true) if !s.match_labels.is_empty() => PeerAuthnLevel::Ignored,
            (Some(s), false) if !s.match_labels.is_empty() => PeerAuthnLevel::Workload,
            _ => PeerAuthnLevel::Namespace,
        }
    }
}

impl PeerAuthenticationSpec {
    /// The workload-wide mode, UNSET when absent.
    pub fn mode(&self) -> MtlsMode {
        self.mtls
            .as_ref()
            .and_then(|m| m.mode)
            .unwrap_or(MtlsMode::Unset)
    }
}

/// `mtls` / `portLevelMtls[port]`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// The mode; UNSET when absent.
    pub mode: Option<MtlsMode>,
}

/// PeerAuthentication modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the parent level.
    Unset,
    /// Acts as PERMISSIVE: mTLS between meshd instances cannot be turned off.
    Disable,
    /// Plaintext and mTLS both accepted.
    Permissive,
    /// Only mTLS accepted.
    Strict,
}

impl MtlsMode {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MtlsMode::Unset => "UNSET",
            MtlsMode::Disable => "DISABLE",
            MtlsMode::Permissive => "PERMISSIVE",
            MtlsMode::Strict => "STRICT",
        }
    }
}
