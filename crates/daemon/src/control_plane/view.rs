//! What operators see of the control plane: the status view `control-plane` (meshd-view's
//! `ControlPlane`), also `/config_dump`'s `controlPlane`.

use std::sync::Arc;
use std::time::SystemTime;

use meshd_identity::SpiffeId;
use meshd_proxy::{Origin, ProxyState};
use meshd_status::view::{ControlPlane, IstioCertificate, SourceCounts, XdsReply, XdsType};
use meshd_workloadapi::{MeshState, ResourceKind};
use meshd_xds::ads::{Reply, StreamState, XdsStatus};
use meshd_xds::ca::CaStatus;
use tokio::sync::watch;

/// The receivers the view is read from, at each request.
#[derive(Clone)]
pub(crate) struct ControlPlaneView {
    pub(crate) xds: watch::Receiver<XdsStatus>,
    pub(crate) ca: Option<watch::Receiver<CaStatus>>,
    pub(crate) workload_cas: Vec<(SpiffeId, watch::Receiver<CaStatus>)>,
    pub(crate) mesh: watch::Receiver<Arc<MeshState>>,
    pub(crate) persisted: Option<SystemTime>,
}

fn reply(reply: &Option<Reply>) -> Option<XdsReply> {
    reply.as_ref().map(|r| XdsReply {
        ack: r.ack,
        nonce: r.nonce.clone(),
        at: meshd_status::view::rfc3339(r.at),
        error: r.error.clone(),
    })
}

/// Resources in force per source: the directory's and istiod's, as the state holds them.
fn sources(state: &ProxyState, mesh: &MeshState) -> Vec<SourceCounts> {
    let registry = &state.registry;
    let count = |origin: Origin| SourceCounts {
        source: match origin {
            Origin::File => "files",
            Origin::Istiod => "istiod",
        }
        .to_string(),
        workloads: registry
            .workloads()
            .iter()
            .filter(|w| w.origin() == origin)
            .count(),
        services: registry
            .services()
            .iter()
            .filter(|s| s.origin == origin)
            .count(),
        policies: match origin {
            Origin::File => state.snapshot.policies().count(),
            Origin::Istiod => mesh.policies().count(),
        },
    };
    vec![count(Origin::File), count(Origin::Istiod)]
}

impl ControlPlaneView {
    /// The view, with the state in force for the per-source counts.
    pub(crate) fn view(&self, state: &ProxyState) -> ControlPlane {
        let xds = self.xds.borrow().clone();
        let mesh = self.mesh.borrow().clone();
        let stream = match &xds.state {
            StreamState::Connecting => "connecting",
            StreamState::Connected => "connected",
            StreamState::BackingOff { .. } => "backing off",
        };
        let types = xds
            .types
            .iter()
            .map(|(url, t)| XdsType {
                type_url: url.clone(),
                resources: ResourceKind::from_type_url(url).map_or(0, |k| mesh.len(k)),
                acks: t.acks,
                nacks: t.nacks,
                last: reply(&t.last),
                last_nack: reply(&t.last_nack),
            })
            .collect();
        let own = self.ca.as_ref().map(certificate);
        let workload_certificates = (self.workload_cas.iter())
            .map(|(id, ca)| (id.to_string(), certificate(ca)))
            .collect();
        ControlPlane {
            configured: true,
            address: Some(xds.address),
            dial: Some(xds.dial),
            server_name: Some(xds.server_name),
            stream: Some(stream.to_string()),
            since: Some(meshd_status::view::rfc3339(xds.since)),
            last_error: xds.last_error,
            ready: xds.ready,
            connections: xds.connections,
            types,
            sources: sources(state, &mesh),
            refused: mesh
                .refused()
                .iter()
                .map(|(reason, n)| (reason.as_str().to_string(), *n))
                .collect(),
            conflicts: state
                .registry
                .conflicts()
                .iter()
                .map(ToString::to_string)
                .collect(),
            started_on_persisted_state: self.persisted.map(meshd_status::view::rfc3339),
            certificate: own,
            workload_certificates,
        }
    }
}

fn certificate(ca: &watch::Receiver<CaStatus>) -> IstioCertificate {
    let ca = ca.borrow().clone();
    IstioCertificate {
        source: ca.source,
        not_after: ca.not_after.map(meshd_status::view::rfc3339),
        last_error: ca.last_error,
    }
}
