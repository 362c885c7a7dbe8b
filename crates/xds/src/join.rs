//! Joining istiod in one call: certificate, identity rotation, renewal and the ADS stream.

use std::net::IpAddr;
use std::sync::Arc;

use meshd_identity::IdentityManager;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ads::{AdsClient, Handler, XdsStatus};
use crate::ca::{CaClient, CaStatus};
use crate::metrics::XdsMetrics;
use crate::settings::ControlPlaneSettings;
use crate::{Error, node};

/// A running control-plane client; its tasks stop when it is dropped.
pub struct ControlPlane {
    /// The workload identity from the Istio CA, rotated on each renewal (hand its
    /// [`IdentityManager::handle`] to HBONE).
    pub identity: IdentityManager,
    /// The stream's status.
    pub xds: watch::Receiver<XdsStatus>,
    /// The certificate's status.
    pub ca: watch::Receiver<CaStatus>,
    /// The address sent as `INSTANCE_IPS`.
    pub instance_ip: IpAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Joins istiod as `settings` say: a valid persisted certificate, else one asked for with the
/// token (an error if neither is possible: the caller decides to run without istiod); the
/// `istioCa` identity source over `certDir`; renewal at half-life by mTLS; and the Delta ADS
/// stream feeding `handler`, authenticated by the current certificate (and the token while it
/// is readable). Must be called within a tokio runtime.
pub async fn start<H: Handler>(
    settings: ControlPlaneSettings,
    handler: H,
    metrics: Arc<XdsMetrics>,
) -> Result<ControlPlane, Error> {
    let ca = CaClient::new(settings.clone())?;
    let (creds, how) = ca.bootstrap().await?;
    let identity = IdentityManager::start(&ca.identity_source()).await?;
    let (ca_tx, ca_rx) = watch::channel(CaStatus {
        not_after: Some(creds.not_after()),
        since: Some(time::OffsetDateTime::now_utc()),
        source: how.to_string(),
        last_error: None,
    });
    let renewal = tokio::spawn(ca.renew_forever(creds, ca_tx));
    let instance_ip = match settings.instance_ip {
        Some(ip) => ip,
        None => instance_ip_towards(&settings).await?,
    };
    let client = AdsClient::new(settings, instance_ip, Some(identity.handle()), metrics)?;
    let xds = client.status();
    let stream = tokio::spawn(client.run(handler));
    Ok(ControlPlane {
        identity,
        xds,
        ca: ca_rx,
        instance_ip,
        tasks: vec![renewal, stream],
    })
}

/// The local address the kernel routes towards istiod's dialled address.
async fn instance_ip_towards(settings: &ControlPlaneSettings) -> Result<IpAddr, Error> {
    let dial = settings.xds_target()?.dial;
    let peer = tokio::net::lookup_host(dial.as_str())
        .await
        .map_err(|e| Error::io(&dial, e))?
        .next()
        .ok_or_else(|| Error::Connect {
            address: dial.clone(),
            reason: "the name has no address".into(),
        })?;
    node::local_address_towards(peer)
}
