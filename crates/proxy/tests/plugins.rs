//! Plugin registry: names, configuration errors, and the rate limit's admission.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_proxy::plugins::{PluginError, PluginRegistry, PluginSpec, RateLimitLayer};

fn spec(name: &str, config: serde_json::Value) -> PluginSpec {
    PluginSpec {
        name: name.into(),
        config,
    }
}

#[test]
fn builtin_plugins_build_from_configuration() {
    let registry = PluginRegistry::builtin();
    let layers = registry
        .build(&[
            spec(
                "connection_limit",
                serde_json::json!({"maxPerSource": 10, "maxTotal": 100}),
            ),
            spec(
                "rate_limit",
                serde_json::json!({"connectionsPerSecond": 5.0, "burst": 10}),
            ),
            spec("rate_limit", serde_json::json!({"connectionsPerSecond": 1})),
        ])
        .expect("builds");
    assert_eq!(layers.len(), 3);
}

#[test]
fn configuration_errors_name_the_plugin_and_position() {
    let registry = PluginRegistry::builtin();
    let err = registry
        .build(&[
            spec("rate_limit", serde_json::json!({"connectionsPerSecond": 1})),
            spec("conection_limit", serde_json::Value::Null),
        ])
        .err();
    assert!(
        matches!(err, Some(PluginError::Unknown { index: 1, .. })),
        "{err:?}"
    );
    let err = registry
        .build(&[spec(
            "connection_limit",
            serde_json::json!({"maxPerSorce": 1}),
        )])
        .expect_err("error");
    assert!(
        err.to_string()
            .starts_with("plugins[0].config: connection_limit: unknown field `maxPerSorce`"),
        "{err}"
    );
    let err = registry
        .build(&[spec(
            "rate_limit",
            serde_json::json!({"connectionsPerSecond": 0}),
        )])
        .expect_err("error");
    assert!(
        err.to_string()
            .contains("connectionsPerSecond must be a positive number"),
        "{err}"
    );
}

#[test]
fn rate_limit_admits_a_burst_then_refuses() {
    let limit = RateLimitLayer::new(0.001, 3, true);
    let admitted = (0..5).filter(|_| limit.admit_for_test("peer")).count();
    assert_eq!(admitted, 3);
    assert!(
        limit.admit_for_test("another peer"),
        "buckets are per source"
    );
}

#[test]
fn rate_limit_scans_at_most_once_per_interval_under_a_flood_of_sources() {
    // 30 000 one-off sources (a scan) used to cost a full scan under the lock per connection
    // once 10 000 were tracked; now pruning runs at most once a second.
    let limit = RateLimitLayer::new(0.001, 1, true);
    let start = std::time::Instant::now();
    for i in 0..30_000 {
        limit.admit_for_test(&format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255));
    }
    let (_, scans) = limit.stats_for_test();
    let allowed = 1 + start.elapsed().as_secs();
    assert!(scans <= allowed, "{scans} scans in {:?}", start.elapsed());
}

#[test]
fn rate_limit_past_max_sources_shares_one_bucket() {
    // Sources past the bound are limited together (fail closed) instead of growing the map.
    let limit = RateLimitLayer::new(0.001, 1, true).with_max_sources(2);
    assert!(limit.admit_for_test("a"));
    assert!(limit.admit_for_test("b"));
    assert!(
        limit.admit_for_test("c"),
        "the overflow bucket has one token"
    );
    assert!(
        !limit.admit_for_test("d"),
        "and shares it with every new source"
    );
    assert!(!limit.admit_for_test("e"));
    assert_eq!(limit.stats_for_test().0, 2, "the map did not grow");
}

#[test]
fn rate_limit_rejects_zero_max_sources() {
    // maxSources: 0 would track nothing and put every source in one bucket by accident.
    let err = PluginRegistry::builtin()
        .build(&[spec(
            "rate_limit",
            serde_json::json!({"connectionsPerSecond": 1, "maxSources": 0}),
        )])
        .expect_err("error");
    assert_eq!(
        err.to_string(),
        "plugins[0].config: rate_limit: maxSources must be at least 1"
    );
}
