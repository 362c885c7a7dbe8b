//! `connection_limit`: at most N concurrent connections per source identity (or source IP for
//! plaintext and outbound), and optionally in total.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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
    max_per_source: u32,
    #[serde(default)]
    max_total: Option<u32>,
}

pub(super) fn factory(value: &serde_json::Value) -> Result<PluginLayer, String> {
    let config: Config = parse_config(value)?;
    if config.max_per_source == 0 {
        return Err("maxPerSource must be at least 1".to_string());
    }
    Ok(PluginLayer::new(ConnectionLimitLayer::new(
        config.max_per_source,
        config.max_total,
    )))
}

#[derive(Debug, Default)]
struct Counts {
    per_source: HashMap<String, u32>,
    total: u32,
}

/// Limits concurrent connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimitLayer {
    max_per_source: u32,
    max_total: Option<u32>,
    counts: Arc<Mutex<Counts>>,
}

impl ConnectionLimitLayer {
    /// At most `max_per_source` per source and `max_total` overall.
    pub fn new(max_per_source: u32, max_total: Option<u32>) -> Self {
        ConnectionLimitLayer {
            max_per_source,
            max_total,
            counts: Arc::default(),
        }
    }
}

impl Layer<ChosenService> for ConnectionLimitLayer {
    type Service = ConnectionLimit;

    fn layer(&self, inner: ChosenService) -> ConnectionLimit {
        ConnectionLimit {
            inner,
            config: self.clone(),
        }
    }
}

/// See [`ConnectionLimitLayer`].
#[derive(Clone)]
pub struct ConnectionLimit {
    inner: ChosenService,
    config: ConnectionLimitLayer,
}

/// Releases one slot when the connection ends, however it ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    key: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_source.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_source.remove(&self.key);
            }
        }
    }
}

impl Service<Conn<Upstream>> for ConnectionLimit {
    type Response = Relay;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Relay, ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn<Upstream>) -> Self::Future {
        let key = source_key(&conn);
        let admitted = {
            let mut counts = self.config.counts.lock().unwrap_or_else(|e| e.into_inner());
            let current = counts.per_source.get(&key).copied().unwrap_or(0);
            let total_ok = self.config.max_total.is_none_or(|max| counts.total < max);
            if current < self.config.max_per_source && total_ok {
                counts.per_source.insert(key.clone(), current + 1);
                counts.total += 1;
                Some(Slot {
                    counts: self.config.counts.clone(),
                    key: key.clone(),
                })
            } else {
                None
            }
        };
        let Some(slot) = admitted else {
            let reason = format!("{key} is at its limit of concurrent connections");
            return Box::pin(async move {
                Err(conn
                    .refuse(
                        Refusal::Limited,
                        ProxyError::Limited {
                            plugin: "connection_limit",
                            reason,
                        },
                    )
                    .await)
            });
        };
        let future = self.inner.call(conn);
        Box::pin(async move {
            // The slot is the relay's to release when the connection ends; a refused or
            // failed connection releases it here.
            let mut relay = future.await?;
            relay.hold(slot);
            Ok(relay)
        })
    }
}
