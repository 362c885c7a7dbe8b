//! Certificates from the Istio CA: meshd's own (`identity.istioCa`) and one per local service
//! account that names it (`workloadIdentities: {ns/sa: {istioCa: …}}`), each asked for with
//! its own token (one CSR per service account), then renewed at half-life over mutual TLS with
//! the certificate it replaces, and persisted where its identity manager loads it from.

use meshd_identity::{IdentitySource, SpiffeId, WorkloadSource};
use meshd_xds::ControlPlaneSettings;
use meshd_xds::ca::{CaClient, CaStatus};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::CA_RETRY;
use crate::StartupError;
use crate::schema::MeshdConfig;
use crate::startup::{Failure, Pauses, Waiting, until_ready};

/// One CA client at work: what it reports and its renewal task.
pub(crate) struct Renewing {
    pub(crate) status: watch::Receiver<CaStatus>,
    pub(crate) task: JoinHandle<()>,
}

/// Every CA client of this meshd.
#[derive(Default)]
pub(crate) struct CaClients {
    /// meshd's own certificate, when its identity is the Istio CA's.
    pub(crate) own: Option<Renewing>,
    /// The workloads' own, by the SPIFFE ID each is pinned to.
    pub(crate) workloads: Vec<(SpiffeId, Renewing)>,
}

/// The certificate from the Istio CA, when the identity source is the CA client's directory:
/// the persisted one if still good, else one asked for with the token (waiting, with the
/// reason on readiness, while istiod cannot give one). Then renews it at half-life for the
/// life of the process. `None` when the identity comes from elsewhere.
pub(crate) async fn start_own(
    settings: &ControlPlaneSettings,
    identity: &IdentitySource,
    waiting: &Waiting,
) -> Result<Option<Renewing>, StartupError> {
    if !matches!(identity, IdentitySource::IstioCa(_)) {
        return Ok(None);
    }
    let (_, renewing) = start(settings.clone(), waiting).await?;
    Ok(Some(renewing))
}

/// One client per `workloadIdentities` entry whose source is `istioCa`, started in turn (each
/// waits, not ready, until its first certificate comes). The settings are `controlPlane:`'s
/// with the service account's name, token and directory: the configuration check made sure
/// its trust domain is the CA's and its directory is its own.
pub(crate) async fn start_workloads(
    settings: &ControlPlaneSettings,
    config: &MeshdConfig,
    waiting: &Waiting,
) -> Result<Vec<(SpiffeId, Renewing)>, StartupError> {
    let mut started = Vec::new();
    for (key, source) in &config.workload_identities {
        let WorkloadSource::IstioCa(ca) = source else {
            continue;
        };
        let Some((namespace, service_account)) = key.split_once('/') else {
            // The identity check refuses such a key before anything starts.
            continue;
        };
        let workload = ControlPlaneSettings {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            token_file: Some(ca.token_file.clone()),
            cert_dir: ca.cert_dir.clone(),
            ..settings.clone()
        };
        started.push(start(workload, waiting).await?);
    }
    Ok(started)
}

/// A usable certificate for `settings`' identity in its directory, then its renewal task;
/// the identity with it.
async fn start(
    settings: ControlPlaneSettings,
    waiting: &Waiting,
) -> Result<(SpiffeId, Renewing), StartupError> {
    let client = CaClient::new(settings).map_err(|e| StartupError::ControlPlane(e.to_string()))?;
    let client = &client;
    let expected = client.expected().clone();
    let expected = &expected;
    let (credentials, how) = until_ready(waiting, Pauses::every(CA_RETRY), || async move {
        client.bootstrap().await.map_err(|e| {
            Failure::Wait(StartupError::ControlPlane(format!(
                "Istio CA, for {expected}: {e}"
            )))
        })
    })
    .await?;
    tracing::info!(
        id = %credentials.id(),
        not_after = %credentials.not_after(),
        how,
        "certificate from the Istio CA"
    );
    let (status, updates) = watch::channel(CaStatus {
        not_after: Some(credentials.not_after()),
        since: Some(time::OffsetDateTime::now_utc()),
        source: how.to_string(),
        last_error: None,
    });
    let renewer = client.clone();
    let task = tokio::spawn(async move { renewer.renew_forever(credentials, status).await });
    Ok((
        expected.clone(),
        Renewing {
            status: updates,
            task,
        },
    ))
}
