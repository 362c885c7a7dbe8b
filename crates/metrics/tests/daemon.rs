//! The series the daemon feeds (configuration, certificate, HBONE pool), the build info, and
//! the process and runtime metrics read at scrape time.

mod exposition;

use exposition::{assert_line, check_exposition, samples, value};
use meshd_metrics::{CONTENT_TYPE, HbonePool, Metrics};

fn encode(metrics: &Metrics) -> String {
    let text = metrics.encode().expect("encode");
    if let Err(e) = check_exposition(&text) {
        panic!("invalid exposition: {e}\n{text}");
    }
    text
}

#[test]
fn content_type_is_ztunnels() {
    assert_eq!(
        CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
}

// istio_build as ztunnel's: component and tag (meshd's version), value 1.
#[tokio::test]
async fn build_info() {
    let text = encode(&Metrics::new(tokio::runtime::Handle::current()));
    assert_line(
        &text,
        &format!(
            "istio_build{{component=\"ztunnel\",tag=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
    );
    assert!(text.ends_with("# EOF\n"));
}

// Reloads count by result; the generation gauge follows the successful ones only.
#[tokio::test]
async fn config_reloads() {
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    metrics.config_reloaded(true, 1);
    metrics.config_reloaded(true, 2);
    metrics.config_reloaded(false, 3);
    let text = encode(&metrics);
    assert_line(&text, "meshd_config_reloads_total{result=\"success\"} 2");
    assert_line(&text, "meshd_config_reloads_total{result=\"failure\"} 1");
    assert_line(&text, "meshd_config_generation 2");
}

// The expiry gauge shows the identity in force only; rotation counters follow the identity
// manager's totals and never go back.
#[tokio::test]
async fn certificate() {
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    let text = encode(&metrics);
    assert_line(
        &text,
        "meshd_certificate_rotations_total{result=\"success\"} 0",
    );
    assert!(samples(&text, "meshd_certificate_expiry_timestamp_seconds").is_empty());

    metrics.certificate("spiffe://td/ns/vm/sa/a", 1_800_000_000, 0, 0);
    metrics.certificate("spiffe://td/ns/vm/sa/a", 1_800_086_400, 2, 1);
    let text = encode(&metrics);
    assert_line(
        &text,
        "meshd_certificate_expiry_timestamp_seconds{identity=\"spiffe://td/ns/vm/sa/a\"} 1800086400",
    );
    assert_line(
        &text,
        "meshd_certificate_rotations_total{result=\"success\"} 2",
    );
    assert_line(
        &text,
        "meshd_certificate_rotations_total{result=\"failure\"} 1",
    );

    // A new identity replaces the old series; stale totals do not lower the counters.
    metrics.certificate("spiffe://td/ns/vm/sa/b", 1_800_100_000, 1, 1);
    let text = encode(&metrics);
    assert_eq!(
        samples(&text, "meshd_certificate_expiry_timestamp_seconds"),
        [
            "meshd_certificate_expiry_timestamp_seconds{identity=\"spiffe://td/ns/vm/sa/b\"} 1800100000"
        ]
    );
    assert_line(
        &text,
        "meshd_certificate_rotations_total{result=\"success\"} 2",
    );
}

// The pool is read at scrape time from the source the daemon hands over.
#[tokio::test]
async fn hbone_pool_read_at_scrape() {
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    assert!(samples(&encode(&metrics), "meshd_hbone_pool_connections").is_empty());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
    let source = count.clone();
    metrics.hbone_pool(move || HbonePool {
        connections: source.load(std::sync::atomic::Ordering::Relaxed),
        connections_opened: 5,
    });
    let text = encode(&metrics);
    assert_line(&text, "meshd_hbone_pool_connections 3");
    assert_line(&text, "meshd_hbone_pool_connections_opened_total 5");
    count.store(1, std::sync::atomic::Ordering::Relaxed);
    assert_line(&encode(&metrics), "meshd_hbone_pool_connections 1");
}

// Process metrics from /proc/self: present and plausible.
#[tokio::test]
async fn process_metrics() {
    let _file = std::fs::File::open("/proc/self/stat").expect("an open file");
    let text = encode(&Metrics::new(tokio::runtime::Handle::current()));
    assert!(value(&text, "process_open_fds") >= 1.0);
    assert!(value(&text, "process_max_fds") >= value(&text, "process_open_fds"));
    let rss = value(&text, "process_resident_memory_bytes");
    assert!(rss > 1024.0 * 1024.0, "rss {rss}");
    assert!(value(&text, "process_virtual_memory_bytes") >= rss);
    assert!(value(&text, "process_cpu_seconds_total") >= 0.0);
    assert!(value(&text, "process_threads") >= 1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let start = value(&text, "process_start_time_seconds");
    // Started within the last hour (boot-time rounding allows a second or two of slack).
    assert!(
        start <= now + 2.0 && start > now - 3600.0,
        "start {start}, now {now}"
    );
    assert_line(&text, "# TYPE process_cpu_seconds counter");
}

// tokio's stable runtime metrics, ztunnel's names, per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_runtime_metrics() {
    let text = encode(&Metrics::new(tokio::runtime::Handle::current()));
    assert_line(&text, "tokio_num_workers 2");
    assert!(value(&text, "tokio_num_alive_tasks") >= 0.0);
    assert!(value(&text, "tokio_global_queue_depth") >= 0.0);
    for name in [
        "tokio_worker_park_count_total",
        "tokio_worker_park_unpark_count_total",
        "tokio_worker_total_busy_duration_seconds_total",
    ] {
        let workers = samples(&text, name);
        assert_eq!(workers.len(), 2, "{name}: {workers:?}");
        assert!(workers[0].starts_with(&format!("{name}{{worker=\"0\"}} ")));
    }
}

// A workload's own certificate: its expiry series beside meshd's own, and its rotations under
// its identity, apart from meshd's (whose counters stay where they were).
#[tokio::test]
async fn workload_certificate() {
    let metrics = Metrics::new(tokio::runtime::Handle::current());
    metrics.certificate("spiffe://td/ns/vm/sa/meshd", 1_800_000_000, 1, 0);
    metrics.workload_certificate("spiffe://td/ns/shop/sa/web", 1_800_000_500, 3, 1);
    metrics.workload_certificate("spiffe://td/ns/shop/sa/web", 1_800_000_900, 2, 1);
    let text = encode(&metrics);
    // A family's series come out in no particular order.
    let mut expiry = samples(&text, "meshd_certificate_expiry_timestamp_seconds");
    expiry.sort_unstable();
    assert_eq!(
        expiry,
        [
            "meshd_certificate_expiry_timestamp_seconds{identity=\"spiffe://td/ns/shop/sa/web\"} 1800000900",
            "meshd_certificate_expiry_timestamp_seconds{identity=\"spiffe://td/ns/vm/sa/meshd\"} 1800000000",
        ]
    );
    // Stale totals (2 after 3) do not lower the counter.
    assert_line(
        &text,
        "meshd_workload_certificate_rotations_total{identity=\"spiffe://td/ns/shop/sa/web\",result=\"success\"} 3",
    );
    assert_line(
        &text,
        "meshd_workload_certificate_rotations_total{identity=\"spiffe://td/ns/shop/sa/web\",result=\"failure\"} 1",
    );
    assert_line(
        &text,
        "meshd_certificate_rotations_total{result=\"success\"} 1",
    );
}
