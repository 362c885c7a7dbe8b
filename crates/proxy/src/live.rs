//! What is happening now, for operators (`meshd status connections|denials` and the admin
//! page): a [`RecordSink`] keeping the open connections, their bytes counted as they flow, and
//! the last [`DENIALS_KEPT`] refused or denied ones, and the traffic picture (a time series
//! and a graph of who talks to whom, [`crate::traffic`]).
//!
//! The data path pays one lock per open, establish and close (a map insert or remove), and
//! per byte an atomic add on the meter `established` hands out: never a lock per read. An open
//! connection costs a map entry with a reference to its record, which the views read when
//! asked: no copy of the record's strings (a copy was ~1.2 KB of each held connection).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use meshd_view as view;

use meshd_record::{ByteMeter, ConnectionRecord, Identity, RecordRef, RecordSink};

use crate::traffic::graph::{Graph, Refused};
use crate::traffic::series::{self, Series};
use crate::traffic::{self, edge_key, is_refusal};

/// How many refused or denied connections are kept: enough to look back over a burst of
/// scans without the ring itself becoming a memory cost (a few hundred bytes each).
pub const DENIALS_KEPT: usize = 256;

/// One open connection: its record, read when a view is asked for, and its live byte counts.
#[derive(Clone)]
struct Open {
    record: RecordRef,
    meter: Arc<Meter>,
}

/// Byte counts of one open connection.
#[derive(Default)]
struct Meter {
    downstream: AtomicU64,
    upstream: AtomicU64,
}

impl ByteMeter for Meter {
    fn downstream_bytes(&self, bytes: u64) {
        self.downstream.fetch_add(bytes, Ordering::Relaxed);
    }

    fn upstream_bytes(&self, bytes: u64) {
        self.upstream.fetch_add(bytes, Ordering::Relaxed);
    }
}

impl Meter {
    fn total(&self) -> u64 {
        self.downstream
            .load(Ordering::Relaxed)
            .saturating_add(self.upstream.load(Ordering::Relaxed))
    }
}

/// Open-connection capacity kept however few are open.
const SHRINK_ABOVE: usize = 64;

#[derive(Default)]
struct Tables {
    open: HashMap<u64, Open>,
    denials: VecDeque<view::Denial>,
    denials_total: u64,
    series: Series,
    graph: Graph,
    /// Bytes of the connections that closed since start (their meters' last counts).
    closed_bytes: u64,
    /// Bytes already put in a bucket of the series.
    counted_bytes: u64,
    /// The series bucket bytes were last counted in.
    counted_in: u64,
}

impl Tables {
    /// Puts the bytes counted since the last time into the bucket of `now`: the closed
    /// connections' and the open ones' so far (a sum over the open table, so done once per
    /// bucket on the data path and whenever the traffic view is read).
    fn count_bytes(&mut self, now: u64) {
        let open: u64 = self.open.values().map(|o| o.meter.total()).sum();
        let total = self.closed_bytes.saturating_add(open);
        let new = total.saturating_sub(self.counted_bytes);
        self.counted_bytes = self.counted_bytes.max(total);
        self.counted_in = Series::index(now);
        self.series.bytes(now, new);
        self.graph.expire(now);
    }
}

/// Open connections and recent denials; clones share the tables.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<Tables>>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// Seconds since the epoch (0 for a clock before it: the series then counts into its newest
/// bucket).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `unix` seconds as RFC 3339.
fn rfc3339_unix(seconds: u64) -> String {
    view::rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds))
}

/// An identity as the views show it: its URI.
fn identity(id: &Option<Arc<Identity>>) -> Option<String> {
    id.as_ref().map(|i| i.as_str().to_string())
}

impl Live {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connections, oldest first.
    pub fn connections(&self) -> view::Connections {
        let now = SystemTime::now();
        // Copied out first: a record is read under its own lock, which must never be taken
        // while holding the tables' (sinks are told under the record's lock).
        let open: Vec<Open> = self.tables().open.values().cloned().collect();
        let mut connections: Vec<(SystemTime, view::Connection)> = open
            .iter()
            .filter_map(|o| {
                o.record.read(|r| {
                    let age = now.duration_since(r.started).unwrap_or_default();
                    let connection = view::Connection {
                        id: r.trace_id(),
                        direction: r.facts.direction.to_string(),
                        established: r.established,
                        source: r.facts.source.to_string(),
                        source_identity: identity(&r.facts.source_identity),
                        destination: r.destination.clone(),
                        upstream: r.upstream_addr.map(|a| a.to_string()),
                        destination_identity: identity(&r.destination_identity),
                        transport: r.transport.clone().unwrap_or_else(|| "tcp".into()),
                        mtls: r.mtls,
                        bytes_in: o.meter.downstream.load(Ordering::Relaxed),
                        bytes_out: o.meter.upstream.load(Ordering::Relaxed),
                        started: view::rfc3339_seconds(r.started),
                        age_seconds: age.as_secs_f64(),
                    };
                    (r.started, connection)
                })
            })
            .collect();
        connections.sort_by_key(|(started, _)| *started);
        view::Connections {
            connections: connections.into_iter().map(|(_, c)| c).collect(),
        }
    }

    /// The recent denials, the most recent first.
    pub fn denials(&self) -> view::Denials {
        let tables = self.tables();
        view::Denials {
            capacity: DENIALS_KEPT,
            total: tables.denials_total,
            denials: tables.denials.iter().rev().cloned().collect(),
        }
    }

    /// The traffic picture: the series of the last minutes and the graph of who talks to
    /// whom, with every workload of `local` (names as `namespace/name`) a node, idle or not.
    pub fn traffic(&self, local: &[String]) -> view::Traffic {
        let now = unix(SystemTime::now());
        let open: Vec<Open> = self.tables().open.values().cloned().collect();
        // Read outside the tables' lock, as in `connections`: only established ones have a
        // final edge (their destination is known).
        let open: Vec<_> = open
            .iter()
            .filter_map(|o| {
                o.record
                    .read(|r| r.established.then(|| (edge_key(r), o.meter.total())))
                    .flatten()
            })
            .collect();
        let mut tables = self.tables();
        tables.count_bytes(now);
        let graph = tables.graph.view(open, local, now, rfc3339_unix);
        view::Traffic {
            bucket_seconds: series::BUCKET_SECONDS,
            buckets: tables.series.view(now, rfc3339_unix),
            nodes: graph.nodes,
            edges: graph.edges,
            max_nodes: traffic::NODES_SHOWN,
            max_edges: traffic::EDGES_SHOWN,
            omitted_edges: graph.omitted_edges,
            omitted_nodes: graph.omitted_nodes,
            forgotten_edges: graph.forgotten_edges,
        }
    }

    /// How many connections are open, and how many were refused or denied since start.
    pub fn counts(&self) -> (usize, u64) {
        let tables = self.tables();
        (tables.open.len(), tables.denials_total)
    }
}

impl RecordSink for Live {
    fn opened(&self, record: &ConnectionRecord, live: &RecordRef) {
        let open = Open {
            record: live.clone(),
            meter: Arc::default(),
        };
        let mut tables = self.tables();
        tables.open.insert(record.serial, open);
        tables.series.opened(unix(record.started));
    }

    fn established(&self, record: &ConnectionRecord) -> Option<Arc<dyn ByteMeter>> {
        let tables = self.tables();
        let open = tables.open.get(&record.serial)?;
        Some(open.meter.clone())
    }

    fn closed(&self, r: &ConnectionRecord) {
        // Built before the lock: the lock is held for the map and ring updates only.
        let denial = is_refusal(r.outcome).then(|| view::Denial {
            at: view::rfc3339_seconds(SystemTime::now()),
            id: r.trace_id(),
            direction: r.facts.direction.to_string(),
            source: r.facts.source.to_string(),
            source_identity: identity(&r.facts.source_identity),
            destination: r.destination.clone(),
            outcome: r.outcome.as_str().to_string(),
            policy: r.verdict.as_ref().and_then(|v| v.policy.clone()),
            reason: r
                .error
                .clone()
                .or_else(|| r.verdict.as_ref().map(|v| v.reason.clone()))
                .unwrap_or_default(),
        });
        let now = unix(SystemTime::now());
        let refused = is_refusal(r.outcome).then(|| Refused {
            outcome: r.outcome.as_str(),
            policy: r.verdict.as_ref().and_then(|v| v.policy.clone()),
        });
        let key = edge_key(r);
        let mut tables = self.tables();
        let bytes = tables.open.remove(&r.serial).map_or(0, |o| o.meter.total());
        tables.closed_bytes = tables.closed_bytes.saturating_add(bytes);
        tables.graph.closed(key, bytes, now, refused);
        if tables.counted_in != Series::index(now) {
            tables.count_bytes(now);
        }
        // A map keeps the capacity of its largest burst; give most of it back once the burst
        // is over (rehashing what is left, at most once per fourfold fall).
        let (len, capacity) = (tables.open.len(), tables.open.capacity());
        if capacity > SHRINK_ABOVE && len < capacity / 4 {
            tables.open.shrink_to(len * 2);
        }
        if let Some(denial) = denial {
            if tables.denials.len() == DENIALS_KEPT {
                tables.denials.pop_front();
            }
            tables.denials.push_back(denial);
            tables.denials_total += 1;
            tables.series.denied(now);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ProxyError;
    use meshd_record::{Direction, Facts, Outcome, RecordHandle, Sinks, TraceParent, Verdict};

    fn record(direction: Direction) -> ConnectionRecord {
        let facts = Facts::new(
            TraceParent::random(),
            direction,
            "127.10.59.1:40000".parse().unwrap(),
        );
        ConnectionRecord::new(Arc::new(facts), "127.10.59.2:8080")
    }

    #[test]
    fn open_connections_show_live_bytes_and_leave_when_closed() {
        let live = Live::default();
        let sinks = Sinks::new(vec![Arc::new(live.clone())]);
        // Both directions of one tunnel through one meshd share the trace id.
        let inbound = RecordHandle::open(record(Direction::Inbound), sinks.clone());
        let outbound = RecordHandle::open(record(Direction::Outbound), sinks);
        assert_eq!(live.connections().connections.len(), 2);
        let meters = inbound.established();
        for m in meters.iter() {
            m.downstream_bytes(100);
            m.upstream_bytes(7);
        }
        let shown = live.connections();
        let c = shown
            .connections
            .iter()
            .find(|c| c.direction == "inbound")
            .unwrap();
        assert!(c.established);
        assert_eq!((c.bytes_in, c.bytes_out), (100, 7));
        drop(meters);
        drop(inbound);
        assert_eq!(live.connections().connections.len(), 1);
        outbound.fail_with(Outcome::Failed, "reset");
        drop(outbound);
        // A failure after being set up is not a refusal.
        assert_eq!(live.counts(), (0, 0));
    }

    // After a burst the table gives its room back: RSS after load comes back (issue 13).
    #[test]
    fn the_open_table_shrinks_after_a_burst() {
        let live = Live::default();
        let sinks = Sinks::new(vec![Arc::new(live.clone())]);
        let burst: Vec<_> = (0..2000)
            .map(|_| RecordHandle::open(record(Direction::Inbound), sinks.clone()))
            .collect();
        let peak = live.tables().open.capacity();
        assert!(peak >= 2000, "{peak}");
        drop(burst);
        assert_eq!(live.counts().0, 0);
        let after = live.tables().open.capacity();
        assert!(
            after <= SHRINK_ABOVE,
            "capacity {after} after the burst (peak {peak})"
        );
    }

    #[test]
    fn denials_keep_the_deciding_policy_and_the_last_ones_only() {
        let live = Live::default();
        let sinks = Sinks::new(vec![Arc::new(live.clone())]);
        // Told apart by their trace ids.
        let trace = |i: usize| TraceParent {
            trace_id: i as u128 + 1,
            parent_id: 1,
            flags: 0,
        };
        for i in 0..DENIALS_KEPT + 3 {
            let facts = Facts::new(
                trace(i),
                Direction::Inbound,
                "127.10.59.1:40000".parse().unwrap(),
            );
            let record = ConnectionRecord::new(Arc::new(facts), "127.10.59.2:8080");
            let handle = RecordHandle::open(record, sinks.clone());
            handle.update(|r| {
                r.verdict = Some(Verdict {
                    allowed: false,
                    policy: Some("shop/deny-all".into()),
                    reason: "denied by DENY policy shop/deny-all".into(),
                });
            });
            handle.fail(&ProxyError::Denied {
                policy: Some("shop/deny-all".into()),
                reason: "denied by DENY policy shop/deny-all".into(),
            });
        }
        let denials = live.denials();
        assert_eq!(denials.total, (DENIALS_KEPT + 3) as u64);
        assert_eq!(denials.denials.len(), DENIALS_KEPT);
        let newest = &denials.denials[0];
        assert_eq!(newest.id, trace(DENIALS_KEPT + 2).to_string());
        assert_eq!(newest.outcome, "denied");
        assert_eq!(newest.policy.as_deref(), Some("shop/deny-all"));
        assert!(newest.reason.contains("shop/deny-all"), "{newest:?}");
        assert_eq!(live.counts().0, 0);
    }

    // The records feed the picture: an open allowed connection and a denied one between the
    // same peers are two edges; the series counts both connections, the denial and the bytes.
    #[test]
    fn the_traffic_view_shows_open_and_denied_connections() {
        let live = Live::default();
        let sinks = Sinks::new(vec![Arc::new(live.clone())]);
        let destined = |r: &mut ConnectionRecord| r.destination_workload = Some("shop/db".into());
        let allowed = RecordHandle::open(record(Direction::Inbound), sinks.clone());
        allowed.update(destined);
        let meters = allowed.established();
        for m in meters.iter() {
            m.downstream_bytes(3000);
            m.upstream_bytes(3000);
        }
        let before = live.traffic(&["shop/db".to_string()]);
        assert_eq!(before.buckets.len(), traffic::BUCKETS);
        assert_eq!(before.edges.len(), 1);
        assert_eq!(
            (
                before.edges[0].verdict.as_str(),
                before.edges[0].open,
                before.edges[0].bytes
            ),
            ("allowed", 1, 6000)
        );
        let denied = RecordHandle::open(record(Direction::Inbound), sinks);
        denied.update(destined);
        denied.fail(&ProxyError::Denied {
            policy: Some("shop/deny-admin".into()),
            reason: "denied by DENY policy shop/deny-admin".into(),
        });
        drop(denied);
        let after = live.traffic(&["shop/db".to_string()]);
        let edge = after.edges.iter().find(|e| e.verdict == "denied").unwrap();
        assert_eq!(
            (edge.from.as_str(), edge.to.as_str()),
            ("127.10.59.1", "shop/db")
        );
        let sum = |f: fn(&view::TrafficBucket) -> u64| after.buckets.iter().map(f).sum::<u64>();
        assert_eq!(sum(|b| b.connections), 2);
        assert_eq!(sum(|b| b.denials), 1);
        assert_eq!(sum(|b| b.bytes), 6000);
        // Bytes are counted once: closing the allowed one adds nothing new.
        drop(meters);
        drop(allowed);
        let closed = live.traffic(&[]);
        assert_eq!(closed.buckets.iter().map(|b| b.bytes).sum::<u64>(), 6000);
        let edge = closed
            .edges
            .iter()
            .find(|e| e.verdict == "allowed")
            .unwrap();
        assert_eq!((edge.open, edge.connections, edge.bytes), (0, 1, 6000));
    }
}
