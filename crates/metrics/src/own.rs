//! meshd's own series (`meshd_*`): what ztunnel has no series for.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use meshd_record::{ConnectionRecord, Direction};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::value::Value;

/// What the HBONE client's connection pool reports, read at scrape time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HbonePool {
    /// Connections currently pooled (open and reusable, or draining).
    pub connections: u64,
    /// Connections opened since the client was created.
    pub connections_opened: u64,
}

type PoolSource = Box<dyn Fn() -> HbonePool + Send + Sync>;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AuthzLabels {
    result: Value,
    policy: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusalLabels {
    direction: Value,
    reason: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StreamLabels {
    direction: Value,
    transport: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityLabels {
    identity: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IdentityResultLabels {
    identity: Value,
    result: Value,
}

/// A success and a failure counter, resolved once.
#[derive(Debug)]
struct Results {
    success: Counter,
    failure: Counter,
}

impl Results {
    fn register(registry: &mut Registry, name: &str, help: &str) -> Results {
        let family = Family::<ResultLabels, Counter>::default();
        registry.register(name, help, family.clone());
        let get = |result| {
            family.get_or_create_owned(&ResultLabels {
                result: Value::fixed(result),
            })
        };
        Results {
            success: get("success"),
            failure: get("failure"),
        }
    }

    fn get(&self, success: bool) -> &Counter {
        if success {
            &self.success
        } else {
            &self.failure
        }
    }
}

/// The `meshd_` families.
#[derive(Debug)]
pub(crate) struct Own {
    decisions: Decisions,
    refusals: Family<RefusalLabels, Counter>,
    streams: Streams,
    reloads: Results,
    generation: Gauge,
    expiry: Family<IdentityLabels, Gauge>,
    /// The identity the expiry gauge shows, so a new identity replaces the old series.
    identity: Mutex<Option<Value>>,
    rotations: Results,
    /// The workloads' own identities' rotations, by identity and result.
    workload_rotations: Family<IdentityResultLabels, Counter>,
    pool: Arc<PoolCollector>,
}

impl Own {
    /// Registers the families under `registry` (the `meshd_` sub-registry).
    pub(crate) fn register(registry: &mut Registry) -> Own {
        let decisions = Family::<AuthzLabels, Counter>::default();
        registry.register(
            "authorization_decisions",
            "Authorization decisions on inbound connections, by result and deciding policy (none when no policy decided)",
            decisions.clone(),
        );
        let refusals = Family::default();
        registry.register(
            "connection_refusals",
            "Connections that ended before they were established, by direction and reason",
            refusals.clone(),
        );
        let streams = Family::<StreamLabels, Counter>::default();
        registry.register(
            "hbone_streams",
            "HBONE streams (CONNECT tunnels) opened, by direction and transport (h2, h3)",
            streams.clone(),
        );
        let reloads = Results::register(
            registry,
            "config_reloads",
            "Configuration reloads, by result (a failed reload leaves the configuration in force)",
        );
        let generation = Gauge::default();
        registry.register(
            "config_generation",
            "The generation number of the configuration in force",
            generation.clone(),
        );
        let expiry = Family::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "When the certificate in force expires (Unix time), by SPIFFE identity",
            expiry.clone(),
        );
        let rotations = Results::register(
            registry,
            "certificate_rotations",
            "Certificate rotations since start, by result (a failed one keeps the old certificate)",
        );
        let workload_rotations = Family::default();
        registry.register(
            "workload_certificate_rotations",
            "Rotations of local workloads' own certificates (workloadIdentities) since start, by identity and result",
            workload_rotations.clone(),
        );
        let pool = Arc::new(PoolCollector::default());
        registry.register_collector(Box::new(pool.clone()));
        Own {
            decisions: Decisions {
                family: decisions,
                allowed: RwLock::default(),
                denied: RwLock::default(),
            },
            refusals,
            streams: Streams::new(streams),
            reloads,
            generation,
            expiry,
            identity: Mutex::new(None),
            rotations,
            workload_rotations,
            pool,
        }
    }

    /// Counts what a finished record tells: its authorization decision, and its refusal when it
    /// was never established.
    pub(crate) fn closed(&self, record: &ConnectionRecord) {
        if let Some(verdict) = &record.verdict {
            self.decisions
                .inc(verdict.allowed, verdict.policy.as_deref());
        }
        if !record.established {
            let labels = RefusalLabels {
                direction: Value::fixed(direction(record.facts.direction)),
                reason: Value::fixed(record.outcome.as_str()),
            };
            self.refusals.get_or_create(&labels).inc();
        }
    }

    /// Counts an HBONE stream when the record used one.
    pub(crate) fn stream(&self, record: &ConnectionRecord) {
        if let Some(transport) = record.transport.as_deref() {
            self.streams.inc(record.facts.direction, transport);
        }
    }

    pub(crate) fn config_reloaded(&self, success: bool, generation: u64) {
        self.reloads.get(success).inc();
        if success {
            self.generation
                .set(i64::try_from(generation).unwrap_or(i64::MAX));
        }
    }

    pub(crate) fn certificate(
        &self,
        identity: &str,
        not_after_unix: i64,
        rotations: u64,
        failed_rotations: u64,
    ) {
        let labels = IdentityLabels {
            identity: Value::from(identity.to_owned()),
        };
        {
            let mut current = self.identity.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(old) = current.take().filter(|old| *old != labels.identity) {
                self.expiry.remove(&IdentityLabels { identity: old });
            }
            *current = Some(labels.identity.clone());
        }
        self.expiry.get_or_create(&labels).set(not_after_unix);
        // The identity manager owns these counts; taking the larger keeps the counter
        // monotonic whichever order two callers report in.
        self.rotations
            .success
            .inner()
            .fetch_max(rotations, Ordering::Relaxed);
        self.rotations
            .failure
            .inner()
            .fetch_max(failed_rotations, Ordering::Relaxed);
    }

    pub(crate) fn workload_certificate(
        &self,
        identity: &str,
        not_after_unix: i64,
        rotations: u64,
        failed_rotations: u64,
    ) {
        let identity = Value::from(identity.to_owned());
        let labels = IdentityLabels {
            identity: identity.clone(),
        };
        self.expiry.get_or_create(&labels).set(not_after_unix);
        for (result, count) in [("success", rotations), ("failure", failed_rotations)] {
            let labels = IdentityResultLabels {
                identity: identity.clone(),
                result: Value::fixed(result),
            };
            // As for meshd's own: the manager's totals, never lowered.
            (self.workload_rotations.get_or_create(&labels).inner())
                .fetch_max(count, Ordering::Relaxed);
        }
    }

    pub(crate) fn hbone_pool(&self, source: PoolSource) {
        *self
            .pool
            .source
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(source);
    }
}

/// `meshd_authorization_decisions_total`, with the counter of each deciding policy cached so a
/// connection's decision is counted without allocating or hashing its labels.
#[derive(Debug)]
struct Decisions {
    family: Family<AuthzLabels, Counter>,
    /// By policy (`""` for none: policy names are `namespace/name`, never empty).
    allowed: RwLock<foldhash::HashMap<String, Counter>>,
    denied: RwLock<foldhash::HashMap<String, Counter>>,
}

impl Decisions {
    fn inc(&self, allowed: bool, policy: Option<&str>) {
        let cache = if allowed { &self.allowed } else { &self.denied };
        let key = policy.unwrap_or_default();
        if let Some(counter) = cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            counter.inc();
            return;
        }
        let labels = AuthzLabels {
            result: Value::fixed(if allowed { "allow" } else { "deny" }),
            policy: match policy {
                Some(p) if !p.is_empty() => Value::from(p.to_owned()),
                _ => Value::fixed("none"),
            },
        };
        cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.to_owned())
            .or_insert_with(|| self.family.get_or_create_owned(&labels))
            .inc();
    }
}

/// `meshd_hbone_streams_total`, with meshd's two transports resolved up front.
#[derive(Debug)]
struct Streams {
    family: Family<StreamLabels, Counter>,
    /// Inbound h2, inbound h3, outbound h2, outbound h3.
    known: [Counter; 4],
}

impl Streams {
    fn new(family: Family<StreamLabels, Counter>) -> Streams {
        let get = |direction, transport| {
            family.get_or_create_owned(&StreamLabels {
                direction: Value::fixed(direction),
                transport: Value::fixed(transport),
            })
        };
        Streams {
            known: [
                get("inbound", "h2"),
                get("inbound", "h3"),
                get("outbound", "h2"),
                get("outbound", "h3"),
            ],
            family,
        }
    }

    fn inc(&self, dir: Direction, transport: &str) {
        let [in_h2, in_h3, out_h2, out_h3] = &self.known;
        let known = match (dir, transport) {
            (Direction::Inbound, "h2") => in_h2,
            (Direction::Inbound, "h3") => in_h3,
            (Direction::Outbound, "h2") => out_h2,
            (Direction::Outbound, "h3") => out_h3,
            _ => {
                let labels = StreamLabels {
                    direction: Value::fixed(direction(dir)),
                    transport: Value::from(transport.to_owned()),
                };
                self.family.get_or_create(&labels).inc();
                return;
            }
        };
        known.inc();
    }
}

fn direction(direction: Direction) -> &'static str {
    match direction {
        Direction::Inbound => "inbound",
        Direction::Outbound => "outbound",
    }
}

/// Reads the HBONE pool at scrape time; nothing until the daemon hands a source over.
#[derive(Default)]
struct PoolCollector {
    source: RwLock<Option<PoolSource>>,
}

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let pool = {
            let source = self.source.read().unwrap_or_else(PoisonError::into_inner);
            match source.as_ref() {
                Some(read) => read(),
                None => return Ok(()),
            }
        };
        let connections = ConstGauge::new(pool.connections);
        connections.encode(encoder.encode_descriptor(
            "hbone_pool_connections",
            "HBONE connections currently pooled (open and reusable, or draining)",
            None,
            connections.metric_type(),
        )?)?;
        let opened = ConstCounter::new(pool.connections_opened);
        opened.encode(encoder.encode_descriptor(
            "hbone_pool_connections_opened",
            "HBONE connections the pool opened since start",
            None,
            opened.metric_type(),
        )?)
    }
}
