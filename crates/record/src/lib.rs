//! meshd's connection records: one [`ConnectionRecord`] per connection, what metrics, access
//! logs and the operator views consume.
//!
//! The proxy opens a record where a connection enters ([`RecordHandle::open`]), its layers fill
//! it in as the connection meets them (identity, decision, upstream, bytes), and when the last
//! handle is dropped the record is closed and handed to every [`RecordSink`] exactly once. Sinks
//! that count bytes as they flow hand out a [`ByteMeter`] when the connection is established.
//!
//! A crate of its own so that the sinks (meshd-metrics) depend on the records only, not on the
//! proxy that fills them in. It does not log, count or serve anything itself.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod facts;

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;

pub use facts::{Facts, Identity};
pub use meshd_hbone::TraceParent;
pub use meshd_identity::SpiffeId;

/// Which way a connection goes through this meshd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Into a local workload.
    Inbound,
    /// From a local application out.
    Outbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        })
    }
}

/// The authorization outcome, when one was made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Allowed or not.
    pub allowed: bool,
    /// `namespace/name` of the deciding policy.
    pub policy: Option<String>,
    /// Why, in words.
    pub reason: String,
}

/// A workload as metrics and logs label it (Istio's `*_workload`, `*_workload_namespace`,
/// `*_app`, `*_version` labels).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WorkloadMeta {
    /// The WorkloadEntry's name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its `app` (or `app.kubernetes.io/name`) label.
    pub app: Option<String>,
    /// Its `version` (or `app.kubernetes.io/version`) label.
    pub version: Option<String>,
}

/// Why a connection ended without carrying traffic; one value per refusal class, as metrics
/// (`meshd_connection_refusals_total{reason}`) and logs name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// Carried traffic (or is still carrying it).
    Allowed,
    /// An authorization policy or a STRICT PeerAuthentication denied it.
    Denied,
    /// The destination is not a workload this meshd serves (not local, unknown port, bad
    /// authority).
    NotLocal,
    /// The destination is one of meshd's own ports.
    OwnPort,
    /// A plugin's limit refused it.
    Limited,
    /// The client never completed its handshake (TLS, HTTP/2, SOCKS5) or was not redirected.
    Handshake,
    /// The destination could not be resolved or reached, or the peer meshd refused the tunnel.
    Unreachable,
    /// A new configuration denied it while it was open.
    ClosedByPolicy,
    /// It failed after it was established (a reset, an I/O error).
    Failed,
}

impl Outcome {
    /// The snake_case name used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::NotLocal => "not_local",
            Outcome::OwnPort => "own_port",
            Outcome::Limited => "limited",
            Outcome::Handshake => "handshake",
            Outcome::Unreachable => "unreachable",
            Outcome::ClosedByPolicy => "closed_by_policy",
            Outcome::Failed => "failed",
        }
    }

    /// ztunnel's `response_flags` for this outcome: `-` for success, `DENY` for a policy
    /// decision, `CONNECT` for a failure to set up the connection.
    pub fn response_flag(self) -> &'static str {
        match self {
            Outcome::Allowed => "-",
            Outcome::Denied | Outcome::ClosedByPolicy => "DENY",
            Outcome::Handshake => "TLS_FAILURE",
            _ => "CONNECT",
        }
    }
}

/// Counts bytes of one established connection as they flow; a sink's handles are resolved
/// once per connection, so each call is an atomic add.
pub trait ByteMeter: Send + Sync {
    /// Bytes read from the downstream side (toward the upstream).
    fn downstream_bytes(&self, bytes: u64);
    /// Bytes read from the upstream side (toward the downstream).
    fn upstream_bytes(&self, bytes: u64);
    /// The connection ended (called once, after every sink's [`RecordSink::closed`]): a sink
    /// finishes here with what it resolved when the connection was established, instead of
    /// resolving it again from the record.
    fn closed(&self, _record: &ConnectionRecord) {}
}

/// The byte meters the sinks handed out for one established connection.
pub type Meters = Arc<[Arc<dyn ByteMeter>]>;

/// No meters, shared, so a connection without metering sinks allocates nothing for them.
static NO_METERS: LazyLock<Meters> = LazyLock::new(|| Arc::new([]));

/// Everything known about one connection when it ends.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectionRecord {
    /// What the connection is: set where it entered, shared with the proxy's context.
    pub facts: Arc<Facts>,
    /// Unique within this process: tells sinks which open record a closed one is (the trace
    /// id is shared by both directions of a tunnel through one meshd).
    pub serial: u64,
    /// The destination workload, once resolved.
    pub destination_workload_meta: Option<Arc<WorkloadMeta>>,
    /// True when the downstream side (inbound) or the upstream side (outbound) used mTLS.
    pub mtls: bool,
    /// How it ended (set when the record is finished; `Allowed` while open).
    pub outcome: Outcome,
    /// True once allowed and connected on both sides.
    pub established: bool,
    /// The destination as asked for (original destination, CONNECT authority, SOCKS target),
    /// as the client put it; `-` until known (a SOCKS5 request not read yet).
    pub destination: String,
    /// The address actually connected to (a workload, or a peer meshd's HBONE port).
    pub upstream_addr: Option<SocketAddr>,
    /// The address a plain upstream connection left from: meshd's own, or the client's when
    /// inbound connections keep it (`redirect.originalSource`); `None` for tunnels.
    pub upstream_local: Option<SocketAddr>,
    /// The destination workload (`namespace/name`).
    pub destination_workload: Option<String>,
    /// The destination identity expected (outbound) or served (inbound).
    pub destination_identity: Option<Arc<Identity>>,
    /// The service, when the destination was one (`namespace/name`).
    pub destination_service: Option<String>,
    /// The service's host name (its first `hosts` entry), when the destination was one.
    pub destination_service_host: Option<String>,
    /// The authorization outcome (inbound).
    pub verdict: Option<Verdict>,
    /// The HBONE transport (`h2`, or `h3` for QUIC), when the connection used a tunnel.
    pub transport: Option<String>,
    /// Bytes from the downstream side to the upstream side.
    pub bytes_in: u64,
    /// Bytes from the upstream side back to the downstream side.
    pub bytes_out: u64,
    /// When the connection was accepted.
    pub started: SystemTime,
    /// How long it lasted.
    pub duration: Duration,
    /// Why it failed or was refused, if it did.
    pub error: Option<String>,
}

/// The next record's serial.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1);

impl ConnectionRecord {
    /// A record for a connection accepted now, with its `facts`, asked for `destination`.
    pub fn new(facts: Arc<Facts>, destination: impl Into<String>) -> Self {
        ConnectionRecord {
            facts,
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            destination_workload_meta: None,
            mtls: false,
            outcome: Outcome::Allowed,
            established: false,
            destination: destination.into(),
            upstream_addr: None,
            upstream_local: None,
            destination_workload: None,
            destination_identity: None,
            destination_service: None,
            destination_service_host: None,
            verdict: None,
            transport: None,
            bytes_in: 0,
            bytes_out: 0,
            started: SystemTime::now(),
            duration: Duration::ZERO,
            error: None,
        }
    }

    /// The trace id: the `traceparent` header's value.
    pub fn trace_id(&self) -> String {
        self.facts.trace.to_string()
    }
}

impl ConnectionRecord {
    /// Stamps the end of the connection: its duration, and for a connection that ended before
    /// it was established without saying why, a failure.
    fn close(&mut self) {
        self.duration = SystemTime::now()
            .duration_since(self.started)
            .unwrap_or_default();
        if !self.established && self.outcome == Outcome::Allowed {
            self.outcome = Outcome::Failed;
            self.error
                .get_or_insert_with(|| "ended before it was established".to_string());
        }
    }
}

/// The one record of a connection while it is open. Made where the connection enters meshd,
/// before anything can refuse it; every layer fills it in; when the last handle is dropped —
/// however the connection ended, a panic or an abort included — it is closed and handed to
/// every sink, exactly once.
#[derive(Debug, Clone)]
pub struct RecordHandle(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    record: Mutex<Open>,
    sinks: Sinks,
}

/// A sink's view of an open record: reads it as it is now without keeping it (or the
/// connection's close) alive, so a sink that shows open connections needs no copy of each.
#[derive(Debug, Clone)]
pub struct RecordRef(std::sync::Weak<Shared>);

impl RecordRef {
    /// `f` on the record as it is now; `None` once the connection is gone.
    ///
    /// Takes the record's lock: never call it while holding a lock a sink takes when told
    /// of a record (sinks are told under the record's lock).
    pub fn read<R>(&self, f: impl FnOnce(&ConnectionRecord) -> R) -> Option<R> {
        let shared = self.0.upgrade()?;
        let guard = shared.record.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&guard.record))
    }
}

/// A record and the meters handed out for it, under one lock.
struct Open {
    record: ConnectionRecord,
    meters: Option<Meters>,
}

impl fmt::Debug for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.record.fmt(f)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let open = self.record.get_mut().unwrap_or_else(|e| e.into_inner());
        open.record.close();
        self.sinks.closed(&open.record);
        for meter in open.meters.iter().flat_map(|m| m.iter()) {
            meter.closed(&open.record);
        }
    }
}

impl RecordHandle {
    /// Opens a record: the sinks are told now, and again when the last handle is dropped.
    pub fn open(record: ConnectionRecord, sinks: Sinks) -> Self {
        let shared = Arc::new(Shared {
            record: Mutex::new(Open {
                record,
                meters: None,
            }),
            sinks,
        });
        {
            let guard = shared.record.lock().unwrap_or_else(|e| e.into_inner());
            shared
                .sinks
                .opened(&guard.record, &RecordRef(Arc::downgrade(&shared)));
        }
        RecordHandle(shared)
    }

    /// A reference that reads the record without keeping it open.
    pub fn reference(&self) -> RecordRef {
        RecordRef(Arc::downgrade(&self.0))
    }

    /// A record no sink sees (tests, tools).
    pub fn detached(record: ConnectionRecord) -> Self {
        RecordHandle::open(record, Sinks::default())
    }

    /// Updates the record.
    pub fn update(&self, f: impl FnOnce(&mut ConnectionRecord)) {
        let mut guard = self.0.record.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard.record);
    }

    /// A copy of the record as it is now.
    pub fn snapshot(&self) -> ConnectionRecord {
        self.0
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record
            .clone()
    }

    /// Marks the connection established (allowed, both sides connected) and returns the
    /// sinks' byte meters; the sinks are told once, however often this is called.
    ///
    /// The sinks are called under the record's lock rather than with a copy of the record:
    /// they only resolve counters, and copying the record's strings cost more than the metrics
    /// sink's whole work (benches/metrics.rs).
    pub fn established(&self) -> Meters {
        let mut guard = self.0.record.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(meters) = &guard.meters {
            return meters.clone();
        }
        guard.record.established = true;
        let meters = self.0.sinks.established(&guard.record);
        guard.meters = Some(meters.clone());
        meters
    }

    /// Records why the connection failed or was refused (the first reason given wins: a
    /// refusal is not overwritten by the error its refusal causes further out).
    pub fn fail(&self, error: &dyn Failure) {
        self.fail_with(error.outcome(), error.to_string());
    }

    /// Records a failure with its class, e.g. before the connection reached a stack (a
    /// handshake, a missing original destination).
    pub fn fail_with(&self, outcome: Outcome, reason: impl Into<String>) {
        self.update(|r| {
            if r.error.is_none() {
                r.outcome = outcome;
                r.error = Some(reason.into());
            }
        });
    }
}

/// An error that ends a connection: the class it puts the connection in, and its words (its
/// `Display`, what access logs print).
pub trait Failure: fmt::Display {
    /// The refusal class, for metrics and logs.
    fn outcome(&self) -> Outcome;
}

/// A consumer of connection records (metrics, access log, admin).
pub trait RecordSink: Send + Sync + 'static {
    /// A connection was accepted; `live` reads the record later, as it is then.
    fn opened(&self, _record: &ConnectionRecord, _live: &RecordRef) {}
    /// The connection was allowed and both sides are connected: its labels are final. A sink
    /// that counts bytes as they flow returns its meter.
    fn established(&self, _record: &ConnectionRecord) -> Option<Arc<dyn ByteMeter>> {
        None
    }
    /// A connection ended; called exactly once per opened connection.
    fn closed(&self, record: &ConnectionRecord);
}

/// Several sinks as one.
#[derive(Clone, Default)]
pub struct Sinks(Arc<Vec<Arc<dyn RecordSink>>>);

impl Sinks {
    /// From a list of sinks.
    pub fn new(sinks: Vec<Arc<dyn RecordSink>>) -> Self {
        Sinks(Arc::new(sinks))
    }

    /// Tells every sink a connection opened.
    pub fn opened(&self, record: &ConnectionRecord, live: &RecordRef) {
        for sink in self.0.iter() {
            sink.opened(record, live);
        }
    }

    /// Tells every sink the connection is established; returns their meters.
    pub fn established(&self, record: &ConnectionRecord) -> Meters {
        let meters: Vec<_> = self
            .0
            .iter()
            .filter_map(|sink| sink.established(record))
            .collect();
        if meters.is_empty() {
            NO_METERS.clone()
        } else {
            meters.into()
        }
    }

    /// Tells every sink a connection closed.
    pub fn closed(&self, record: &ConnectionRecord) {
        for sink in self.0.iter() {
            sink.closed(record);
        }
    }
}

impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sinks({})", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Counts every call it gets, as sink and as meter.
    #[derive(Default)]
    struct Counting {
        opened: AtomicUsize,
        established: AtomicUsize,
        closed: AtomicUsize,
        meter_closed: AtomicUsize,
        bytes: AtomicUsize,
    }

    struct Meter(Arc<Counting>);

    impl ByteMeter for Meter {
        fn downstream_bytes(&self, bytes: u64) {
            self.0.bytes.fetch_add(bytes as usize, Ordering::Relaxed);
        }
        fn upstream_bytes(&self, bytes: u64) {
            self.0.bytes.fetch_add(bytes as usize, Ordering::Relaxed);
        }
        fn closed(&self, record: &ConnectionRecord) {
            assert!(
                record.established,
                "a meter only exists for an established record"
            );
            self.0.meter_closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    struct Sink(Arc<Counting>);

    impl RecordSink for Sink {
        fn opened(&self, _record: &ConnectionRecord, _live: &RecordRef) {
            self.0.opened.fetch_add(1, Ordering::Relaxed);
        }
        fn established(&self, _record: &ConnectionRecord) -> Option<Arc<dyn ByteMeter>> {
            self.0.established.fetch_add(1, Ordering::Relaxed);
            Some(Arc::new(Meter(self.0.clone())))
        }
        fn closed(&self, _record: &ConnectionRecord) {
            // The meters are told after the sinks.
            assert_eq!(self.0.meter_closed.load(Ordering::Relaxed), 0);
            self.0.closed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn record() -> ConnectionRecord {
        let facts = Facts::new(
            TraceParent::random(),
            Direction::Inbound,
            "10.0.0.1:5000".parse().expect("address"),
        );
        ConnectionRecord::new(Arc::new(facts), "10.0.0.2:80")
    }

    #[test]
    fn sinks_and_meters_are_told_exactly_once() {
        let counts = Arc::new(Counting::default());
        let handle = RecordHandle::open(record(), Sinks::new(vec![Arc::new(Sink(counts.clone()))]));
        let first = handle.established();
        let again = handle.clone().established();
        assert_eq!(first.len(), 1);
        assert!(Arc::ptr_eq(&first, &again), "the same meters, not new ones");
        first[0].downstream_bytes(3);
        again[0].upstream_bytes(4);
        drop((first, again));
        let clone = handle.clone();
        drop(handle);
        assert_eq!(
            counts.closed.load(Ordering::Relaxed),
            0,
            "a handle is still open"
        );
        drop(clone);
        for (what, n) in [
            ("opened", &counts.opened),
            ("established", &counts.established),
            ("closed", &counts.closed),
            ("meter closed", &counts.meter_closed),
        ] {
            assert_eq!(n.load(Ordering::Relaxed), 1, "{what}");
        }
        assert_eq!(counts.bytes.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn a_record_never_established_closes_no_meter() {
        let counts = Arc::new(Counting::default());
        let handle = RecordHandle::open(record(), Sinks::new(vec![Arc::new(Sink(counts.clone()))]));
        handle.fail_with(Outcome::Denied, "denied by ns/p");
        drop(handle);
        assert_eq!(counts.closed.load(Ordering::Relaxed), 1);
        assert_eq!(counts.meter_closed.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_sinks_no_meters() {
        let handle = RecordHandle::detached(record());
        assert!(handle.established().is_empty());
        assert!(handle.snapshot().established);
    }
}
