//! The series keyed by a peer's SPIFFE ID stay bounded (issue 22, item 6): 100 000 distinct
//! peers, allowed or denied, driven through the metrics sink as the proxy drives it.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod exposition;

use std::sync::Arc;

use exposition::{check_exposition, samples};
use meshd_metrics::{DENIED_PRINCIPAL, MAX_PEER_PRINCIPALS, Metrics, OVERFLOW_PRINCIPAL};
use meshd_record::{
    ConnectionRecord, Direction, Facts, Meters, Outcome, RecordHandle, Sinks, TraceParent, Verdict,
    WorkloadMeta,
};

/// Distinct peer identities driven through the sink.
const PEERS: usize = 100_000;
/// How often (in peers) the exposition is checked on the way.
const CHECK_EVERY: usize = 10_000;
const OPENED: &str = "istio_tcp_connections_opened_total";
const CLOSED: &str = "istio_tcp_connections_closed_total";
const RECEIVED: &str = "istio_tcp_received_bytes_total";
const SENT: &str = "istio_tcp_sent_bytes_total";
/// A peer that keeps coming back while the others pass through.
const REGULAR: &str = "spiffe://cluster.local/ns/client/sa/sleep";

fn peer(i: usize) -> String {
    format!("spiffe://cluster.local/ns/peers/sa/peer-{i}")
}

fn encode(metrics: &Metrics) -> String {
    let text = metrics.encode().unwrap();
    if let Err(e) = check_exposition(&text) {
        panic!("invalid exposition: {e}");
    }
    text
}

/// An inbound mTLS connection from `principal` to the local httpbin, authorized as `allowed`.
fn inbound(principal: &str, allowed: bool) -> ConnectionRecord {
    let mut facts = Facts::new(
        TraceParent::random(),
        Direction::Inbound,
        "10.0.0.1:40000".parse().unwrap(),
    );
    facts.source_identity = Some(Arc::new(principal.parse().unwrap()));
    let mut r = ConnectionRecord::new(Arc::new(facts), "10.0.0.2:8080");
    r.mtls = true;
    r.transport = Some("h2".into());
    r.destination_workload = Some("apps/httpbin-vm".into());
    r.destination_workload_meta = Some(Arc::new(WorkloadMeta {
        name: "httpbin-vm".into(),
        namespace: "apps".into(),
        app: Some("httpbin".into()),
        version: Some("v1".into()),
    }));
    r.destination_identity = Some(Arc::new(
        "spiffe://cluster.local/ns/apps/sa/httpbin".parse().unwrap(),
    ));
    r.verdict = Some(Verdict {
        allowed,
        policy: Some(if allowed { "apps/allow" } else { "apps/deny" }.into()),
        reason: "test".into(),
    });
    r
}

/// Opens an allowed connection from `principal`, moves a few bytes; the caller closes it by
/// dropping what is returned.
fn open(metrics: &Metrics, principal: &str) -> (RecordHandle, Meters) {
    let handle = RecordHandle::open(
        inbound(principal, true),
        Sinks::new(vec![Arc::new(metrics.clone())]),
    );
    let meters = handle.established();
    meters[0].downstream_bytes(10);
    meters[0].upstream_bytes(20);
    (handle, meters)
}

/// A connection from `principal` that the policy denies.
fn deny(metrics: &Metrics, principal: &str) {
    let handle = RecordHandle::open(
        inbound(principal, false),
        Sinks::new(vec![Arc::new(metrics.clone())]),
    );
    handle.fail_with(Outcome::Denied, "denied by apps/deny");
}

/// The `istio_tcp_*` series of the connection families (the socket gauge aside).
fn traffic_series(text: &str) -> usize {
    [
        OPENED,
        CLOSED,
        RECEIVED,
        SENT,
        "istio_tcp_connections_failed_total",
    ]
    .iter()
    .map(|name| samples(text, name).len())
    .sum()
}

/// The value of `name`'s sample whose `source_principal` is `principal`, if there is one.
fn of_principal(text: &str, name: &str, principal: &str) -> Option<u64> {
    let label = format!("source_principal=\"{principal}\"");
    samples(text, name)
        .into_iter()
        .find(|l| l.contains(&label))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse().unwrap())
}

#[tokio::test]
async fn distinct_allowed_peers_keep_series_and_memory_bounded() {
    // One peer's series (opened, closed, received, sent: four) and what its text costs.
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    let empty = encode(&metrics).len();
    drop(open(&metrics, &peer(0)));
    let first = encode(&metrics);
    assert_eq!(traffic_series(&first), 4, "{first}");
    let per_peer = first.len() - empty;
    // The cap's worth of peers, with room for longer peer numbers (peer-0 → peer-100000).
    let max_bytes = empty + per_peer * (MAX_PEER_PRINCIPALS + 1) * 11 / 10;

    let mut regular = 0;
    for i in 1..=PEERS {
        drop(open(&metrics, &peer(i)));
        if i % 100 == 0 {
            drop(open(&metrics, REGULAR));
            regular += 1;
        }
        if i % CHECK_EVERY == 0 {
            let text = encode(&metrics);
            let series = traffic_series(&text);
            assert!(
                series <= 4 * MAX_PEER_PRINCIPALS,
                "{series} series after {i} peers (at most {MAX_PEER_PRINCIPALS} peers' worth)"
            );
            assert!(
                text.len() <= max_bytes,
                "{} bytes of exposition after {i} peers, bound {max_bytes}",
                text.len()
            );
        }
    }

    let text = encode(&metrics);
    // The peer that keeps coming back was never evicted: its counters are exact.
    assert_eq!(of_principal(&text, OPENED, REGULAR), Some(regular));
    assert_eq!(of_principal(&text, SENT, REGULAR), Some(20 * regular));
    // The latest peer has its own series; the first ones made room long ago.
    assert_eq!(of_principal(&text, OPENED, &peer(PEERS)), Some(1));
    assert_eq!(of_principal(&text, OPENED, &peer(1)), None);
    assert_eq!(of_principal(&text, OPENED, OVERFLOW_PRINCIPAL), None);
    // Every decision is still counted, by policy, without the peer.
    let decisions = u64::try_from(PEERS + 1).unwrap() + regular;
    exposition::assert_line(
        &text,
        &format!(
            "meshd_authorization_decisions_total{{result=\"allow\",policy=\"apps/allow\"}} {decisions}"
        ),
    );
}

#[tokio::test]
async fn denied_peers_share_one_series() {
    // A denied peer's identity never becomes a label value: 100 000 of them are one series per
    // family, counted exactly.
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    for i in 1..=PEERS {
        deny(&metrics, &peer(i));
        if i % CHECK_EVERY == 0 {
            let text = encode(&metrics);
            let opened = samples(&text, OPENED);
            assert_eq!(opened.len(), 1, "after {i} denied peers: {opened:?}");
            let count = u64::try_from(i).unwrap();
            assert_eq!(of_principal(&text, OPENED, DENIED_PRINCIPAL), Some(count));
            assert_eq!(
                of_principal(
                    &text,
                    "istio_tcp_connections_failed_total",
                    DENIED_PRINCIPAL
                ),
                Some(count)
            );
        }
    }
    let text = encode(&metrics);
    exposition::assert_line(
        &text,
        &format!(
            "meshd_authorization_decisions_total{{result=\"deny\",policy=\"apps/deny\"}} {PEERS}"
        ),
    );
    exposition::assert_line(
        &text,
        &format!(
            "meshd_connection_refusals_total{{direction=\"inbound\",reason=\"denied\"}} {PEERS}"
        ),
    );
}

#[tokio::test]
async fn open_connections_are_never_evicted_new_peers_overflow() {
    // Every slot held by an open connection: a new peer is counted under "overflow", nobody's
    // live series disappears; once they close, a new peer gets its own series again.
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    let held: Vec<_> = (0..MAX_PEER_PRINCIPALS)
        .map(|i| open(&metrics, &peer(i)))
        .collect();
    let late = peer(MAX_PEER_PRINCIPALS);
    for _ in 0..3 {
        drop(open(&metrics, &late));
    }
    let text = encode(&metrics);
    assert_eq!(of_principal(&text, OPENED, &late), None);
    assert_eq!(of_principal(&text, OPENED, OVERFLOW_PRINCIPAL), Some(3));
    assert_eq!(of_principal(&text, CLOSED, OVERFLOW_PRINCIPAL), Some(3));
    for i in [0, MAX_PEER_PRINCIPALS / 2, MAX_PEER_PRINCIPALS - 1] {
        assert_eq!(of_principal(&text, OPENED, &peer(i)), Some(1), "peer {i}");
        assert_eq!(
            of_principal(&text, RECEIVED, &peer(i)),
            Some(10),
            "peer {i}"
        );
    }
    assert_eq!(samples(&text, OPENED).len(), MAX_PEER_PRINCIPALS + 1);

    // After a sweep that freed nothing, the next is due after an eighth of the cap's new
    // principals (so holding every slot cannot make each new peer pay a sweep): new peers
    // overflow until then, and have their own series again from then on.
    drop(held);
    let retry = MAX_PEER_PRINCIPALS / 8;
    let last = peer(MAX_PEER_PRINCIPALS + retry + 1);
    for i in 1..=retry {
        drop(open(&metrics, &peer(MAX_PEER_PRINCIPALS + i)));
    }
    drop(open(&metrics, &last));
    let text = encode(&metrics);
    assert_eq!(
        of_principal(&text, OPENED, &last),
        Some(1),
        "{retry} overflowed before"
    );
    assert!(samples(&text, OPENED).len() <= MAX_PEER_PRINCIPALS + 1);
    // The evicted are the least recently used: the first peers went, the last ones stayed.
    assert_eq!(of_principal(&text, OPENED, &peer(0)), None);
    assert_eq!(
        of_principal(&text, OPENED, &peer(MAX_PEER_PRINCIPALS - 1)),
        Some(1)
    );
}
