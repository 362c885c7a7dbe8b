//! ztunnel's `istio_tcp_*` series, fed by the connection records.
//!
//! Names, label sets and semantics follow ztunnel's `src/proxy/metrics.rs` (istio/ztunnel
//! 62d82653):
//!
//! - a connection enters the traffic series once ztunnel would have built its
//!   `ConnectionResult`: its destination is resolved. meshd's records say so by an upstream
//!   address or a destination workload. Refusals before that (a handshake, a destination that
//!   is not local, one of meshd's own ports) are ztunnel's `log_early_deny`: no `istio_tcp_*`
//!   series, only `meshd_connection_refusals_total` and the socket gauge;
//! - `opened` and both byte counters carry `response_flags="-"`; `closed` (and `failed`, for
//!   any other flag) carry the flag the connection ended with;
//! - `received` counts bytes from the downstream side toward the upstream, `sent` the other
//!   way, for both reporters: ztunnel's copy loop calls `increment_recv` downstream→upstream,
//!   and the "flip" of istio/istio#32399 is applied to its access log, not to the metric;
//! - `istio_tcp_sockets_open` counts connections (records) in meshd by reporter, from accept
//!   to close.

mod table;

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, PoisonError, RwLock};

use meshd_record::{ByteMeter, ConnectionRecord, Direction, Identity, Outcome, WorkloadMeta};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::value::Value;

pub use table::{DENIED_PRINCIPAL, MAX_PEER_PRINCIPALS, OVERFLOW_PRINCIPAL};

/// ztunnel's `response_flags` of a connection that ended well.
const NO_FLAG: &str = "-";

/// The canonical revision of a workload without a version label, as istiod sets it.
const DEFAULT_REVISION: &str = "latest";

/// Istio's `reporter` label: the destination's proxy reports inbound, the source's outbound.
pub(crate) fn reporter(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "destination",
        Direction::Outbound => "source",
    }
}

/// ztunnel's `CommonTrafficLabels`, field for field and in its order (the locality labels,
/// which ztunnel adds whenever it knows a workload of the connection, always: meshd knows no
/// locality, so they are `unknown`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TrafficLabels {
    reporter: Value,
    source_workload: Value,
    source_canonical_service: Value,
    source_canonical_revision: Value,
    source_workload_namespace: Value,
    source_principal: Value,
    source_app: Value,
    source_version: Value,
    source_cluster: Value,
    destination_service: Value,
    destination_service_namespace: Value,
    destination_service_name: Value,
    destination_workload: Value,
    destination_canonical_service: Value,
    destination_canonical_revision: Value,
    destination_workload_namespace: Value,
    destination_principal: Value,
    destination_app: Value,
    destination_version: Value,
    destination_cluster: Value,
    request_protocol: Value,
    response_flags: Value,
    connection_security_policy: Value,
    source_region: Value,
    source_zone: Value,
    destination_region: Value,
    destination_zone: Value,
}

/// `istio_tcp_sockets_open`'s only label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SocketLabels {
    reporter: Value,
}

/// A workload's labels as ztunnel's `with_source` / `with_destination` derive them from the
/// workload istiod sends: the canonical service is the `app` label or else the workload name,
/// the canonical revision the `version` label or else `latest`, and ztunnel reports `*_app` and
/// `*_version` as those canonical values.
struct WorkloadLabels {
    workload: Value,
    namespace: Value,
    canonical_service: Value,
    canonical_revision: Value,
    cluster: Value,
}

impl WorkloadLabels {
    fn of(meta: Option<MetaRef<'_>>, cluster_id: &str) -> WorkloadLabels {
        match meta {
            None => WorkloadLabels {
                workload: Value::unknown(),
                namespace: Value::unknown(),
                canonical_service: Value::unknown(),
                canonical_revision: Value::unknown(),
                cluster: Value::unknown(),
            },
            Some(m) => WorkloadLabels {
                workload: Value::or_unknown(Some(m.name)),
                namespace: Value::or_unknown(Some(m.namespace)),
                canonical_service: Value::or_unknown(
                    m.app.filter(|a| !a.is_empty()).or(Some(m.name)),
                ),
                canonical_revision: Value::or_unknown(
                    m.version
                        .filter(|v| !v.is_empty())
                        .or(Some(DEFAULT_REVISION)),
                ),
                cluster: Value::or_unknown(Some(cluster_id)),
            },
        }
    }
}

/// A workload's metadata, borrowed from a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct MetaRef<'a> {
    name: &'a str,
    namespace: &'a str,
    app: Option<&'a str>,
    version: Option<&'a str>,
}

impl<'a> MetaRef<'a> {
    fn of(meta: &'a WorkloadMeta) -> MetaRef<'a> {
        MetaRef {
            name: &meta.name,
            namespace: &meta.namespace,
            app: meta.app.as_deref(),
            version: meta.version.as_deref(),
        }
    }

    fn to_owned(self) -> WorkloadMeta {
        WorkloadMeta {
            name: self.name.to_owned(),
            namespace: self.namespace.to_owned(),
            app: self.app.map(str::to_owned),
            version: self.version.map(str::to_owned),
        }
    }
}

/// The record fields a connection's traffic labels derive from (all but the response flag),
/// borrowed: a lookup hashes and compares these without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct KeyRef<'a> {
    direction: Direction,
    mtls: bool,
    source_principal: Option<&'a str>,
    source: Option<MetaRef<'a>>,
    destination: Option<MetaRef<'a>>,
    destination_principal: Option<&'a str>,
    destination_service: Option<&'a str>,
    destination_service_host: Option<&'a str>,
}

impl<'a> KeyRef<'a> {
    fn of(record: &'a ConnectionRecord) -> KeyRef<'a> {
        KeyRef {
            direction: record.facts.direction,
            mtls: record.mtls,
            // ztunnel takes source_principal only from the mTLS handshake (inbound: the peer's
            // certificate; outbound over HBONE: its own identity), never from a lookup. A
            // denied peer gets no series of its own (see the table module).
            source_principal: record
                .facts
                .source_identity
                .as_deref()
                .map(Identity::as_str)
                .filter(|_| record.mtls)
                .map(|p| if denied(record) { DENIED_PRINCIPAL } else { p }),
            source: record.facts.source_workload.as_deref().map(MetaRef::of),
            destination: record.destination_workload_meta.as_deref().map(MetaRef::of),
            destination_principal: record.destination_identity.as_deref().map(Identity::as_str),
            destination_service: record.destination_service.as_deref(),
            destination_service_host: record.destination_service_host.as_deref(),
        }
    }

    fn to_owned(self) -> Key {
        Key {
            direction: self.direction,
            mtls: self.mtls,
            source_principal: self.source_principal.map(str::to_owned),
            source: self.source.map(MetaRef::to_owned),
            destination: self.destination.map(MetaRef::to_owned),
            destination_principal: self.destination_principal.map(str::to_owned),
            destination_service: self.destination_service.map(str::to_owned),
            destination_service_host: self.destination_service_host.map(str::to_owned),
        }
    }

    /// The label set, with `response_flags="-"`.
    fn labels(&self, cluster_id: &str) -> TrafficLabels {
        let source = WorkloadLabels::of(self.source, cluster_id);
        let destination = WorkloadLabels::of(self.destination, cluster_id);
        // ztunnel's destination_service is the service's host name (the ServiceEntry's first
        // host); _name and _namespace come from the ServiceEntry's `namespace/name`.
        let (service_namespace, service_name) = match self.destination_service {
            Some(key) => match key.split_once('/') {
                Some((namespace, name)) => (Some(namespace), Some(name)),
                None => (None, Some(key)),
            },
            None => (None, None),
        };
        TrafficLabels {
            reporter: Value::fixed(reporter(self.direction)),
            source_workload: source.workload,
            source_canonical_service: source.canonical_service.clone(),
            source_canonical_revision: source.canonical_revision.clone(),
            source_workload_namespace: source.namespace,
            source_principal: Value::or_unknown(self.source_principal),
            source_app: source.canonical_service,
            source_version: source.canonical_revision,
            source_cluster: source.cluster,
            destination_service: Value::or_unknown(self.destination_service_host),
            destination_service_namespace: Value::or_unknown(service_namespace),
            destination_service_name: Value::or_unknown(service_name),
            destination_workload: destination.workload,
            destination_canonical_service: destination.canonical_service.clone(),
            destination_canonical_revision: destination.canonical_revision.clone(),
            destination_workload_namespace: destination.namespace,
            destination_principal: Value::or_unknown(self.destination_principal),
            destination_app: destination.canonical_service,
            destination_version: destination.canonical_revision,
            destination_cluster: destination.cluster,
            request_protocol: Value::fixed("tcp"),
            response_flags: Value::fixed(NO_FLAG),
            connection_security_policy: Value::fixed(if self.mtls {
                "mutual_tls"
            } else {
                "unknown"
            }),
            source_region: Value::unknown(),
            source_zone: Value::unknown(),
            destination_region: Value::unknown(),
            destination_zone: Value::unknown(),
        }
    }
}

/// [`KeyRef`], owned, kept with its series.
#[derive(Debug)]
struct Key {
    direction: Direction,
    mtls: bool,
    source_principal: Option<String>,
    source: Option<WorkloadMeta>,
    destination: Option<WorkloadMeta>,
    destination_principal: Option<String>,
    destination_service: Option<String>,
    destination_service_host: Option<String>,
}

impl Key {
    fn view(&self) -> KeyRef<'_> {
        KeyRef {
            direction: self.direction,
            mtls: self.mtls,
            source_principal: self.source_principal.as_deref(),
            source: self.source.as_ref().map(MetaRef::of),
            destination: self.destination.as_ref().map(MetaRef::of),
            destination_principal: self.destination_principal.as_deref(),
            destination_service: self.destination_service.as_deref(),
            destination_service_host: self.destination_service_host.as_deref(),
        }
    }
}

/// The counters of one label set, resolved from the families once: the byte counters are what
/// a connection's [`ByteMeter`] adds to, one atomic add per read, and its close is counted
/// through the same series when the record ends, without a second lookup.
#[derive(Debug)]
pub(crate) struct Series {
    key: Key,
    labels: TrafficLabels,
    opened: Counter,
    received: Counter,
    sent: Counter,
    /// `closed` (and `failed`) per response flag, resolved on first use.
    closes: RwLock<Vec<Close>>,
    /// When it was last looked up, on the table's clock (its principal's recency).
    last_used: AtomicU64,
    /// The families a new response flag's counters are made in.
    closed_family: Family<TrafficLabels, Counter>,
    failed_family: Family<TrafficLabels, Counter>,
}

#[derive(Debug)]
struct Close {
    flag: &'static str,
    closed: Counter,
    failed: Option<Counter>,
}

impl ByteMeter for Series {
    fn downstream_bytes(&self, bytes: u64) {
        self.received.inc_by(bytes);
    }

    fn upstream_bytes(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }

    fn closed(&self, record: &ConnectionRecord) {
        self.close(record.outcome.response_flag());
    }
}

impl Series {
    /// Counts a close with `flag`, resolving that flag's counters on first use.
    fn close(&self, flag: &'static str) {
        {
            let closes = self.closes.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(close) = closes.iter().find(|c| c.flag == flag) {
                close.inc();
                return;
            }
        }
        let mut closes = self.closes.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(close) = closes.iter().find(|c| c.flag == flag) {
            close.inc();
            return;
        }
        let labels = TrafficLabels {
            response_flags: Value::fixed(flag),
            ..self.labels.clone()
        };
        let close = Close {
            flag,
            closed: self.closed_family.get_or_create_owned(&labels),
            // ztunnel counts every flag but `-` as a failure.
            failed: (flag != NO_FLAG).then(|| self.failed_family.get_or_create_owned(&labels)),
        };
        close.inc();
        closes.push(close);
    }
}

impl Series {
    /// The response flags it has counted closes with.
    fn flags(&self) -> Vec<&'static str> {
        let closes = self.closes.read().unwrap_or_else(PoisonError::into_inner);
        closes.iter().map(|c| c.flag).collect()
    }
}

impl Close {
    fn inc(&self) {
        self.closed.inc();
        if let Some(failed) = &self.failed {
            failed.inc();
        }
    }
}

/// The `istio_tcp_*` families and the series resolved from them.
#[derive(Debug)]
pub(crate) struct Traffic {
    cluster_id: String,
    opened: Family<TrafficLabels, Counter>,
    closed: Family<TrafficLabels, Counter>,
    failed: Family<TrafficLabels, Counter>,
    received: Family<TrafficLabels, Counter>,
    sent: Family<TrafficLabels, Counter>,
    sockets_inbound: Gauge,
    sockets_outbound: Gauge,
    hasher: foldhash::fast::RandomState,
    /// Series by the hash of their [`KeyRef`], peer principals bounded.
    series: RwLock<table::Table>,
    clock: table::Clock,
}

impl Traffic {
    /// Registers the families under `registry` (the `istio_` sub-registry).
    pub(crate) fn register(registry: &mut Registry, cluster_id: String) -> Traffic {
        // Names and help texts as ztunnel registers them; prometheus-client adds `_total`.
        let opened = Family::default();
        registry.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            opened.clone(),
        );
        let closed = Family::default();
        registry.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            closed.clone(),
        );
        let received = Family::default();
        registry.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            received.clone(),
        );
        let sent = Family::default();
        registry.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            sent.clone(),
        );
        let failed = Family::default();
        registry.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish (unstable)",
            failed.clone(),
        );
        let sockets = Family::<SocketLabels, Gauge>::default();
        registry.register(
            "tcp_sockets_open",
            "The current number of open TCP sockets (unstable)",
            sockets.clone(),
        );
        let socket_gauge = |direction| {
            sockets.get_or_create_owned(&SocketLabels {
                reporter: Value::fixed(reporter(direction)),
            })
        };
        let table = table::Table::new(opened.clone(), received.clone(), sent.clone());
        Traffic {
            cluster_id,
            sockets_inbound: socket_gauge(Direction::Inbound),
            sockets_outbound: socket_gauge(Direction::Outbound),
            opened,
            closed,
            failed,
            received,
            sent,
            hasher: foldhash::fast::RandomState::default(),
            series: RwLock::new(table),
            clock: table::Clock::default(),
        }
    }

    fn sockets(&self, direction: Direction) -> &Gauge {
        match direction {
            Direction::Inbound => &self.sockets_inbound,
            Direction::Outbound => &self.sockets_outbound,
        }
    }

    /// A connection was accepted.
    pub(crate) fn opened(&self, record: &ConnectionRecord) {
        self.sockets(record.facts.direction).inc();
    }

    /// A connection is established: it is opened, and its series counts its bytes.
    pub(crate) fn established(&self, record: &ConnectionRecord) -> Arc<Series> {
        let series = self.series(record);
        series.opened.inc();
        series
    }

    /// A connection ended. An established one is counted closed by its series' meter
    /// ([`ByteMeter::closed`]); one refused after its destination was resolved is opened and
    /// closed here, and true is returned.
    pub(crate) fn closed(&self, record: &ConnectionRecord) -> bool {
        self.sockets(record.facts.direction).dec();
        let opened_now = !record.established && resolved(record);
        if opened_now {
            let series = self.series(record);
            series.opened.inc();
            series.close(record.outcome.response_flag());
        }
        opened_now
    }

    /// The series of a record's label set: found by hash without allocating, made once per
    /// distinct label set the table admits.
    fn series(&self, record: &ConnectionRecord) -> Arc<Series> {
        let key = KeyRef::of(record);
        let hash = self.hasher.hash_one(key);
        {
            let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(found) = table.find(hash, key) {
                self.clock.touch(found);
                return found.clone();
            }
        }
        let mut table = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let key = table.admit(key);
        let hash = self.hasher.hash_one(key);
        if let Some(found) = table.find(hash, key) {
            self.clock.touch(found);
            return found.clone();
        }
        self.clock.tick();
        let labels = key.labels(&self.cluster_id);
        let series = Arc::new(Series {
            key: key.to_owned(),
            opened: self.opened.get_or_create_owned(&labels),
            received: self.received.get_or_create_owned(&labels),
            sent: self.sent.get_or_create_owned(&labels),
            labels,
            closes: RwLock::default(),
            last_used: AtomicU64::new(0),
            closed_family: self.closed.clone(),
            failed_family: self.failed.clone(),
        });
        self.clock.touch(&series);
        table.insert(hash, series.clone());
        series
    }
}

/// True when this meshd's authorization refused an inbound connection: its peer, who chose
/// the principal, gets no series of its own. Outbound, the principal is this meshd's own
/// identity, kept when the peer refuses the tunnel.
fn denied(record: &ConnectionRecord) -> bool {
    matches!(record.facts.direction, Direction::Inbound)
        && (matches!(record.outcome, Outcome::Denied)
            || record.verdict.as_ref().is_some_and(|v| !v.allowed))
}

/// True when the connection got as far as ztunnel's `ConnectionResult`: its destination was
/// resolved, and it was not refused before that.
fn resolved(record: &ConnectionRecord) -> bool {
    let early = matches!(
        record.outcome,
        Outcome::Handshake | Outcome::NotLocal | Outcome::OwnPort
    );
    !early && (record.upstream_addr.is_some() || record.destination_workload_meta.is_some())
}

/// Keeps `Hash` on [`KeyRef`] honest: the same fields hash the same through the owned copy.
#[cfg(test)]
mod tests {
    use super::*;
    use meshd_record::{Facts, TraceParent};

    #[test]
    fn owned_key_views_equal_and_hash_equal() {
        let mut facts = Facts::new(
            TraceParent::random(),
            Direction::Inbound,
            "10.0.0.1:5000".parse().expect("address"),
        );
        facts.source_identity = Some(Arc::new("spiffe://td/ns/a/sa/b".parse().expect("id")));
        let mut record = ConnectionRecord::new(Arc::new(facts), "10.0.0.2:80");
        record.mtls = true;
        record.destination_workload_meta = Some(Arc::new(WorkloadMeta {
            name: "web".into(),
            namespace: "apps".into(),
            app: None,
            version: Some("v1".into()),
        }));
        let key = KeyRef::of(&record);
        let owned = key.to_owned();
        let hasher = foldhash::fast::RandomState::default();
        assert_eq!(owned.view(), key);
        assert_eq!(hasher.hash_one(owned.view()), hasher.hash_one(key));
    }

    #[test]
    fn source_principal_only_with_mtls() {
        let mut facts = Facts::new(
            TraceParent::random(),
            Direction::Outbound,
            "10.0.0.1:5000".parse().expect("address"),
        );
        facts.source_identity = Some(Arc::new("spiffe://td/ns/a/sa/b".parse().expect("id")));
        let mut record = ConnectionRecord::new(Arc::new(facts), "10.0.0.2:80");
        assert_eq!(KeyRef::of(&record).source_principal, None);
        record.mtls = true;
        assert_eq!(
            KeyRef::of(&record).source_principal,
            Some("spiffe://td/ns/a/sa/b")
        );
    }
}
