//! The istio_* and meshd_* series, driven by real records through the proxy's RecordHandle
//! (open → established → byte meters → last handle dropped), checked line by line.

mod exposition;

use std::sync::Arc;

use exposition::{Traffic, assert_line, check_exposition, samples};
use meshd_metrics::{Metrics, Options};
use meshd_record::{
    ConnectionRecord, Direction, Facts, Outcome, RecordHandle, Sinks, TraceParent, Verdict,
    WorkloadMeta,
};

const SLEEP_ID: &str = "spiffe://cluster.local/ns/client/sa/sleep";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/apps/sa/httpbin";
const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const FAILED: &str = "istio_tcp_connections_failed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";

fn metrics() -> Metrics {
    Metrics::new(tokio::runtime::Handle::current())
}

fn sinks(metrics: &Metrics) -> Sinks {
    Sinks::new(vec![Arc::new(metrics.clone())])
}

fn encode(metrics: &Metrics) -> String {
    let text = metrics.encode().expect("encode");
    if let Err(e) = check_exposition(&text) {
        panic!("invalid exposition: {e}\n{text}");
    }
    text
}

fn sleep() -> WorkloadMeta {
    WorkloadMeta {
        name: "sleep".into(),
        namespace: "client".into(),
        app: Some("sleep".into()),
        version: None,
    }
}

fn httpbin() -> WorkloadMeta {
    WorkloadMeta {
        name: "httpbin-vm".into(),
        namespace: "apps".into(),
        app: Some("httpbin".into()),
        version: Some("v1".into()),
    }
}

/// An inbound HBONE connection from sleep to httpbin, as the inbound stack fills it.
fn inbound() -> ConnectionRecord {
    let mut facts = Facts::new(
        TraceParent::random(),
        Direction::Inbound,
        "10.0.0.1:40000".parse().expect("addr"),
    );
    facts.source_identity = Some(Arc::new(SLEEP_ID.parse().expect("id")));
    facts.source_workload = Some(Arc::new(sleep()));
    let mut r = ConnectionRecord::new(Arc::new(facts), "10.0.0.2:8080");
    r.mtls = true;
    r.transport = Some("h2".into());
    r
}

/// What the authorization layer adds: the local workload and the verdict.
fn authorize(r: &mut ConnectionRecord, allowed: bool, policy: Option<&str>) {
    r.destination_workload = Some("apps/httpbin-vm".into());
    r.destination_workload_meta = Some(Arc::new(httpbin()));
    r.destination_identity = Some(Arc::new(HTTPBIN_ID.parse().expect("id")));
    r.verdict = Some(Verdict {
        allowed,
        policy: policy.map(str::to_string),
        reason: "test".into(),
    });
}

/// An outbound connection from sleep through the httpbin ServiceEntry, resolved to a tunnel.
fn outbound() -> ConnectionRecord {
    let mut facts = Facts::new(
        TraceParent::random(),
        Direction::Outbound,
        "10.0.0.1:40001".parse().expect("addr"),
    );
    facts.source_identity = Some(Arc::new(SLEEP_ID.parse().expect("id")));
    facts.source_workload = Some(Arc::new(sleep()));
    ConnectionRecord::new(Arc::new(facts), "240.240.0.1:8000")
}

fn resolve_tunnel(r: &mut ConnectionRecord) {
    r.destination_service = Some("apps/httpbin".into());
    r.destination_workload = Some("apps/httpbin-vm".into());
    r.destination_workload_meta = Some(Arc::new(httpbin()));
    r.destination_identity = Some(Arc::new(HTTPBIN_ID.parse().expect("id")));
    r.upstream_addr = Some("10.0.0.2:15008".parse().expect("addr"));
    r.transport = Some("h2".into());
    r.mtls = true;
}

fn inbound_labels() -> Traffic {
    Traffic::new()
        .set("reporter", "destination")
        .source("sleep", "client", "sleep", "latest")
        .set("source_principal", SLEEP_ID)
        .destination("httpbin-vm", "apps", "httpbin", "v1")
        .set("destination_principal", HTTPBIN_ID)
        .set("connection_security_policy", "mutual_tls")
}

fn outbound_labels() -> Traffic {
    Traffic::new()
        .set("reporter", "source")
        .source("sleep", "client", "sleep", "latest")
        .set("source_principal", SLEEP_ID)
        .set("destination_service_name", "httpbin")
        .set("destination_service_namespace", "apps")
        .destination("httpbin-vm", "apps", "httpbin", "v1")
        .set("destination_principal", HTTPBIN_ID)
        .set("connection_security_policy", "mutual_tls")
}

// An allowed inbound mTLS connection: opened at established, bytes visible while it is open
// (received = downstream→upstream), closed with "-" and no failure.
#[tokio::test]
async fn allowed_inbound_mtls() {
    let metrics = metrics();
    let handle = RecordHandle::open(inbound(), sinks(&metrics));
    assert_line(
        &encode(&metrics),
        "istio_tcp_sockets_open{reporter=\"destination\"} 1",
    );
    handle.update(|r| authorize(r, true, Some("apps/allow-sleep")));
    let meters = handle.established();
    assert_eq!(meters.len(), 1);
    meters[0].downstream_bytes(100);
    meters[0].upstream_bytes(1500);
    meters[0].upstream_bytes(500);

    let labels = inbound_labels();
    let open = encode(&metrics);
    assert_line(&open, &labels.line(OPENED, 1));
    assert_line(&open, &labels.line(RECEIVED, 100));
    assert_line(&open, &labels.line(SENT, 2000));
    assert!(samples(&open, CLOSED).is_empty(), "not closed yet");
    assert_line(
        &open,
        "meshd_hbone_streams_total{direction=\"inbound\",transport=\"h2\"} 1",
    );

    drop(meters);
    drop(handle);
    let closed = encode(&metrics);
    assert_line(&closed, &labels.line(CLOSED, 1));
    assert_line(&closed, &labels.line(OPENED, 1));
    assert_line(&closed, &labels.line(RECEIVED, 100));
    assert_line(&closed, &labels.line(SENT, 2000));
    assert!(samples(&closed, FAILED).is_empty());
    assert_line(
        &closed,
        "istio_tcp_sockets_open{reporter=\"destination\"} 0",
    );
    assert_line(
        &closed,
        "meshd_authorization_decisions_total{result=\"allow\",policy=\"apps/allow-sleep\"} 1",
    );
    assert!(samples(&closed, "meshd_connection_refusals_total").is_empty());
}

// An allowed outbound HBONE connection: reporter=source, the service's name and namespace,
// this meshd's identity as source_principal, and bytes *not* flipped (ztunnel flips them only
// in its access log).
#[tokio::test]
async fn allowed_outbound_hbone() {
    let metrics = metrics();
    let handle = RecordHandle::open(outbound(), sinks(&metrics));
    assert_line(
        &encode(&metrics),
        "istio_tcp_sockets_open{reporter=\"source\"} 1",
    );
    handle.update(resolve_tunnel);
    let meters = handle.established();
    meters[0].downstream_bytes(300);
    meters[0].upstream_bytes(4000);

    let labels = outbound_labels();
    let open = encode(&metrics);
    assert_line(&open, &labels.line(OPENED, 1));
    assert_line(&open, &labels.line(RECEIVED, 300));
    assert_line(&open, &labels.line(SENT, 4000));

    drop(meters);
    drop(handle);
    let closed = encode(&metrics);
    assert_line(&closed, &labels.line(CLOSED, 1));
    assert_line(&closed, "istio_tcp_sockets_open{reporter=\"source\"} 0");
    assert_line(
        &closed,
        "meshd_hbone_streams_total{direction=\"outbound\",transport=\"h2\"} 1",
    );
    // Outbound records carry no verdict.
    assert!(samples(&closed, "meshd_authorization_decisions_total").is_empty());
}

// A second connection with the same labels adds to the same series.
#[tokio::test]
async fn same_labels_same_series() {
    let metrics = metrics();
    for bytes in [10, 20] {
        let handle = RecordHandle::open(outbound(), sinks(&metrics));
        handle.update(resolve_tunnel);
        let meters = handle.established();
        meters[0].downstream_bytes(bytes);
    }
    let text = encode(&metrics);
    let labels = outbound_labels();
    assert_line(&text, &labels.line(OPENED, 2));
    assert_line(&text, &labels.line(CLOSED, 2));
    assert_line(&text, &labels.line(RECEIVED, 30));
    assert_eq!(samples(&text, OPENED).len(), 1);
}

// A plaintext outbound connection to a workload without meshd: no principal, security policy
// unknown; a source the registry does not know is all `unknown`.
#[tokio::test]
async fn plaintext_outbound_unknown_source() {
    let metrics = metrics();
    let mut record = outbound();
    Arc::make_mut(&mut record.facts).source_workload = None;
    let handle = RecordHandle::open(record, sinks(&metrics));
    handle.update(|r| {
        r.destination_workload_meta = Some(Arc::new(WorkloadMeta {
            name: "db".into(),
            namespace: "data".into(),
            app: None,
            version: None,
        }));
        r.upstream_addr = Some("10.0.0.9:5432".parse().expect("addr"));
    });
    let meters = handle.established();
    meters[0].downstream_bytes(7);
    drop(meters);
    drop(handle);
    let labels = Traffic::new()
        .set("reporter", "source")
        .destination("db", "data", "db", "latest");
    let text = encode(&metrics);
    assert_line(&text, &labels.line(OPENED, 1));
    assert_line(&text, &labels.line(RECEIVED, 7));
    assert_line(&text, &labels.line(CLOSED, 1));
    // Not a tunnel: no HBONE stream.
    for line in samples(&text, "meshd_hbone_streams_total") {
        assert!(line.ends_with(" 0"), "{line}");
    }
}

// A denied inbound connection: opened with "-" (ztunnel builds its ConnectionResult before
// RBAC), closed and failed with DENY, zero-byte series as ztunnel's; the decision and the
// refusal are meshd's own series. The peer's identity is not a label value: a denied peer
// never gets series of its own (series_bounds.rs).
#[tokio::test]
async fn denied_inbound() {
    let metrics = metrics();
    let handle = RecordHandle::open(inbound(), sinks(&metrics));
    handle.update(|r| authorize(r, false, Some("apps/deny-sleep")));
    handle.fail_with(Outcome::Denied, "denied by apps/deny-sleep");
    drop(handle);

    let labels = inbound_labels().set("source_principal", meshd_metrics::DENIED_PRINCIPAL);
    let text = encode(&metrics);
    assert_line(&text, &labels.line(OPENED, 1));
    assert_line(&text, &labels.clone().flag("DENY").line(CLOSED, 1));
    assert_line(&text, &labels.clone().flag("DENY").line(FAILED, 1));
    assert_line(&text, &labels.line(RECEIVED, 0));
    assert_line(&text, &labels.line(SENT, 0));
    assert_eq!(samples(&text, CLOSED).len(), 1);
    assert_line(
        &text,
        "meshd_authorization_decisions_total{result=\"deny\",policy=\"apps/deny-sleep\"} 1",
    );
    assert_line(
        &text,
        "meshd_connection_refusals_total{direction=\"inbound\",reason=\"denied\"} 1",
    );
    assert_line(&text, "istio_tcp_sockets_open{reporter=\"destination\"} 0");
    // A denied stream was still an HBONE stream that reached meshd's decision.
    assert_line(
        &text,
        "meshd_hbone_streams_total{direction=\"inbound\",transport=\"h2\"} 1",
    );
}

// The peer meshd refuses an outbound tunnel (401): DENY, and source_principal stays this
// meshd's own identity (only an inbound peer's chosen identity is collapsed to "denied").
#[tokio::test]
async fn denied_by_the_peer_keeps_the_own_principal() {
    let metrics = metrics();
    let handle = RecordHandle::open(outbound(), sinks(&metrics));
    handle.update(resolve_tunnel);
    handle.fail_with(Outcome::Denied, "the peer refused the tunnel: 401");
    drop(handle);
    let labels = outbound_labels();
    let text = encode(&metrics);
    assert_line(&text, &labels.line(OPENED, 1));
    assert_line(&text, &labels.clone().flag("DENY").line(FAILED, 1));
}

// A decision without a deciding policy (default allow/deny) is labelled policy="none".
#[tokio::test]
async fn decision_without_policy() {
    let metrics = metrics();
    let handle = RecordHandle::open(inbound(), sinks(&metrics));
    handle.update(|r| authorize(r, true, None));
    drop(handle.established());
    drop(handle);
    assert_line(
        &encode(&metrics),
        "meshd_authorization_decisions_total{result=\"allow\",policy=\"none\"} 1",
    );
}

// The outbound connect fails after the destination was resolved: CONNECT, as ztunnel's
// ConnectionFailure.
#[tokio::test]
async fn unreachable_after_resolution() {
    let metrics = metrics();
    let handle = RecordHandle::open(outbound(), sinks(&metrics));
    handle.update(resolve_tunnel);
    handle.fail_with(Outcome::Unreachable, "connection refused");
    drop(handle);
    let labels = outbound_labels();
    let text = encode(&metrics);
    assert_line(&text, &labels.line(OPENED, 1));
    assert_line(&text, &labels.clone().flag("CONNECT").line(CLOSED, 1));
    assert_line(&text, &labels.clone().flag("CONNECT").line(FAILED, 1));
    assert_line(
        &text,
        "meshd_connection_refusals_total{direction=\"outbound\",reason=\"unreachable\"} 1",
    );
}

// A connection a new configuration closes while open: bytes stay under "-", the close and
// the failure carry DENY.
#[tokio::test]
async fn closed_by_policy_after_established() {
    let metrics = metrics();
    let handle = RecordHandle::open(inbound(), sinks(&metrics));
    handle.update(|r| authorize(r, true, Some("apps/allow-sleep")));
    let meters = handle.established();
    meters[0].downstream_bytes(64);
    handle.fail_with(Outcome::ClosedByPolicy, "denied by the new configuration");
    drop(meters);
    drop(handle);
    let labels = inbound_labels();
    let text = encode(&metrics);
    assert_line(&text, &labels.line(OPENED, 1));
    assert_line(&text, &labels.line(RECEIVED, 64));
    assert_line(&text, &labels.clone().flag("DENY").line(CLOSED, 1));
    assert_line(&text, &labels.clone().flag("DENY").line(FAILED, 1));
    // It was established: not a refusal.
    assert!(samples(&text, "meshd_connection_refusals_total").is_empty());
}

// Refusals before the destination is resolved are ztunnel's "early deny": no istio_tcp_*
// connection series, a refusal by reason, and the socket gauge back to zero.
#[tokio::test]
async fn early_refusals_only_count_as_refusals() {
    let metrics = metrics();
    let own_port = RecordHandle::open(outbound(), sinks(&metrics));
    own_port.fail_with(Outcome::OwnPort, "own port");
    drop(own_port);
    let not_local = RecordHandle::open(inbound(), sinks(&metrics));
    not_local.fail_with(Outcome::NotLocal, "not a local workload");
    drop(not_local);
    let mut plaintext = inbound();
    plaintext.mtls = false;
    plaintext.transport = None;
    let handshake = RecordHandle::open(plaintext, sinks(&metrics));
    handshake.fail_with(Outcome::Handshake, "TLS handshake failed");
    drop(handshake);

    let text = encode(&metrics);
    for name in [OPENED, CLOSED, FAILED, RECEIVED, SENT] {
        assert!(samples(&text, name).is_empty(), "{name}: {text}");
    }
    for (direction, reason) in [
        ("outbound", "own_port"),
        ("inbound", "not_local"),
        ("inbound", "handshake"),
    ] {
        assert_line(
            &text,
            &format!(
                "meshd_connection_refusals_total{{direction=\"{direction}\",reason=\"{reason}\"}} 1"
            ),
        );
    }
    assert_line(&text, "istio_tcp_sockets_open{reporter=\"source\"} 0");
    assert_line(&text, "istio_tcp_sockets_open{reporter=\"destination\"} 0");
}

// A configured cluster id labels the workloads meshd knows.
#[tokio::test]
async fn cluster_id_is_configurable() {
    let metrics = Metrics::with_options(
        tokio::runtime::Handle::current(),
        Options {
            cluster_id: "vm-fleet".into(),
        },
    );
    let handle = RecordHandle::open(outbound(), sinks(&metrics));
    handle.update(resolve_tunnel);
    drop(handle.established());
    let labels = outbound_labels()
        .set("source_cluster", "vm-fleet")
        .set("destination_cluster", "vm-fleet");
    assert_line(&encode(&metrics), &labels.line(OPENED, 1));
}

// Quotes, backslashes and newlines in a label value are escaped; the text still parses.
#[tokio::test]
async fn label_values_are_escaped() {
    let metrics = metrics();
    let mut record = outbound();
    Arc::make_mut(&mut record.facts).source_workload = Some(Arc::new(WorkloadMeta {
        name: "we\"ird\\na\nme".into(),
        namespace: "client".into(),
        app: None,
        version: None,
    }));
    let handle = RecordHandle::open(record, sinks(&metrics));
    handle.update(resolve_tunnel);
    drop(handle.established());
    let text = encode(&metrics);
    assert!(
        text.contains("source_workload=\"we\\\"ird\\\\na\\nme\""),
        "{text}"
    );
}
