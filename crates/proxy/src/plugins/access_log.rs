//! `access_log`: one log line per connection when it ends, under the tracing target `access`
//! (text fields, or one JSON object with `format: json`).

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use serde::Deserialize;
use tower::{Layer, Service};

use super::{PluginLayer, parse_config};
use crate::conn::Conn;
use crate::error::ProxyError;
use crate::layers::ConnService;
use crate::record::ConnectionRecord;

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Format {
    #[default]
    Text,
    Json,
}

/// Configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    format: Format,
}

pub(super) fn factory(value: &serde_json::Value) -> Result<PluginLayer, String> {
    let config: Config = parse_config(value)?;
    Ok(PluginLayer::new(AccessLogLayer {
        json: config.format == Format::Json,
    }))
}

/// Logs each connection when it ends.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer {
    json: bool,
}

impl Layer<ConnService> for AccessLogLayer {
    type Service = AccessLog;

    fn layer(&self, inner: ConnService) -> AccessLog {
        AccessLog {
            inner,
            json: self.json,
        }
    }
}

/// See [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLog {
    inner: ConnService,
    json: bool,
}

impl Service<Conn> for AccessLog {
    type Response = ();
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<(), ProxyError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, conn: Conn) -> Self::Future {
        let record = conn.ctx.record.clone();
        let json = self.json;
        let future = self.inner.call(conn);
        Box::pin(async move {
            let result = future.await;
            // The record layer finishes the shared record only after the plugins return.
            let mut snapshot = record.snapshot();
            snapshot.finish(result.as_ref().err());
            log(&snapshot, json);
            result
        })
    }
}

fn log(r: &ConnectionRecord, json: bool) {
    if json {
        let line = serde_json::to_string(r).unwrap_or_default();
        tracing::info!(target: "access", "{line}");
        return;
    }
    let verdict = r.verdict.as_ref();
    tracing::info!(
        target: "access",
        id = %r.id,
        direction = %r.direction,
        src.addr = %r.source_addr,
        src.identity = r.source_identity.as_deref().unwrap_or("-"),
        dst = %r.destination,
        dst.workload = r.destination_workload.as_deref().unwrap_or("-"),
        dst.identity = r.destination_identity.as_deref().unwrap_or("-"),
        dst.service = r.destination_service.as_deref().unwrap_or("-"),
        policy = verdict.and_then(|v| v.policy.as_deref()).unwrap_or("-"),
        transport = r.transport.as_deref().unwrap_or("-"),
        bytes_in = r.bytes_in,
        bytes_out = r.bytes_out,
        duration_ms = r.duration.as_millis() as u64,
        error = r.error.as_deref().unwrap_or("-"),
        "connection complete"
    );
}
