//! The two connection stacks, each built in one function in the order a connection meets the
//! layers. Plugins come after authorization, so none can bypass a deny.
//!
//! ```text
//! inbound:  record → authorize (local workload? policy?) → plugins… → connect (dial, answer, copy)
//! outbound: record → resolve (service/workload → HBONE or direct) → plugins… → connect
//! ```
//!
//! Authorization and resolution choose the upstream (`Conn` becomes `Conn<Upstream>`); the
//! plugins and the connect stage take only a `Conn<Upstream>`, so a stack without the
//! choosing layer is a compile error, not refused traffic.

use std::sync::Arc;

use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceBuilder};

use crate::layers::authorize::AuthorizeLayer;
use crate::layers::connect::{Connect, Connector};
use crate::layers::record::RecordLayer;
use crate::layers::resolve::ResolveLayer;
use crate::layers::{ChosenService, ConnService};
use crate::own_ports::OwnPorts;
use crate::plugins::PluginLayer;

/// Stacks a list of plugin layers, first listed outermost.
#[derive(Clone)]
pub struct Plugins(Vec<PluginLayer>);

impl Plugins {
    /// The plugins, in configuration order.
    pub fn new(layers: Vec<PluginLayer>) -> Self {
        Plugins(layers)
    }
}

impl Layer<ChosenService> for Plugins {
    type Service = ChosenService;

    fn layer(&self, inner: ChosenService) -> ChosenService {
        self.0
            .iter()
            .rev()
            .fold(inner, |service, plugin| plugin.layer(service))
    }
}

/// The inbound stack: connections to local workloads (HBONE and captured plaintext).
pub fn inbound(
    plugins: Plugins,
    own_ports: OwnPorts,
    connector: Arc<dyn Connector>,
) -> ConnService {
    let terminal = ServiceBuilder::new()
        .layer(plugins)
        .service(BoxCloneSyncService::new(Connect::new(connector)));
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RecordLayer)
            .layer(AuthorizeLayer::new(own_ports))
            .service(terminal),
    )
}

/// The outbound stack: connections from local applications (capture, SOCKS5, explicit
/// listeners).
pub fn outbound(
    plugins: Plugins,
    resolve: ResolveLayer,
    connector: Arc<dyn Connector>,
) -> ConnService {
    let terminal = ServiceBuilder::new()
        .layer(plugins)
        .service(BoxCloneSyncService::new(Connect::new(connector)));
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(RecordLayer)
            .layer(resolve)
            .service(terminal),
    )
}
