//! `meshd_heap_*`: absent until the memory policy runs, then read from it at each scrape. A
//! test binary of its own, because starting the policy is process-wide.

mod exposition;

use exposition::{assert_line, check_exposition, value};
use meshd_metrics::Metrics;

fn encode(metrics: &Metrics) -> String {
    let text = metrics.encode().expect("encode");
    if let Err(e) = check_exposition(&text) {
        panic!("invalid exposition: {e}\n{text}");
    }
    text
}

#[tokio::test]
async fn heap_series_appear_once_the_policy_runs() {
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    let before = encode(&metrics);
    assert!(
        !before.contains("meshd_heap"),
        "no heap series before the policy runs:\n{before}"
    );

    meshd_memory::start().expect("start the memory policy");
    let after = encode(&metrics);
    assert_line(&after, "# TYPE meshd_heap_trims counter");
    assert_line(&after, "# TYPE meshd_heap_free_bytes gauge");
    let stats = meshd_memory::stats().expect("the policy runs");
    assert_eq!(value(&after, "meshd_heap_trims_total"), stats.trims as f64);
    assert_eq!(
        value(&after, "meshd_heap_returned_bytes_total"),
        stats.returned_bytes as f64
    );
    assert!(value(&after, "meshd_heap_free_bytes") >= 0.0);
}
