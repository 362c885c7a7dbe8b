//! The access log: one line per connection when it ends, whatever ended it, under the tracing
//! target `access` at `info` (denials and refusals included, never only at `debug`). It is a
//! [`RecordSink`]: it sees every record, so nothing can end a connection without a line.
//!
//! The line's fields are ztunnel's (`src.addr`, `src.identity`, `dst.addr` — the next hop —,
//! `dst.workload`, …) plus `dst`, the destination as asked (original destination, CONNECT
//! authority, SOCKS5 or listener target), `upstream.local_addr`, the address a plain
//! upstream connection left from (meshd's own, or the client's with
//! `redirect.originalSource`: with `src.addr` the line keeps both), and meshd's decision,
//! deciding policy, reason and response flag. Its shape is the log formatter's (bin/meshd/src/logging.rs): text key=value,
//! one JSON object (`meshd run --log-format json`), or under systemd a journal record whose
//! fields are these (`SRC_ADDR`, `DECISION`, …).

use meshd_record::{ConnectionRecord, Outcome, RecordSink};

/// Logs each connection when it ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLog;

impl RecordSink for AccessLog {
    fn closed(&self, r: &ConnectionRecord) {
        let verdict = r.verdict.as_ref();
        let decision = match (r.outcome, verdict) {
            (Outcome::Allowed, _) => "allow",
            (Outcome::Denied | Outcome::ClosedByPolicy, _) => "deny",
            (_, Some(v)) if v.allowed => "allow",
            _ => "refused",
        };
        let reason = match (r.error.as_deref(), verdict) {
            (Some(error), _) => error,
            (None, Some(v)) => v.reason.as_str(),
            (None, None) => "-",
        };
        let message = match r.outcome {
            Outcome::Allowed => "connection complete",
            Outcome::Denied | Outcome::ClosedByPolicy => "connection denied",
            Outcome::Failed | Outcome::Unreachable => "connection failed",
            _ => "connection refused",
        };
        let src = r.facts.source_workload.as_ref();
        let dst = r.destination_workload_meta.as_ref();
        tracing::info!(
            target: "access",
            trace_id = %r.facts.trace,
            direction = %r.facts.direction,
            src.addr = %r.facts.source,
            src.identity = r.facts.source_identity.as_ref().map_or("-", |i| i.as_str()),
            src.workload = src.map_or("-", |m| m.name.as_str()),
            src.namespace = src.map_or("-", |m| m.namespace.as_str()),
            dst.addr = %r.upstream_addr.map_or_else(|| "-".to_string(), |a| a.to_string()),
            upstream.local_addr = %r.upstream_local.map_or_else(|| "-".to_string(), |a| a.to_string()),
            dst = %r.destination,
            dst.workload = dst.map_or("-", |m| m.name.as_str()),
            dst.namespace = dst.map_or("-", |m| m.namespace.as_str()),
            dst.identity = r.destination_identity.as_ref().map_or("-", |i| i.as_str()),
            dst.service = r.destination_service.as_deref().unwrap_or("-"),
            transport = r.transport.as_deref().unwrap_or("tcp"),
            mtls = r.mtls,
            decision,
            policy = verdict.and_then(|v| v.policy.as_deref()).unwrap_or("-"),
            reason,
            outcome = r.outcome.as_str(),
            response_flags = r.outcome.response_flag(),
            bytes_sent = r.bytes_out,
            bytes_recv = r.bytes_in,
            duration_ms = r.duration.as_millis() as u64,
            "{message}"
        );
    }
}
