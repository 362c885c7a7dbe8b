//! The Delta ADS client: one stream to istiod, both ambient types, ACK/NACK per response.
//!
//! Per connection: one initial request per type (node, wildcard subscription,
//! `initial_resource_versions` = what the [`Handler`] holds, so istiod sends only changes and
//! the deletions made while meshd was away); then per response: the resources go to the
//! handler, and an ACK (`response_nonce`) or a NACK (+ `error_detail` naming each rejected
//! resource) goes back. The handler keeps the last good version of a rejected resource and
//! applies the rest. Readiness comes with the first ACK of both types. On any end of the
//! stream, reconnect after a jittered exponential backoff (10 ms doubling to 15 s, ztunnel's),
//! reset once a stream has delivered a response.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::channel::mpsc;
use meshd_identity::IdentityHandle;
use prost::Message;
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::metrics::{Termination, XdsMetrics};
use crate::proto::envoy::config::core::v3::Node;
use crate::proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use crate::proto::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::proto::google::rpc::Status as RpcStatus;
use crate::settings::ControlPlaneSettings;
use crate::{Error, node, transport};

mod status;
pub use status::{Reply, StreamState, TypeStatus, XdsStatus};

/// Workloads and services (`istio.workload.Address`, a oneof of Workload and Service).
pub const ADDRESS_TYPE: &str = "type.googleapis.com/istio.workload.Address";
/// Authorization policies as istiod converts them (`istio.security.Authorization`).
pub const AUTHORIZATION_TYPE: &str = "type.googleapis.com/istio.security.Authorization";
/// The types meshd subscribes to, in istiod's push order.
pub const TYPES: [&str; 2] = [ADDRESS_TYPE, AUTHORIZATION_TYPE];
/// Largest response decoded: 200 MiB, ztunnel's limit (a whole mesh arrives in one push).
pub const MAX_DECODE: usize = 200 << 20;
/// Reconnect backoff: 10 ms doubling to 15 s, ztunnel's.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// One resource of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// istiod's name (workload uid, `ns/hostname`, `ns/policy`).
    pub name: String,
    /// istiod's per-resource version (may be empty).
    pub version: String,
    /// The serialized message (`Any.value`).
    pub body: bytes::Bytes,
}

/// A resource the handler (or the client) refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The resource's name.
    pub name: String,
    /// Why.
    pub message: String,
}

/// Where responses go: the daemon's state.
pub trait Handler: Send + 'static {
    /// One response of `type_url`: `updated` resources and `removed` names. Returns the
    /// rejected resources (their previous version must be kept); the client NACKs if any.
    fn apply(
        &mut self,
        type_url: &str,
        updated: Vec<Resource>,
        removed: Vec<String>,
    ) -> Vec<Rejection>;
    /// name → version held now, sent as `initial_resource_versions` when (re)connecting.
    fn held(&self, type_url: &str) -> HashMap<String, String>;
    /// How many resources of `type_url` are held (for status).
    fn count(&self, type_url: &str) -> usize {
        self.held(type_url).len()
    }
}

/// The client; [`AdsClient::run`] owns it and the handler for the life of the process.
pub struct AdsClient {
    settings: ControlPlaneSettings,
    node: Node,
    identity: Option<IdentityHandle>,
    status: watch::Sender<XdsStatus>,
    metrics: Arc<XdsMetrics>,
}

impl AdsClient {
    /// A client presenting `instance_ip` as the VM's address and, when `identity` is given, its
    /// current certificate as TLS client certificate (read at each connect, so a rotation is
    /// used by the next stream).
    pub fn new(
        settings: ControlPlaneSettings,
        instance_ip: IpAddr,
        identity: Option<IdentityHandle>,
        metrics: Arc<XdsMetrics>,
    ) -> Result<Self, Error> {
        settings.validate()?;
        let target = settings.xds_target()?;
        let node = node::node(&settings, instance_ip);
        let (status, _) = watch::channel(XdsStatus {
            address: settings.address.clone(),
            dial: target.dial,
            server_name: target.server_name,
            state: StreamState::Connecting,
            since: SystemTime::now(),
            last_error: None,
            ready: false,
            connections: 0,
            types: TYPES
                .iter()
                .map(|t| (t.to_string(), TypeStatus::default()))
                .collect(),
        });
        Ok(AdsClient {
            settings,
            node,
            identity,
            status,
            metrics,
        })
    }

    /// The node sent to istiod.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// A receiver of the status (state, per type last ACK/NACK, counts, readiness).
    pub fn status(&self) -> watch::Receiver<XdsStatus> {
        self.status.subscribe()
    }

    /// Runs the stream forever, reconnecting; cancel by dropping (aborting) the task.
    pub async fn run<H: Handler>(self, mut handler: H) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let mut progressed = false;
            let (reason, error) = match self.stream(&mut handler, &mut progressed).await {
                Ok(()) => (
                    Termination::Complete,
                    "istiod closed the stream".to_string(),
                ),
                Err(e) => (classify(&e), e.to_string()),
            };
            self.metrics.terminated(reason);
            if progressed || reason == Termination::Reconnect {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                reason = reason.as_str(),
                ?delay,
                "xDS stream to istiod ended: {error}"
            );
            self.status.send_modify(|s| {
                s.state = StreamState::BackingOff { delay };
                s.since = SystemTime::now();
                s.last_error = Some(error);
            });
            tokio::time::sleep(delay).await;
        }
    }

    /// One stream, until it ends. `progressed` is set once a response arrived.
    async fn stream<H: Handler>(
        &self,
        handler: &mut H,
        progressed: &mut bool,
    ) -> Result<(), Error> {
        self.status.send_modify(|s| {
            s.state = StreamState::Connecting;
            s.since = SystemTime::now();
        });
        let creds = self
            .identity
            .as_ref()
            .map(|h| h.current().credentials().clone());
        let md = self.metadata(creds.is_some())?;
        let target = self.settings.xds_target()?;
        let channel = transport::channel(&target, &self.settings.root_cert, creds.as_ref()).await?;
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_DECODE)
            .max_encoding_message_size(MAX_DECODE);

        let (tx, rx) = mpsc::unbounded();
        for type_url in TYPES {
            let initial = DeltaDiscoveryRequest {
                node: Some(self.node.clone()),
                type_url: type_url.to_string(),
                initial_resource_versions: handler.held(type_url),
                ..Default::default()
            };
            // The receiver is alive: it is moved into the request below.
            let _ = tx.unbounded_send(initial);
        }
        let mut request = tonic::Request::new(rx);
        *request.metadata_mut() = md;
        let mut responses = client
            .delta_aggregated_resources(request)
            .await
            .map_err(|s| Error::grpc("DeltaAggregatedResources", s))?
            .into_inner();
        self.status.send_modify(|s| {
            s.state = StreamState::Connected;
            s.since = SystemTime::now();
            s.connections += 1;
        });
        let mut acked: HashSet<String> = HashSet::new();
        loop {
            let resp = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(s) => return Err(Error::grpc("DeltaAggregatedResources", s)),
            };
            *progressed = true;
            let reply = self.handle(handler, resp, &mut acked);
            tx.unbounded_send(reply).map_err(|_| Error::Connect {
                address: target.dial.clone(),
                reason: "request stream closed".into(),
            })?;
        }
    }

    /// `clusterid` always; the bearer token if a token file is configured. With a client
    /// certificate the token is optional: an unreadable or expired one is skipped, since
    /// istiod authenticates the certificate first.
    fn metadata(&self, have_cert: bool) -> Result<tonic::metadata::MetadataMap, Error> {
        if self.settings.token_file.is_none() {
            if !have_cert {
                return Err(Error::NoCredential(self.settings.address.clone()));
            }
            return transport::call_metadata(&self.settings, false);
        }
        match transport::call_metadata(&self.settings, true) {
            Err(e) if have_cert => {
                tracing::debug!("xDS: no token, authenticating by certificate only: {e}");
                transport::call_metadata(&self.settings, false)
            }
            other => other,
        }
    }

    /// Applies one response and builds its ACK or NACK.
    fn handle<H: Handler>(
        &self,
        handler: &mut H,
        resp: DeltaDiscoveryResponse,
        acked: &mut HashSet<String>,
    ) -> DeltaDiscoveryRequest {
        self.metrics.message(&resp.type_url, resp.encoded_len());
        let type_url = resp.type_url.clone();
        let rejections = if TYPES.contains(&type_url.as_str()) {
            let (updated, mut rejected) = split(&type_url, resp.resources);
            rejected.extend(handler.apply(&type_url, updated, resp.removed_resources));
            rejected
        } else {
            vec![Rejection {
                name: "*".into(),
                message: format!("type {type_url:?} was not subscribed to"),
            }]
        };
        let error = (!rejections.is_empty()).then(|| {
            rejections
                .iter()
                .map(|r| format!("{}: {}", r.name, r.message))
                .collect::<Vec<_>>()
                .join("; ")
        });
        if let Some(e) = &error {
            tracing::warn!(type_url, nonce = resp.nonce, "NACK: {e}");
        } else {
            acked.insert(type_url.clone());
        }
        let reply = Reply {
            ack: error.is_none(),
            nonce: resp.nonce.clone(),
            system_version: resp.system_version_info,
            at: SystemTime::now(),
            error: error.clone(),
        };
        let count = TYPES
            .contains(&type_url.as_str())
            .then(|| handler.count(&type_url));
        let ready = TYPES.iter().all(|t| acked.contains(*t));
        self.status.send_modify(|s| {
            s.ready |= ready;
            let t = s.types.entry(type_url.clone()).or_default();
            if let Some(c) = count {
                t.resources = c;
            }
            if reply.ack {
                t.acks += 1;
            } else {
                t.nacks += 1;
                t.last_nack = Some(reply.clone());
            }
            t.last = Some(reply);
        });
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: resp.nonce,
            error_detail: error.map(|message| RpcStatus {
                code: INVALID_ARGUMENT,
                message,
                details: vec![],
            }),
            ..Default::default()
        }
    }
}

/// The resources of a response as [`Resource`]s; one without a body or of another type is
/// rejected here (the handler never sees it, so it keeps the last good version).
fn split(
    type_url: &str,
    resources: Vec<crate::proto::envoy::service::discovery::v3::Resource>,
) -> (Vec<Resource>, Vec<Rejection>) {
    let mut ok = Vec::with_capacity(resources.len());
    let mut rejected = Vec::new();
    for r in resources {
        match r.resource {
            None => rejected.push(Rejection {
                name: r.name,
                message: "no resource body".into(),
            }),
            Some(any) if any.type_url != type_url => rejected.push(Rejection {
                name: r.name,
                message: format!("body is {:?}, not {type_url:?}", any.type_url),
            }),
            Some(any) => ok.push(Resource {
                name: r.name,
                version: r.version,
                body: any.value.into(),
            }),
        }
    }
    (ok, rejected)
}

/// ztunnel's termination reasons: a GOAWAY or "transport is closing" (istiod's max connection
/// age) is a requested reconnect; other gRPC statuses from istiod are errors; failures to
/// connect or to authenticate locally are connection errors.
fn classify(e: &Error) -> Termination {
    match e {
        Error::Grpc { status, .. } => {
            let msg = status.message().to_ascii_lowercase();
            let goaway = msg.contains("goaway") || msg.contains("transport is closing");
            match status.code() {
                tonic::Code::Unavailable if goaway => Termination::Reconnect,
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    if goaway {
                        Termination::Reconnect
                    } else {
                        Termination::ConnectionError
                    }
                }
                _ => Termination::Error,
            }
        }
        _ => Termination::ConnectionError,
    }
}

#[cfg(test)]
mod tests;
