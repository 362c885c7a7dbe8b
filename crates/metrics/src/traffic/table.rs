//! The traffic series by label set, with the one label a peer chooses bounded.
//!
//! `source_principal` on an inbound connection is the peer's SPIFFE ID: any holder of a
//! certificate from a trusted or federated root picks it, so series keyed by it would grow
//! memory (and every scrape) without bound. Two rules keep them bounded:
//!
//! - a denied connection never gets a series of its own peer: it is counted under
//!   `source_principal="denied"` ([`DENIED_PRINCIPAL`], set by [`super::KeyRef::of`]); who was
//!   denied is in the access log, by which policy in `meshd_authorization_decisions_total`;
//! - at most [`MAX_PEER_PRINCIPALS`] principals have series of their own. A new one at the cap
//!   evicts the least recently used principals that have no open connection (their series are
//!   removed from the families: Prometheus sees them end, and sees a counter start again if the
//!   peer comes back), an eighth of the cap at a time, so the O(series) sweep runs at most once
//!   per [`EVICT_BATCH`] new principals. When every principal has an open connection, new ones
//!   are counted under `source_principal="overflow"` ([`OVERFLOW_PRINCIPAL`]) until one closes.
//!
//! Every other label comes from meshd's configuration (workloads, services) or is fixed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::{KeyRef, Series, TrafficLabels};
use crate::value::Value;

/// Distinct peer principals with series of their own. Each costs about 1.5 KB of label text per
/// series and at least four series (opened, closed, received, sent) per local workload it
/// talks to: 1024 keeps a worst-case scrape of one workload near 6 MB, while a VM's workloads
/// rarely see more than a few hundred distinct service accounts (each a ztunnel dashboard row).
pub const MAX_PEER_PRINCIPALS: usize = 1024;

/// Principals evicted by one sweep: an eighth of the cap, so sweeps are amortised over as many
/// new principals and the table still keeps seven eighths of what it knew.
const EVICT_BATCH: usize = MAX_PEER_PRINCIPALS / 8;

/// `source_principal` of a denied mTLS connection.
pub const DENIED_PRINCIPAL: &str = "denied";

/// `source_principal` of a connection from a new principal while every one of the
/// [`MAX_PEER_PRINCIPALS`] has an open connection.
pub const OVERFLOW_PRINCIPAL: &str = "overflow";

/// The series, found by the hash of their key, and the principals that have some.
#[derive(Debug)]
pub(super) struct Table {
    /// A bucket holds the (rare) hash collisions.
    by_hash: foldhash::HashMap<u64, Vec<Arc<Series>>>,
    /// Principals with series of their own (never [`DENIED_PRINCIPAL`] or
    /// [`OVERFLOW_PRINCIPAL`], which are not a peer's).
    principals: foldhash::HashSet<String>,
    /// New principals still to count under [`OVERFLOW_PRINCIPAL`] before the next sweep, after
    /// a sweep found no idle principal: an attack that holds every slot open cannot make each
    /// new connection pay a sweep.
    overflow_before_sweep: usize,
    /// The families a series' counters live in, to remove an evicted one's.
    opened: Family<TrafficLabels, Counter>,
    received: Family<TrafficLabels, Counter>,
    sent: Family<TrafficLabels, Counter>,
}

impl Table {
    pub(super) fn new(
        opened: Family<TrafficLabels, Counter>,
        received: Family<TrafficLabels, Counter>,
        sent: Family<TrafficLabels, Counter>,
    ) -> Table {
        Table {
            by_hash: foldhash::HashMap::default(),
            principals: foldhash::HashSet::default(),
            overflow_before_sweep: 0,
            opened,
            received,
            sent,
        }
    }

    /// The series of `key`, if it has one.
    pub(super) fn find(&self, hash: u64, key: KeyRef<'_>) -> Option<&Arc<Series>> {
        self.by_hash
            .get(&hash)
            .and_then(|bucket| bucket.iter().find(|s| s.key.view() == key))
    }

    /// `key` as it may have a series: unchanged when its principal has (or may get) series of
    /// its own, else with [`OVERFLOW_PRINCIPAL`]. Makes room by evicting idle principals when
    /// the table is full.
    pub(super) fn admit<'a>(&mut self, key: KeyRef<'a>) -> KeyRef<'a> {
        let Some(principal) = key.source_principal else {
            return key;
        };
        if principal == DENIED_PRINCIPAL
            || principal == OVERFLOW_PRINCIPAL
            || self.principals.contains(principal)
        {
            return key;
        }
        if self.principals.len() >= MAX_PEER_PRINCIPALS {
            if self.overflow_before_sweep == 0 && self.evict_idle() == 0 {
                self.overflow_before_sweep = EVICT_BATCH;
            }
            if self.principals.len() >= MAX_PEER_PRINCIPALS {
                self.overflow_before_sweep = self.overflow_before_sweep.saturating_sub(1);
                return KeyRef {
                    source_principal: Some(OVERFLOW_PRINCIPAL),
                    ..key
                };
            }
        }
        self.principals.insert(principal.to_owned());
        key
    }

    /// Adds a series made for an admitted key.
    pub(super) fn insert(&mut self, hash: u64, series: Arc<Series>) {
        self.by_hash.entry(hash).or_default().push(series);
    }

    /// Evicts up to [`EVICT_BATCH`] principals without an open connection, least recently used
    /// first; returns how many.
    fn evict_idle(&mut self) -> usize {
        // A series is in use while anything but this table holds it: an open connection's
        // byte meter, or a close being counted. Both take their clone under the table's lock,
        // which the caller holds for writing, so none can appear while this runs.
        let mut usage: foldhash::HashMap<&str, (u64, bool)> = foldhash::HashMap::default();
        for series in self.by_hash.values().flatten() {
            let Some(principal) = series.key.source_principal.as_deref() else {
                continue;
            };
            if !self.principals.contains(principal) {
                continue;
            }
            let (last_used, busy) = usage.entry(principal).or_insert((0, false));
            *last_used = (*last_used).max(series.last_used.load(Ordering::Relaxed));
            *busy |= Arc::strong_count(series) > 1;
        }
        let mut idle: Vec<(u64, &str)> = usage
            .into_iter()
            .filter(|(_, (_, busy))| !busy)
            .map(|(principal, (last_used, _))| (last_used, principal))
            .collect();
        idle.sort_unstable();
        let evicted: foldhash::HashSet<String> = idle
            .into_iter()
            .take(EVICT_BATCH)
            .map(|(_, principal)| principal.to_owned())
            .collect();
        if evicted.is_empty() {
            return 0;
        }
        let families = [&self.opened, &self.received, &self.sent];
        self.by_hash.retain(|_, bucket| {
            bucket.retain(|series| {
                let gone = series
                    .key
                    .source_principal
                    .as_deref()
                    .is_some_and(|p| evicted.contains(p));
                if gone {
                    unregister(series, families);
                }
                !gone
            });
            !bucket.is_empty()
        });
        self.principals.retain(|p| !evicted.contains(p));
        evicted.len()
    }
}

/// Removes an evicted series' counters from their families, every response flag included.
fn unregister(series: &Series, families: [&Family<TrafficLabels, Counter>; 3]) {
    for family in families {
        family.remove(&series.labels);
    }
    for flag in series.flags() {
        let labels = TrafficLabels {
            response_flags: Value::fixed(flag),
            ..series.labels.clone()
        };
        series.closed_family.remove(&labels);
        series.failed_family.remove(&labels);
    }
}

/// The clock series are stamped with when used: it ticks once per new series, which is all the
/// ordering "least recently used" needs, and costs a lookup one relaxed load and store.
#[derive(Debug, Default)]
pub(super) struct Clock(AtomicU64);

impl Clock {
    /// Stamps `series` as used now.
    pub(super) fn touch(&self, series: &Series) {
        series
            .last_used
            .store(self.0.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Advances the clock (a new series is made).
    pub(super) fn tick(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}
