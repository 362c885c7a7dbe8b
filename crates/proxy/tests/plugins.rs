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
            spec("access_log", serde_json::json!({"format": "json"})),
            spec("access_log", serde_json::Value::Null),
        ])
        .expect("builds");
    assert_eq!(layers.len(), 4);
}

#[test]
fn configuration_errors_name_the_plugin_and_position() {
    let registry = PluginRegistry::builtin();
    let err = registry
        .build(&[
            spec("access_log", serde_json::Value::Null),
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
