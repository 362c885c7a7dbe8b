//! meshd's Prometheus metrics, served at `:15020/metrics` as ztunnel serves its own.
//!
//! [`Metrics`] owns a prometheus-client registry and renders it as OpenMetrics text
//! ([`Metrics::encode`], [`CONTENT_TYPE`]). It holds:
//!
//! - ztunnel's traffic series with ztunnel's names and label sets (`istio_tcp_connections_*`,
//!   `istio_tcp_*_bytes_total`, `istio_tcp_sockets_open`) and `istio_build`. They come from the
//!   proxy's connection records: [`Metrics`] is a [`RecordSink`]. A connection's label set is
//!   resolved once, when it is established, and its byte meter is then one atomic add per read.
//!   The one label a peer chooses, `source_principal`, is bounded: denied peers share one value
//!   and at most [`MAX_PEER_PRINCIPALS`] principals have series of their own (least recently
//!   used idle ones are evicted; see `traffic/table.rs`);
//! - meshd's own series (`meshd_*`): authorization decisions and refusals (also from the
//!   records, so nothing is counted twice), configuration reloads, the certificate, the HBONE
//!   pool, HBONE streams, and what the memory policy (meshd-memory) did (`heap.rs`);
//! - `process_*` (from `/proc/self`) and `tokio_*` (the runtime's stable metrics), read at
//!   scrape time.
//!
//! It does not serve HTTP (`meshd-admin` does) and reads no configuration: the daemon calls
//! the plain methods ([`Metrics::config_reloaded`], [`Metrics::certificate`],
//! [`Metrics::hbone_pool`]) and hands the sink to the proxy. `DASHBOARD.md` maps Istio's
//! ztunnel dashboard onto these series.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod heap;
mod own;
mod process;
mod runtime;
mod traffic;
mod value;

use std::sync::Arc;

use meshd_record::{ByteMeter, ConnectionRecord, RecordRef, RecordSink};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use own::HbonePool;
pub use traffic::{DENIED_PRINCIPAL, MAX_PEER_PRINCIPALS, OVERFLOW_PRINCIPAL};

use value::Value;

/// The `Content-Type` of [`Metrics::encode`]'s text, as ztunnel serves its metrics.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The cluster id in `source_cluster` / `destination_cluster` unless configured: ztunnel's
/// default (`CLUSTER_ID`, `src/config.rs`), which is also istiod's.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// `istio_build{component}`: the value Istio's ztunnel dashboard selects, so its "Ztunnel
/// Versions" panel counts meshd instances too (`tag` tells them apart: meshd's version).
const BUILD_COMPONENT: &str = "ztunnel";

/// Errors of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Rendering the exposition text failed (a collector failed to write).
    #[error("encoding the metrics failed")]
    Encode(#[from] std::fmt::Error),
}

/// How the metrics label what the records do not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The cluster id of workloads meshd knows (`source_cluster`, `destination_cluster`).
    pub cluster_id: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    component: Value,
    tag: Value,
}

/// meshd's metrics: cheap to clone (one `Arc`), shared by the proxy (as a sink) and the daemon.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    registry: Registry,
    traffic: traffic::Traffic,
    own: own::Own,
}

impl Metrics {
    /// Metrics with the default [`Options`]; `runtime` is the runtime whose `tokio_*` metrics
    /// are reported (the one connections run on).
    pub fn new(runtime: tokio::runtime::Handle) -> Metrics {
        Metrics::with_options(runtime, Options::default())
    }

    /// Metrics with `options`.
    pub fn with_options(runtime: tokio::runtime::Handle, options: Options) -> Metrics {
        Metrics::with_extra(runtime, options, |_| {})
    }

    /// Metrics with `options` and series another crate owns (meshd-xds's `istio_xds_*`):
    /// `extra` registers them in the root registry once, before any scrape.
    pub fn with_extra(
        runtime: tokio::runtime::Handle,
        options: Options,
        extra: impl FnOnce(&mut Registry),
    ) -> Metrics {
        let mut registry = Registry::default();
        extra(&mut registry);
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        registry
            .sub_registry_with_prefix("tokio")
            .register_collector(Box::new(runtime::RuntimeCollector::new(&runtime)));
        registry
            .sub_registry_with_prefix("meshd")
            .register_collector(Box::new(heap::HeapCollector));

        let istio = registry.sub_registry_with_prefix("istio");
        let build = Family::<BuildLabels, Gauge>::default();
        istio.register("build", "Istio component build info", build.clone());
        build
            .get_or_create(&BuildLabels {
                component: Value::fixed(BUILD_COMPONENT),
                tag: Value::fixed(env!("CARGO_PKG_VERSION")),
            })
            .set(1);
        let traffic = traffic::Traffic::register(istio, options.cluster_id);

        let own = own::Own::register(registry.sub_registry_with_prefix("meshd"));
        Metrics(Arc::new(Inner {
            registry,
            traffic,
            own,
        }))
    }

    /// The exposition text (OpenMetrics, ending in `# EOF`); serve it as [`CONTENT_TYPE`].
    pub fn encode(&self) -> Result<String, Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.0.registry)?;
        Ok(text)
    }

    /// A configuration load finished: counts it by result, and on success sets
    /// `meshd_config_generation` to the generation now in force.
    pub fn config_reloaded(&self, success: bool, generation: u64) {
        self.0.own.config_reloaded(success, generation);
    }

    /// The certificate in force and the identity manager's rotation counts since start
    /// (successful, failed): sets the expiry gauge for `identity` (replacing a previous
    /// identity's) and brings `meshd_certificate_rotations_total` up to the counts.
    pub fn certificate(
        &self,
        identity: &str,
        not_after_unix: i64,
        rotations: u64,
        failed_rotations: u64,
    ) {
        self.0
            .own
            .certificate(identity, not_after_unix, rotations, failed_rotations);
    }

    /// A local workload's own certificate (one identity per local workload): its series of
    /// the expiry gauge, beside meshd's own, and `meshd_workload_certificate_rotations_total`
    /// brought up to its manager's counts. Its identity is pinned, so the series stay.
    pub fn workload_certificate(
        &self,
        identity: &str,
        not_after_unix: i64,
        rotations: u64,
        failed_rotations: u64,
    ) {
        self.0
            .own
            .workload_certificate(identity, not_after_unix, rotations, failed_rotations);
    }

    /// Where the HBONE pool's figures come from; `source` is called at each scrape.
    pub fn hbone_pool(&self, source: impl Fn() -> HbonePool + Send + Sync + 'static) {
        self.0.own.hbone_pool(Box::new(source));
    }
}

impl RecordSink for Metrics {
    fn opened(&self, record: &ConnectionRecord, _live: &RecordRef) {
        self.0.traffic.opened(record);
    }

    fn established(&self, record: &ConnectionRecord) -> Option<Arc<dyn ByteMeter>> {
        self.0.own.stream(record);
        Some(self.0.traffic.established(record))
    }

    fn closed(&self, record: &ConnectionRecord) {
        if self.0.traffic.closed(record) {
            // Refused after its destination was resolved: it opened (and closed) just now.
            self.0.own.stream(record);
        }
        self.0.own.closed(record);
    }
}
