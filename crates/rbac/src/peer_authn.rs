//! PeerAuthentication: the effective mTLS mode of a workload port (Istio's documented semantics,
//! without istiod's two port-level slips — meshd decision M4, see lib.rs and the table in
//! docs/configuration.md, "How policies are enforced").

use std::collections::HashMap;

use meshd_policy::authz::Labels;
use meshd_policy::{MtlsMode, PeerAuthentication, PeerAuthnLevel};

use crate::PolicyKey;

/// The effective mode for one port, and which PeerAuthentication set it (None: the default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveMode {
    /// STRICT or PERMISSIVE (DISABLE and the default resolve to PERMISSIVE).
    pub strict: bool,
    /// The PeerAuthentication whose setting won, if any.
    pub source: Option<PolicyKey>,
}

#[derive(Debug, Clone)]
struct CompiledPeerAuthn {
    key: PolicyKey,
    labels: Labels,
    mode: MtlsMode,
    ports: HashMap<u16, MtlsMode>,
}

/// PeerAuthentications indexed by level.
#[derive(Debug, Clone, Default)]
pub(crate) struct PeerAuthnIndex {
    mesh: Vec<CompiledPeerAuthn>,
    namespace: HashMap<String, Vec<CompiledPeerAuthn>>,
    workload: HashMap<String, Vec<CompiledPeerAuthn>>,
}

impl PeerAuthnIndex {
    pub(crate) fn build<'a>(
        policies: impl IntoIterator<Item = &'a PeerAuthentication>,
        root_namespace: &str,
    ) -> Self {
        let mut index = PeerAuthnIndex::default();
        for pa in policies {
            let ns = pa.metadata.namespace();
            let compiled = CompiledPeerAuthn {
                key: PolicyKey::new(ns, pa.metadata.name()),
                labels: pa
                    .spec
                    .selector
                    .as_ref()
                    .map(|s| s.match_labels.clone())
                    .unwrap_or_default(),
                mode: pa.spec.mode(),
                ports: pa
                    .spec
                    .port_level_mtls
                    .iter()
                    .flatten()
                    .filter_map(|(port, m)| {
                        Some((port.parse().ok()?, m.mode.unwrap_or(MtlsMode::Unset)))
                    })
                    .collect(),
            };
            match pa.level(root_namespace) {
                PeerAuthnLevel::Mesh => index.mesh.push(compiled),
                PeerAuthnLevel::Ignored => {}
                PeerAuthnLevel::Workload => index
                    .workload
                    .entry(ns.to_string())
                    .or_default()
                    .push(compiled),
                PeerAuthnLevel::Namespace => index
                    .namespace
                    .entry(ns.to_string())
                    .or_default()
                    .push(compiled),
            }
        }
        index
    }

    /// The PeerAuthentication that makes some port of (namespace, labels) STRICT, if any: the
    /// workload-wide mode (asked at port 0, which no port-level setting can name) or any of
    /// the port-level settings that select the workload.
    pub(crate) fn strict_anywhere(&self, namespace: &str, labels: &Labels) -> Option<PolicyKey> {
        let port_level = self
            .workload
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|pa| pa.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .flat_map(|pa| pa.ports.keys().copied());
        std::iter::once(0)
            .chain(port_level)
            .map(|port| self.effective(namespace, labels, port))
            .find(|mode| mode.strict)
            .and_then(|mode| mode.source)
    }

    /// The mode for (namespace, labels, port): workload port level, workload, namespace, mesh,
    /// then PERMISSIVE. Several candidates at one level (possible only for workloads the
    /// snapshot does not list, since loading rejects conflicts) fail closed: STRICT wins.
    pub(crate) fn effective(&self, namespace: &str, labels: &Labels, port: u16) -> EffectiveMode {
        let workload: Vec<&CompiledPeerAuthn> = self
            .workload
            .get(namespace)
            .into_iter()
            .flatten()
            .filter(|pa| pa.labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
            .collect();
        let levels: [Vec<(MtlsMode, &PolicyKey)>; 4] = [
            workload
                .iter()
                .filter_map(|pa| pa.ports.get(&port).map(|m| (*m, &pa.key)))
                .collect(),
            workload.iter().map(|pa| (pa.mode, &pa.key)).collect(),
            self.namespace
                .get(namespace)
                .into_iter()
                .flatten()
                .map(|pa| (pa.mode, &pa.key))
                .collect(),
            self.mesh.iter().map(|pa| (pa.mode, &pa.key)).collect(),
        ];
        for level in levels {
            let set: Vec<(MtlsMode, &PolicyKey)> = level
                .into_iter()
                .filter(|(m, _)| *m != MtlsMode::Unset)
                .collect();
            if let Some((_, key)) = set.iter().find(|(m, _)| *m == MtlsMode::Strict) {
                return EffectiveMode {
                    strict: true,
                    source: Some((*key).clone()),
                };
            }
            if let Some((_, key)) = set.first() {
                return EffectiveMode {
                    strict: false,
                    source: Some((*key).clone()),
                };
            }
        }
        EffectiveMode {
            strict: false,
            source: None,
        }
    }
}
