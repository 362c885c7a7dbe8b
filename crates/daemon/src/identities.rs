//! meshd's identities: its own (`identity:`) and one per local service account that has a
//! source of its own (`workloadIdentities:`), each pinned to the SPIFFE ID the mesh expects
//! for it (`spiffe://<trust domain of its namespace>/ns/<ns>/sa/<sa>`).

use meshd_identity::{
    IdentityManager, IdentitySet, IdentitySource, ManagerOptions, SpiffeId, TrustDomain,
    WorkloadManagers,
};

use crate::StartupError;
use crate::schema::MeshdConfig;
use crate::startup::{Failure, IDENTITY_RETRY, Pauses, Waiting, until_ready};

/// Every identity meshd holds, with the managers that keep them fresh.
pub(crate) struct Identities {
    pub(crate) own: IdentityManager,
    pub(crate) workloads: WorkloadManagers,
}

impl Identities {
    /// The handles the proxy serves connections under.
    pub(crate) fn set(&self) -> IdentitySet {
        self.workloads.set(self.own.handle())
    }
}

/// Each `workloadIdentities:` entry as a full source pinned to its SPIFFE ID. Errors name the
/// key and field: a configuration error, found before anything starts.
pub(crate) fn workload_sources(
    config: &MeshdConfig,
) -> Result<Vec<(SpiffeId, IdentitySource)>, meshd_identity::Error> {
    config
        .workload_identities
        .iter()
        .map(|(key, source)| {
            let namespace = key.split_once('/').map_or(key.as_str(), |(ns, _)| ns);
            let trust_domain = match config.trust_domains.get(namespace) {
                Some(td) => td.clone(),
                None => TrustDomain::new(&config.trust_domain).map_err(|e| {
                    meshd_identity::Error::Config {
                        field: "trustDomain".into(),
                        reason: e.to_string(),
                    }
                })?,
            };
            let (id, resolved) = source.resolve(key, &trust_domain, &config.identity)?;
            resolved.check_paths()?;
            Ok((id, resolved))
        })
        .collect()
}

/// Starts the workloads' identities after meshd's own. As for meshd's own, files an agent
/// writes that cannot be used yet (missing, mid-rotation, or the SVID of another service
/// account) are waited for, not ready, the reason naming the workload's identity; a dev CA
/// or configuration failure ends start-up.
pub(crate) async fn start_workloads(
    config: &MeshdConfig,
    waiting: &Waiting,
) -> Result<WorkloadManagers, StartupError> {
    let sources = workload_sources(config).map_err(StartupError::Identity)?;
    if sources.is_empty() {
        return Ok(WorkloadManagers::default());
    }
    let sources = &sources;
    until_ready(waiting, Pauses::every(IDENTITY_RETRY), || async move {
        WorkloadManagers::start(sources, &ManagerOptions::default())
            .await
            .map_err(|e| {
                if e.curable_by_new_files() {
                    Failure::Wait(StartupError::Identity(e))
                } else {
                    Failure::Fatal(StartupError::Identity(e))
                }
            })
    })
    .await
}
