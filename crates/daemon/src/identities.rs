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

/// Starts the identity. Files another agent writes (spiffe-helper, cert-manager) that cannot
/// be used yet (missing, half-written, not valid yet, expired, a key of another rotation, a
/// chain the bundle does not vouch for) are retried every second, not ready, with the reason
/// on readiness; a configuration error ends start-up, as does any dev CA failure (meshd
/// writes those files itself, so no agent will mend them).
pub(crate) async fn start_own(
    config: &MeshdConfig,
    waiting: &Waiting,
) -> Result<IdentityManager, StartupError> {
    let source = &config.identity;
    let agent_files = !matches!(source, IdentitySource::DevCa(_));
    if let IdentitySource::DevCa(dev) = source {
        tracing::warn!(
            "using the development CA in {}: for trying meshd only, production uses real certificates",
            dev.dir.display()
        );
    }
    until_ready(waiting, Pauses::every(IDENTITY_RETRY), || async move {
        IdentityManager::start(source).await.map_err(|e| {
            if agent_files && e.curable_by_new_files() {
                Failure::Wait(StartupError::Identity(e))
            } else {
                Failure::Fatal(StartupError::Identity(e))
            }
        })
    })
    .await
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
            resolved.check_paths().map_err(|e| match e {
                meshd_identity::Error::Config { field, reason } => meshd_identity::Error::Config {
                    field: format!("workloadIdentities.{key:?}.{field}"),
                    reason,
                },
                other => other,
            })?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeMap;
    use std::path::Path;

    use meshd_identity::{SpiffeHelperSource, WorkloadSource};

    use super::*;

    fn helper(dir: &Path) -> WorkloadSource {
        WorkloadSource::SpiffeHelper(SpiffeHelperSource {
            dir: dir.to_path_buf(),
            federated_bundles: BTreeMap::new(),
            spiffe_id: None,
        })
    }

    fn config(entries: &[(&str, WorkloadSource)]) -> MeshdConfig {
        MeshdConfig {
            trust_domain: "td-a".into(),
            trust_domains: BTreeMap::from([("bank".into(), TrustDomain::new("td-b").unwrap())]),
            workload_identities: entries
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..MeshdConfig::default()
        }
    }

    #[test]
    fn a_key_without_a_service_account_is_a_config_error_naming_it() {
        let e = workload_sources(&config(&[("web", helper(Path::new("/run/web")))])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "workloadIdentities.\"web\": the key must be <namespace>/<serviceAccount>"
        );
    }

    #[test]
    fn a_namespace_of_another_trust_domain_pins_that_domain_s_id() {
        // trustDomains maps `bank` to td-b: its service accounts' IDs are td-b's.
        let sources = workload_sources(&config(&[
            ("bank/teller", helper(Path::new("/run/teller"))),
            ("shop/web", helper(Path::new("/run/web"))),
        ]))
        .unwrap();
        let ids: Vec<String> = sources.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(
            ids,
            [
                "spiffe://td-b/ns/bank/sa/teller",
                "spiffe://td-a/ns/shop/sa/web"
            ]
        );
    }

    #[test]
    fn a_directory_that_can_never_exist_is_refused_naming_the_entry() {
        // Under a regular file: no agent can ever create it.
        let file = tempfile::NamedTempFile::new().unwrap();
        let e = workload_sources(&config(&[("shop/web", helper(&file.path().join("web")))]))
            .unwrap_err();
        let meshd_identity::Error::Config { field, .. } = &e else {
            panic!("not a config error: {e:?}");
        };
        assert_eq!(field, "workloadIdentities.\"shop/web\".spiffeHelper.dir");
    }
}
