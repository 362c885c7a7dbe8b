//! `rate_limit`: new connections per second, as a token bucket per source identity (or source
//! IP), or one bucket for all sources.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Deserialize;
use tower::{Layer, Service};

use super::{PluginLayer, parse_config, source_key};
use crate::conn::{Conn, Refusal, Upstream};
use crate::error::ProxyError;
use crate::layers::ChosenService;
use crate::relay::Relay;

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    connections_per_second: f64,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default = "per_source_default")]
    per_source: bool,
    #[serde(default = "max_sources_default")]
    max_sources: usize,
}

fn max_sources_default() -> usize {
    MAX_SOURCES
}

fn per_source_default() -> bool {
    true
}

pub(super) fn factory(value: &serde_json::Value) -> Result<PluginLayer, String> {
    let config: Config = parse_config(value)?;
    if !(config.connections_per_second > 0.0 && config.connections_per_second.is_finite()) {
        return Err("connectionsPerSecond must be a positive number".to_string());
    }
    let burst = config
        .burst
        .unwrap_or_else(|| config.connections_per_second.ceil().max(1.0) as u32);
    if config.max_sources == 0 {
        return Err("maxSources must be at least 1".to_string());
    }
    Ok(PluginLayer::new(
        RateLimitLayer::new(config.connections_per_second, burst, config.per_source)
            .with_max_sources(config.max_sources),
    ))
}

/// Tracked sources above which full buckets are dropped (they carry no information).
const PRUNE_ABOVE: usize = 10_000;
/// At most one pruning scan per interval, so a flood of sources costs amortised O(1) per
/// connection instead of a full scan under the lock for each one.
const PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// Default bound on tracked sources: past it, new sources share one overflow bucket and are
/// limited together (fail closed) instead of growing the map.
const MAX_SOURCES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            updated: now,
        }
    }

    /// Refills for the time elapsed and takes a token if there is one.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> bool {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Debug)]
struct Buckets {
    by_source: HashMap<String, Bucket>,
    overflow: Bucket,
    next_prune: Instant,
    scans: u64,
}

/// Limits the rate of new connections.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    rate: f64,
    burst: f64,
    per_source: bool,
    max_sources: usize,
    buckets: Arc<Mutex<Buckets>>,
}

impl RateLimitLayer {
    /// `rate` connections per second with bursts of `burst`.
    pub fn new(rate: f64, burst: u32, per_source: bool) -> Self {
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        RateLimitLayer {
            rate,
            burst,
            per_source,
            max_sources: MAX_SOURCES,
            buckets: Arc::new(Mutex::new(Buckets {
                by_source: HashMap::new(),
                overflow: Bucket::full(burst, now),
                next_prune: now,
                scans: 0,
            })),
        }
    }

    /// Tracks at most `max` sources; new sources past it share one bucket.
    pub fn with_max_sources(mut self, max: usize) -> Self {
        self.max_sources = max.max(1);
        self
    }

    /// Admission decision for one new connection from `key` (exposed for tests).
    #[doc(hidden)]
    pub fn admit_for_test(&self, key: &str) -> bool {
        self.admit(key.to_string())
    }

    /// (tracked sources, pruning scans so far), for tests.
    #[doc(hidden)]
    pub fn stats_for_test(&self) -> (usize, u64) {
        let buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        (buckets.by_source.len(), buckets.scans)
    }

    fn admit(&self, key: String) -> bool {
        let now = Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        let mut guard = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let buckets = &mut *guard;
        if buckets.by_source.len() > PRUNE_ABOVE && now >= buckets.next_prune {
            buckets.by_source.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            buckets.next_prune = now + PRUNE_INTERVAL;
            buckets.scans += 1;
        }
        let tracked = buckets.by_source.len();
        let bucket = match buckets.by_source.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(_) if tracked >= self.max_sources => &mut buckets.overflow,
            Entry::Vacant(e) => e.insert(Bucket::full(burst, now)),
        };
        bucket.take(rate, burst, now)
    }
}

impl Layer<ChosenService> for RateLimitLayer {
    type Service = RateLimit;

    fn layer(&self, inner: ChosenService) -> RateLimit {
        RateLimit {
            inner,
            config: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit {
    inner: ChosenService,
    config: RateLimitLayer,
}

impl Service<Conn<Upstream>> for RateLimit {
    type Response = Relay;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Relay, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<Upstream>) -> Self::Future {
        let key = if self.config.per_source {
            source_key(&conn)
        } else {
            String::new()
        };
        if self.config.admit(key.clone()) {
            return self.inner.call(conn);
        }
        let reason = if key.is_empty() {
            "connection rate limit reached".to_string()
        } else {
            format!("{key} exceeded its connection rate limit")
        };
        Box::pin(async move {
            Err(conn
                .refuse(
                    Refusal::Limited,
                    ProxyError::Limited {
                        plugin: "rate_limit",
                        reason,
                    },
                )
                .await)
        })
    }
}
