//! `security.istio.io` PeerAuthentication.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

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
    /// Per-port overrides, keyed by the workload's (target) port number as written: every
    /// Istio example writes the key as a YAML integer (`8080:`), Kubernetes stores it as the
    /// string `"8080"`; both are read here, and validation checks that each is a port.
    #[serde(default, deserialize_with = "port_level_mtls")]
    pub port_level_mtls: Option<BTreeMap<String, MutualTls>>,
}

/// `portLevelMtls` with integer or string keys (an integer key is kept as its decimal text).
fn port_level_mtls<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<BTreeMap<String, MutualTls>>, D::Error> {
    Ok(Option::<PortMap>::deserialize(deserializer)?.map(|m| m.0))
}

struct PortMap(BTreeMap<String, MutualTls>);

impl<'de> Deserialize<'de> for PortMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> Visitor<'de> for MapVisitor {
            type Value = PortMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping from port numbers to mTLS settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PortMap, A::Error> {
                let mut ports = BTreeMap::new();
                while let Some(PortKey(port)) = map.next_key()? {
                    let mtls = map.next_value()?;
                    // Same text twice is a duplicate key (the YAML layer names it); different
                    // texts of one number ("8080", "08080") are left to validation.
                    if ports.insert(port.clone(), mtls).is_some() {
                        return Err(de::Error::custom(format!("port {port} is listed twice")));
                    }
                }
                Ok(PortMap(ports))
            }
        }
        deserializer.deserialize_map(MapVisitor)
    }
}

/// A `portLevelMtls` key: an integer or a string, as text.
struct PortKey(String);

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = PortKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortKey, E> {
                Ok(PortKey(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortKey, E> {
                Ok(PortKey(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortKey, E> {
                Ok(PortKey(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<PortKey, E> {
                Err(E::custom("expected a port number, found a boolean"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<PortKey, E> {
                Err(E::custom(
                    "expected a port number, found a fractional number",
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<PortKey, E> {
                Err(E::custom("expected a port number, found null"))
            }
        }
        deserializer.deserialize_any(KeyVisitor)
    }
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
