//! The metrics sink's cost per connection against no sink, in the same run: one connection's
//! record opened, established (labels resolved, byte meters handed out), two byte-meter calls,
//! and closed when its last handle drops. The target (issue: metrics) is < 1 µs added.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use meshd_metrics::Metrics;
use meshd_record::{
    ConnectionRecord, Direction, Facts, RecordHandle, RecordSink, Sinks, TraceParent, Verdict,
    WorkloadMeta,
};

/// An inbound HBONE connection as the stack fills it by the time it is established.
fn record() -> ConnectionRecord {
    let mut facts = Facts::new(
        TraceParent::random(),
        Direction::Inbound,
        "10.0.0.1:40000".parse().expect("address"),
    );
    facts.source_identity = Some(Arc::new(
        "spiffe://cluster.local/ns/client/sa/sleep"
            .parse()
            .expect("id"),
    ));
    facts.source_workload = Some(Arc::new(WorkloadMeta {
        name: "sleep".into(),
        namespace: "client".into(),
        app: Some("sleep".into()),
        version: Some("v1".into()),
    }));
    let mut r = ConnectionRecord::new(Arc::new(facts), "10.0.0.2:8080");
    r.destination_workload = Some("apps/httpbin".into());
    r.destination_workload_meta = Some(Arc::new(WorkloadMeta {
        name: "httpbin".into(),
        namespace: "apps".into(),
        app: Some("httpbin".into()),
        version: Some("v1".into()),
    }));
    r.destination_identity = Some(Arc::new(
        "spiffe://cluster.local/ns/apps/sa/httpbin"
            .parse()
            .expect("id"),
    ));
    r.mtls = true;
    r.transport = Some("h2".into());
    r.verdict = Some(Verdict {
        allowed: true,
        policy: Some("apps/allow-sleep".into()),
        reason: "allowed by apps/allow-sleep".into(),
    });
    r
}

/// One connection's life as the proxy drives it.
fn connection(record: &ConnectionRecord, sinks: &Sinks) {
    let handle = RecordHandle::open(record.clone(), sinks.clone());
    let meters = handle.established();
    for meter in meters.iter() {
        meter.downstream_bytes(black_box(1500));
        meter.upstream_bytes(black_box(16384));
    }
    drop(meters);
    drop(handle);
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let metrics = Metrics::new(runtime.handle().clone());
    let record = record();
    let none = Sinks::default();
    let with_metrics = Sinks::new(vec![Arc::new(metrics.clone())]);

    let mut group = c.benchmark_group("record_one_connection");
    group.bench_function("no_sink", |b| b.iter(|| connection(&record, &none)));
    group.bench_function("metrics_sink", |b| {
        b.iter(|| connection(&record, &with_metrics))
    });
    // The sink's own work, without the record's clone and lock: what metrics add per
    // connection. The proxy hands established and closed the record marked established.
    let mut done = record.clone();
    done.established = true;
    // The metrics sink ignores the live reference; any will do.
    let live = RecordHandle::detached(record.clone()).reference();
    group.bench_function("metrics_sink_calls_only", |b| {
        b.iter(|| {
            metrics.opened(&record, &live);
            let meter = metrics.established(&done);
            if let Some(meter) = &meter {
                meter.downstream_bytes(black_box(1500));
                meter.upstream_bytes(black_box(16384));
            }
            metrics.closed(&done);
            // An established connection's series counts its close.
            if let Some(meter) = &meter {
                meter.closed(&done);
            }
        })
    });
    group.finish();

    // The series are the ones a scrape shows: keep the registry honest about what it measured.
    let text = metrics.encode().expect("encode");
    assert!(text.contains("istio_tcp_connections_opened_total{reporter=\"destination\""));
}

criterion_group!(benches, bench);
criterion_main!(benches);
