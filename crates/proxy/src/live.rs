//! What is happening now, for operators (`meshd status connections|denials` and the admin
//! page): a [`RecordSink`] keeping the open connections, their bytes counted as they flow, and
//! the last [`DENIALS_KEPT`] refused or denied ones.
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

use meshd_record::{ByteMeter, ConnectionRecord, Identity, Outcome, RecordRef, RecordSink};

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

/// Open-connection capacity kept however few are open.
const SHRINK_ABOVE: usize = 64;

#[derive(Default)]
struct Tables {
    open: HashMap<u64, Open>,
    denials: VecDeque<view::Denial>,
    denials_total: u64,
}

/// Open connections and recent denials; clones share the tables.
#[derive(Clone, Default)]
pub struct Live(Arc<Mutex<Tables>>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

/// True for the outcomes the denials view lists: refusals and denials, not connections that
/// carried traffic or failed on their own after being established.
fn is_refusal(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Allowed | Outcome::Failed)
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
        self.tables().open.insert(record.serial, open);
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
        let mut tables = self.tables();
        tables.open.remove(&r.serial);
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
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ProxyError;
    use meshd_record::{Direction, Facts, RecordHandle, Sinks, TraceParent, Verdict};

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
}
