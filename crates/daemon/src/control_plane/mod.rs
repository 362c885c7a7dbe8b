//! istiod as a second source of the mesh: the certificate from the Istio CA, workloads,
//! services and policies over Delta xDS, and the state persisted between runs.
//!
//! Start-up order: the certificate first (the identity manager loads what the CA client
//! writes in `controlPlane.certDir`), then the xDS stream (authenticated by that certificate,
//! or the token), then the mesh state: the one persisted by the last run if there is one
//! (meshd enforces what it last knew while istiod is away), else meshd waits for istiod's
//! first answer of both types. It never starts on an empty state it was not told is empty: a
//! workload whose policies live in istiod would be open to all until they arrived.

mod ca;
mod metrics;
mod persisted;
mod store;
mod view;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshd_admin::Readiness;
use meshd_identity::{IdentityHandle, SpiffeId};
use meshd_workloadapi::MeshState;
use meshd_xds::ControlPlaneSettings;
use meshd_xds::ads::{AdsClient, XdsStatus};
use meshd_xds::ca::CaStatus;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::StartupError;
use crate::startup::{Failure, Pauses, Waiting, until_ready};

pub(crate) use ca::{CaClients, start_own as start_ca, start_workloads as start_workload_cas};

pub(crate) use metrics::ControlPlaneMetrics;
pub use persisted::{STATE_FILE, read_state};
pub(crate) use view::ControlPlaneView;

/// The readiness condition pending until meshd has a mesh state (istiod's or persisted).
pub(crate) const READY_CONDITION: &str = "control-plane";

/// How often a first certificate is asked for again while the CA cannot give one (istiod
/// unreachable, a token it refuses: an operator may be replacing it).
const CA_RETRY: Duration = Duration::from_secs(1);

/// How long istiod's first push is awaited quietly: a reachable istiod answers well within
/// it, so only a real wait is logged and shown as one.
const FIRST_PUSH_QUIET: Duration = Duration::from_secs(2);

/// How often start-up looks whether istiod's first push has arrived (the stream itself
/// reconnects with its own backoff).
const FIRST_PUSH_POLL: Duration = Duration::from_millis(100);

/// The running control-plane clients and what they publish.
pub(crate) struct ControlPlane {
    /// The mesh state, after every response applied.
    pub(crate) mesh: watch::Receiver<Arc<MeshState>>,
    /// The xDS stream's status.
    pub(crate) xds: watch::Receiver<XdsStatus>,
    /// The CA client's status, when meshd's identity is the Istio CA's.
    pub(crate) ca: Option<watch::Receiver<CaStatus>>,
    /// The CA clients' of the workloads whose identity is the Istio CA's.
    pub(crate) workload_cas: Vec<(SpiffeId, watch::Receiver<CaStatus>)>,
    /// When the persisted state meshd started on was written, if it started on one.
    pub(crate) persisted: Option<SystemTime>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The address istiod is told the VM has: `controlPlane.instanceIp`, else the local address
/// the kernel routes towards istiod.
async fn instance_ip(settings: &ControlPlaneSettings) -> Result<IpAddr, StartupError> {
    if let Some(ip) = settings.instance_ip {
        return Ok(ip);
    }
    let target = settings
        .xds_target()
        .map_err(|e| StartupError::ControlPlane(e.to_string()))?;
    let peer: Option<SocketAddr> = tokio::net::lookup_host(&target.dial)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next());
    let peer = peer.ok_or_else(|| {
        StartupError::ControlPlane(format!(
            "cannot resolve {} to find this machine's address towards istiod: set controlPlane.instanceIp",
            target.dial
        ))
    })?;
    meshd_xds::node::local_address_towards(peer)
        .map_err(|e| StartupError::ControlPlane(e.to_string()))
}

/// Starts the xDS stream from the persisted state, if any, and waits until there is a mesh
/// state to run on.
pub(crate) async fn start_xds(
    settings: &ControlPlaneSettings,
    identity: IdentityHandle,
    cas: CaClients,
    readiness: &Readiness,
    waiting: &Waiting,
    metrics: ControlPlaneMetrics,
) -> Result<ControlPlane, StartupError> {
    let path = state_path(settings);
    let loaded = persisted::load(&path);
    let persisted =
        (!loaded.state.is_empty()).then_some(loaded.written.unwrap_or(SystemTime::UNIX_EPOCH));
    if persisted.is_some() {
        tracing::info!(
            path = %path.display(),
            skipped = loaded.skipped,
            "starting on the istiod state persisted by the last run"
        );
    }
    metrics.set_refused(loaded.state.refused());
    let (store, mesh) = store::MeshStore::new(loaded.state, loaded.held, metrics.clone());
    persisted::spawn_writer(path, store.held(), store.changed());
    let instance_ip = instance_ip(settings).await?;
    let client = AdsClient::new(settings.clone(), instance_ip, Some(identity), metrics.xds)
        .map_err(|e| StartupError::ControlPlane(e.to_string()))?;
    let mut xds = client.status();
    let mut tasks = vec![tokio::spawn(client.run(store))];
    let ca = cas.own.map(|own| {
        tasks.push(own.task);
        own.status
    });
    let workload_cas = (cas.workloads.into_iter())
        .map(|(id, renewing)| {
            tasks.push(renewing.task);
            (id, renewing.status)
        })
        .collect();
    if persisted.is_none() {
        // Nothing to enforce yet: wait for istiod's first answer of both types, as start-up
        // waits for what time cures (the reason on readiness, systemd's start timeout
        // extended meanwhile).
        let quiet = matches!(
            tokio::time::timeout(FIRST_PUSH_QUIET, xds.wait_for(|s| s.ready)).await,
            Ok(Ok(_))
        );
        let status = &xds;
        if !quiet {
            until_ready(waiting, Pauses::every(FIRST_PUSH_POLL), || async move {
                let now = status.borrow();
                if now.ready {
                    return Ok(());
                }
                let why = now
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "connecting".into());
                Err(Failure::Wait(StartupError::ControlPlane(format!(
                    "istiod's first push of both types ({why})"
                ))))
            })
            .await?;
        }
    }
    readiness.set_ready(READY_CONDITION);
    Ok(ControlPlane {
        mesh,
        xds,
        ca,
        workload_cas,
        persisted,
        tasks,
    })
}

/// Where the state is persisted: beside the certificate, in `controlPlane.certDir`.
fn state_path(settings: &ControlPlaneSettings) -> PathBuf {
    settings.cert_dir.join(STATE_FILE)
}

impl ControlPlane {
    /// What operators see, read at each request.
    pub(crate) fn view(&self) -> ControlPlaneView {
        ControlPlaneView {
            xds: self.xds.clone(),
            ca: self.ca.clone(),
            workload_cas: self.workload_cas.clone(),
            mesh: self.mesh.clone(),
            persisted: self.persisted,
        }
    }

    /// What `/healthz/ready` says beside "ready" while istiod is away.
    pub(crate) fn readiness_note(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let xds = self.xds.clone();
        let persisted = self.persisted;
        move || {
            let status = xds.borrow();
            if status.state == meshd_xds::ads::StreamState::Connected && status.ready {
                return None;
            }
            let why = status
                .last_error
                .clone()
                .unwrap_or_else(|| "connecting".to_string());
            Some(match (status.ready, persisted) {
                (false, Some(at)) => format!(
                    "control plane: istiod not reached yet ({why}); enforcing the state persisted at {}",
                    humantime_secs(at)
                ),
                _ => format!(
                    "control plane: istiod unreachable ({why}); enforcing the last state it sent"
                ),
            })
        }
    }
}

/// Seconds since the Unix epoch, as the persisted state's time is shown.
fn humantime_secs(at: SystemTime) -> String {
    let secs = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .map(|t| t.to_string())
        .unwrap_or_else(|_| secs.to_string())
}
