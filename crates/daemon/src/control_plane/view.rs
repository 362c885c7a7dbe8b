//! What operators see of the control plane: `/config_dump`'s `controlPlane` and the status
//! view `control-plane`.

use std::sync::Arc;
use std::time::SystemTime;

use meshd_workloadapi::{MeshState, ResourceKind};
use meshd_xds::ads::{Reply, StreamState, XdsStatus};
use meshd_xds::ca::CaStatus;
use serde_json::{Value, json};
use tokio::sync::watch;

/// The receivers the view is read from, at each request.
#[derive(Clone)]
pub(crate) struct ControlPlaneView {
    pub(crate) xds: watch::Receiver<XdsStatus>,
    pub(crate) ca: Option<watch::Receiver<CaStatus>>,
    pub(crate) mesh: watch::Receiver<Arc<MeshState>>,
    pub(crate) persisted: Option<SystemTime>,
}

fn unix(at: SystemTime) -> Value {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(Value::Null, |d| json!(d.as_secs()))
}

fn reply(reply: &Option<Reply>) -> Value {
    match reply {
        None => Value::Null,
        Some(r) => json!({
            "ack": r.ack,
            "nonce": r.nonce,
            "systemVersion": r.system_version,
            "at": unix(r.at),
            "error": r.error,
        }),
    }
}

impl ControlPlaneView {
    /// The view as JSON: the stream (address, state, last ACK/NACK per type), the resources
    /// held per type and how many were refused, the certificate's source and expiry.
    pub(crate) fn to_json(&self) -> Value {
        let xds = self.xds.borrow().clone();
        let mesh = self.mesh.borrow().clone();
        let state = match &xds.state {
            StreamState::Connecting => json!({"state": "connecting"}),
            StreamState::Connected => json!({"state": "connected"}),
            StreamState::BackingOff { delay } => {
                json!({"state": "backing off", "retryInMs": delay.as_millis()})
            }
        };
        let types: serde_json::Map<String, Value> = xds
            .types
            .iter()
            .map(|(url, t)| {
                let held = ResourceKind::from_type_url(url).map_or(0, |k| mesh.len(k));
                (
                    url.clone(),
                    json!({
                        "last": reply(&t.last),
                        "lastNack": reply(&t.last_nack),
                        "acks": t.acks,
                        "nacks": t.nacks,
                        "resources": held,
                    }),
                )
            })
            .collect();
        let refused: serde_json::Map<String, Value> = mesh
            .refused()
            .iter()
            .map(|(reason, n)| (reason.as_str().to_string(), json!(n)))
            .collect();
        let certificate = self.ca.as_ref().map(|ca| {
            let ca = ca.borrow().clone();
            json!({
                "source": ca.source,
                "notAfter": ca.not_after.map(|t| t.to_string()),
                "since": ca.since.map(|t| t.to_string()),
                "lastError": ca.last_error,
            })
        });
        json!({
            "address": xds.address,
            "dial": xds.dial,
            "serverName": xds.server_name,
            "stream": state,
            "since": unix(xds.since),
            "lastError": xds.last_error,
            "ready": xds.ready,
            "connections": xds.connections,
            "types": types,
            "workloads": mesh.workloads().count(),
            "services": mesh.services().count(),
            "policies": mesh.policies().count(),
            "refused": refused,
            "startedOnPersistedState": self.persisted.map(unix),
            "certificate": certificate,
        })
    }
}
