//! One identity per local workload (ztunnel's shared mode, on a machine): meshd's own identity
//! plus one per local service account that has its own source (meshd.yaml's
//! `workloadIdentities:`), each pinned to the SPIFFE ID the mesh expects for that service
//! account, so a source handing out any other SVID is refused rather than presented.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::source::{DevCaSource, FilesSource, IdentitySource, IstioCaSource, SpiffeHelperSource};
use crate::spire::SpireDelegatedSource;
use crate::{Error, IdentityHandle, IdentityManager, ManagerOptions, SpiffeId, TrustDomain};

/// Where one local service account's SVID comes from: a value of `workloadIdentities:`, whose
/// key is `<namespace>/<serviceAccount>`. Each is pinned to that service account's SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum WorkloadSource {
    /// PEM files another agent keeps fresh, as `identity.files`.
    Files(FilesSource),
    /// A spiffe-helper directory of this workload's own, as `identity.spiffeHelper`.
    SpiffeHelper(SpiffeHelperSource),
    /// meshd's development CA (`identity.devCa`, which must be meshd's own source) issues and
    /// renews an SVID for this service account.
    DevCa(WorkloadDevCa),
    /// A SPIRE agent's Delegated Identity API, the workload named by its selectors, as
    /// `identity.spireDelegated`.
    SpireDelegated(SpireDelegatedSource),
    /// The Istio CA of `controlPlane:`: meshd asks it for this service account's certificate
    /// with the service account's own token (one CSR per service account), renews it over
    /// mutual TLS with that certificate, and keeps it in `certDir`.
    IstioCa(WorkloadIstioCa),
}

/// `istioCa:` under a workload: the CA and its root are `controlPlane:`'s; the token and the
/// directory are the service account's own.
///
/// istiod issues a certificate for the identity of whoever authenticates the request, so the
/// first one needs a token of this service account (on a VM, the one `istioctl x workload
/// entry configure` writes for it). Impersonation, ztunnel's way of asking for another
/// identity with its own, is not used: istiod allows it only for pods on the caller's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadIstioCa {
    /// A token of this service account (audience `istio-ca`), read at each request that needs
    /// it: the first certificate, and a new one after the last expired.
    pub token_file: PathBuf,
    /// Where its certificate, key and root are kept (Istio's file names), so a restart
    /// renews with the certificate instead of a token. Not `controlPlane.certDir`, nor
    /// another workload's.
    pub cert_dir: PathBuf,
}

/// `devCa: {}` under a workload: everything comes from meshd's own `identity.devCa`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadDevCa {}

impl WorkloadSource {
    /// The full source for the service account `key` (`<namespace>/<serviceAccount>`) of
    /// `trust_domain`, pinned to its SPIFFE ID; `own` is meshd's own source (the dev CA a
    /// `devCa: {}` entry issues from). Errors name the key and field.
    pub fn resolve(
        &self,
        key: &str,
        trust_domain: &TrustDomain,
        own: &IdentitySource,
    ) -> Result<(SpiffeId, IdentitySource), Error> {
        let field = |rest: &str| format!("workloadIdentities.{key:?}{rest}");
        let Some((namespace, service_account)) = key.split_once('/') else {
            return Err(Error::Config {
                field: field(""),
                reason: "the key must be <namespace>/<serviceAccount>".into(),
            });
        };
        let expected =
            SpiffeId::istio(trust_domain.as_str(), namespace, service_account).map_err(|e| {
                Error::Config {
                    field: field(""),
                    reason: e.to_string(),
                }
            })?;
        let pin = |kind: &str, configured: &Option<SpiffeId>| match configured {
            Some(id) if *id != expected => Err(Error::Config {
                field: field(&format!(".{kind}.spiffeId")),
                reason: format!("{id} is not this service account's identity {expected}"),
            }),
            _ => Ok(Some(expected.clone())),
        };
        let source = match self {
            WorkloadSource::Files(files) => IdentitySource::Files(FilesSource {
                spiffe_id: pin("files", &files.spiffe_id)?,
                ..files.clone()
            }),
            WorkloadSource::SpiffeHelper(dir) => IdentitySource::SpiffeHelper(SpiffeHelperSource {
                spiffe_id: pin("spiffeHelper", &dir.spiffe_id)?,
                ..dir.clone()
            }),
            WorkloadSource::SpireDelegated(spire) => {
                IdentitySource::SpireDelegated(SpireDelegatedSource {
                    spiffe_id: pin("spireDelegated", &spire.spiffe_id)?,
                    ..spire.clone()
                })
            }
            WorkloadSource::IstioCa(ca) => IdentitySource::IstioCa(IstioCaSource {
                cert_dir: ca.cert_dir.clone(),
                spiffe_id: Some(expected.clone()),
            }),
            WorkloadSource::DevCa(WorkloadDevCa {}) => {
                let IdentitySource::DevCa(dev) = own else {
                    return Err(Error::Config {
                        field: field(".devCa"),
                        reason: "needs meshd's own identity to be identity.devCa (the CA that issues it)".into(),
                    });
                };
                if dev.trust_domain != *trust_domain {
                    return Err(Error::Config {
                        field: field(".devCa"),
                        reason: format!(
                            "the service account is in trust domain {trust_domain}, the dev CA issues for {}",
                            dev.trust_domain
                        ),
                    });
                }
                IdentitySource::DevCa(DevCaSource {
                    namespace: namespace.to_string(),
                    service_account: service_account.to_string(),
                    ..dev.clone()
                })
            }
        };
        Ok((expected, source))
    }
}

/// Every identity this meshd holds: its own, and one per local service account with a source
/// of its own. Cheap to clone; the handles follow their managers' rotations.
#[derive(Debug, Clone)]
pub struct IdentitySet {
    own: IdentityHandle,
    workloads: Arc<BTreeMap<SpiffeId, IdentityHandle>>,
}

impl IdentitySet {
    /// meshd's own identity only: every workload is served under it (one meshd, one identity).
    pub fn single(own: IdentityHandle) -> Self {
        IdentitySet {
            own,
            workloads: Arc::default(),
        }
    }

    /// meshd's own identity and `workloads`, each under the SPIFFE ID it is pinned to.
    pub fn new(
        own: IdentityHandle,
        workloads: impl IntoIterator<Item = (SpiffeId, IdentityHandle)>,
    ) -> Self {
        IdentitySet {
            own,
            workloads: Arc::new(workloads.into_iter().collect()),
        }
    }

    /// meshd's own identity: what workloads without their own are served under.
    pub fn own(&self) -> &IdentityHandle {
        &self.own
    }

    /// The identity of the service account `id`, when meshd holds one of its own for it.
    pub fn workload(&self, id: &SpiffeId) -> Option<&IdentityHandle> {
        self.workloads.get(id)
    }

    /// The identity a workload whose SPIFFE ID is `expected` is served under: its own when
    /// meshd holds it, else meshd's own (also when the workload has no valid ID).
    pub fn for_workload(&self, expected: Option<&SpiffeId>) -> &IdentityHandle {
        expected
            .and_then(|id| self.workloads.get(id))
            .unwrap_or(&self.own)
    }

    /// Whether any workload has an identity of its own.
    pub fn has_workload_identities(&self) -> bool {
        !self.workloads.is_empty()
    }

    /// The workloads' own identities, by SPIFFE ID (meshd's own not included).
    pub fn workloads(&self) -> impl Iterator<Item = (&SpiffeId, &IdentityHandle)> {
        self.workloads.iter()
    }
}

/// The managers of the workloads' own identities; dropping it stops their rotation.
#[derive(Default)]
pub struct WorkloadManagers {
    managers: Vec<(SpiffeId, IdentityManager)>,
}

impl WorkloadManagers {
    /// Starts one manager per `(SPIFFE ID, source)` (from [`WorkloadSource::resolve`]), all
    /// or none: the first that fails is the error, naming its identity.
    pub async fn start(
        sources: &[(SpiffeId, IdentitySource)],
        options: &ManagerOptions,
    ) -> Result<WorkloadManagers, Error> {
        let mut managers = Vec::with_capacity(sources.len());
        for (id, source) in sources {
            let manager = IdentityManager::start_with(source, options.clone())
                .await
                .map_err(|e| Error::Workload {
                    identity: id.to_string(),
                    source: Box::new(e),
                })?;
            managers.push((id.clone(), manager));
        }
        Ok(WorkloadManagers { managers })
    }

    /// The set of `own` and these identities.
    pub fn set(&self, own: IdentityHandle) -> IdentitySet {
        IdentitySet::new(
            own,
            self.managers.iter().map(|(id, m)| (id.clone(), m.handle())),
        )
    }

    /// Each identity's manager, for rotation counters and SIGHUP.
    pub fn managers(&self) -> impl Iterator<Item = (&SpiffeId, &IdentityManager)> {
        self.managers.iter().map(|(id, m)| (id, m))
    }
}
