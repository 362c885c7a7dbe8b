//! `rate_limit`: new connections per second, as a token bucket per source identity (or source
//! IP), or one bucket for all sources.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use serde::Deserialize;
use tower::{Layer, Service};

use super::{PluginLayer, parse_config, source_key};
use crate::conn::{Conn, Refusal};
use crate::error::ProxyError;
use crate::layers::ConnService;

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    connections_per_second: f64,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default = "per_source_default")]
    per_source: bool,
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
    Ok(PluginLayer::new(RateLimitLayer::new(
        config.connections_per_second,
        burst,
        config.per_source,
    )))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Limits the rate of new connections.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    rate: f64,
    burst: f64,
    per_source: bool,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
}

impl RateLimitLayer {
    /// `rate` connections per second with bursts of `burst`.
    pub fn new(rate: f64, burst: u32, per_source: bool) -> Self {
        RateLimitLayer {
            rate,
            burst: f64::from(burst.max(1)),
            per_source,
            buckets: Arc::default(),
        }
    }

    /// Admission decision for one new connection from `key` (exposed for tests).
    #[doc(hidden)]
    pub fn admit_for_test(&self, key: &str) -> bool {
        self.admit(key.to_string())
    }

    fn admit(&self, key: String) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // Full buckets carry no information; dropping them bounds memory by active sources.
        if buckets.len() > 10_000 {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Layer<ConnService> for RateLimitLayer {
    type Service = RateLimit;

    fn layer(&self, inner: ConnService) -> RateLimit {
        RateLimit {
            inner,
            config: self.clone(),
        }
    }
}

/// See [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimit {
    inner: ConnService,
    config: RateLimitLayer,
}

impl Service<Conn> for RateLimit {
    type Response = ();
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<(), ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn) -> Self::Future {
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
