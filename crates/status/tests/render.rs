//! Each view rendered from its documented JSON: what a person sees, and what is refused.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_status::render::{Options, RenderError, bytes, duration, render};
use serde_json::json;

const PLAIN: Options = Options {
    width: None,
    color: false,
    last: 20,
};

#[test]
fn workloads_show_policies_and_the_mode_per_port() {
    let value = json!({"generation": 3, "workloads": [
        {"name": "shop/db", "local": true, "identity": "spiffe://cluster.local/ns/shop/sa/db",
         "address": "127.10.50.2", "labels": {"app": "db"}, "protocol": "hbone",
         "policies": [{"policy": "shop/db-allow-web", "action": "ALLOW"}],
         "mtls": [{"port": 0, "mode": "PERMISSIVE", "source": null},
                  {"port": 5432, "mode": "STRICT", "source": "shop/strict"}]},
        {"name": "shop/web", "local": false, "identity": "spiffe://cluster.local/ns/shop/sa/web",
         "address": "127.10.50.1", "labels": {}, "protocol": "hbone", "policies": [], "mtls": []}
    ]});
    let text = render("workloads", &value, PLAIN).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "generation 3");
    assert!(lines[1].starts_with("WORKLOAD  LOCAL  IDENTITY"), "{text}");
    assert!(lines[2].contains("shop/db-allow-web ALLOW"), "{text}");
    assert!(lines[2].ends_with("*:PERMISSIVE 5432:STRICT"), "{text}");
    assert!(lines[3].starts_with("shop/web  no"), "{text}");
    // Columns line up: every row's identity starts where the header's does.
    let column = lines[1].find("IDENTITY").unwrap();
    assert_eq!(lines[2].find("spiffe://"), Some(column), "{text}");
    assert_eq!(lines[3].find("spiffe://"), Some(column), "{text}");
}

#[test]
fn terminal_escapes_in_a_label_print_escaped() {
    // A WorkloadEntry label (and a name, an identity) carrying ESC sequences: clear the screen,
    // cursor home, red text, and a CR that would hide the line under a fake one. On a colour
    // terminal only the table's own colour codes may reach it.
    let value = json!({"generation": 3, "workloads": [
        {"name": "shop/x\x1b]0;pwned\x07", "local": false,
         "identity": "spiffe://cluster.local/ns/shop/sa/x\r", "address": "127.10.50.9",
         "labels": {"app": "\x1b[2J\x1b[H\x1b[31mowned"}, "protocol": "hbone",
         "policies": [], "mtls": []}
    ]});
    for color in [false, true] {
        let text = render("workloads", &value, Options { color, ..PLAIN }).unwrap();
        assert!(
            text.contains("app=\\x1b[2J\\x1b[H\\x1b[31mowned"),
            "{text:?}"
        );
        assert!(text.contains("shop/x\\x1b]0;pwned\\x07"), "{text:?}");
        assert!(text.contains("sa/x\\r"), "{text:?}");
        assert!(!text.contains('\r') && !text.contains('\u{7}'), "{text:?}");
        let codes: Vec<&str> = text.split('\x1b').skip(1).collect();
        assert!(
            codes
                .iter()
                .all(|c| c.starts_with("[1m") || c.starts_with("[0m") || c.starts_with("[2m")),
            "{text:?}"
        );
    }
}

#[test]
fn denials_show_the_last_n_with_policy_and_reason() {
    let denial = |i: u32| {
        json!({"at": format!("2026-11-27T22:00:0{i}Z"), "id": format!("t{i}"), "direction": "inbound",
               "source": "127.10.50.1:40000", "sourceIdentity": "spiffe://cluster.local/ns/shop/sa/web",
               "destination": "127.10.50.2:9000", "outcome": "denied", "policy": "shop/deny-admin",
               "reason": "denied by DENY policy shop/deny-admin"})
    };
    let value = json!({"capacity": 256, "total": 5, "denials": [denial(3), denial(2), denial(1)]});
    let text = render("denials", &value, Options { last: 2, ..PLAIN }).unwrap();
    assert!(
        text.starts_with("5 refused or denied since start, last 2 shown\n"),
        "{text}"
    );
    assert!(
        text.contains("shop/deny-admin  denied by DENY policy shop/deny-admin"),
        "{text}"
    );
    assert!(
        text.contains("22:00:03Z") && !text.contains("22:00:01Z"),
        "{text}"
    );
}

#[test]
fn connections_name_the_peer_and_count_bytes() {
    let value = json!({"connections": [
        {"id": "a", "direction": "outbound", "established": true, "source": "127.10.50.1:5000",
         "sourceIdentity": "spiffe://cluster.local/ns/shop/sa/web", "destination": "127.10.50.2:5432",
         "upstream": "127.10.50.2:15008", "destinationIdentity": "spiffe://cluster.local/ns/shop/sa/db",
         "transport": "h2", "mtls": true, "bytesIn": 2048, "bytesOut": 5, "started": "2026-11-27T22:00:00Z",
         "ageSeconds": 125.5}
    ]});
    let text = render("connections", &value, PLAIN).unwrap();
    assert!(text.starts_with("1 open\n"), "{text}");
    // Outbound, the peer is the destination.
    assert!(
        text.contains("outbound   spiffe://cluster.local/ns/shop/sa/db"),
        "{text}"
    );
    assert!(text.contains("h2+mTLS    2.0 KiB  5 B  2m 5s"), "{text}");
}

#[test]
fn certs_warn_and_list_roots() {
    let value = json!({"identity": "spiffe://cluster.local/ns/shop/sa/web", "serial": "01:02",
        "issuer": "CN=meshd dev CA", "notBefore": "2026-11-27T00:00:00Z", "notAfter": "2026-11-27T23:00:00Z",
        "secondsLeft": -60, "warning": "expired at 2026-11-27T23:00:00Z", "rotations": 2, "failedRotations": 1,
        "trustDomains": [{"trustDomain": "cluster.local", "roots": [{"subject": "CN=root", "notAfter": "2036-01-01T00:00:00Z"}]}]});
    let text = render("certs", &value, PLAIN).unwrap();
    assert!(text.contains("(expired 1m 0s ago)"), "{text}");
    assert!(text.contains("warning     expired at"), "{text}");
    assert!(text.contains("rotations   2 (1 failed)"), "{text}");
    assert!(text.contains("cluster.local  CN=root"), "{text}");
    // Colour on a terminal: the warning in red.
    let coloured = render(
        "certs",
        &value,
        Options {
            color: true,
            ..PLAIN
        },
    )
    .unwrap();
    assert!(coloured.contains("\x1b[31mexpired at"), "{coloured}");
}

#[test]
fn certs_list_every_workload_identity_with_its_expiry() {
    let value = json!({"identity": "spiffe://cluster.local/ns/mesh/sa/meshd", "serial": "01",
        "issuer": "CN=ca", "notBefore": "2026-11-27T00:00:00Z", "notAfter": "2026-11-28T00:00:00Z",
        "secondsLeft": 3600, "warning": null, "rotations": 0, "failedRotations": 0, "trustDomains": [],
        "workloads": [
            {"identity": "spiffe://cluster.local/ns/shop/sa/web", "serial": "0a", "notAfter": "2026-11-28T01:00:00Z",
             "secondsLeft": 7200, "warning": null},
            {"identity": "spiffe://cluster.local/ns/shop/sa/db", "serial": "0b", "notAfter": "2026-11-27T01:00:00Z",
             "secondsLeft": -5, "warning": "expired at 2026-11-27T01:00:00Z"}]});
    let text = render("certs", &value, PLAIN).unwrap();
    assert!(text.contains("WORKLOAD IDENTITY"), "{text}");
    assert!(
        text.contains(
            "spiffe://cluster.local/ns/shop/sa/web  0a      2026-11-28T01:00:00Z (2h 0m left)"
        ),
        "{text}"
    );
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/db"),
        "{text}"
    );
    // Without workload identities, no such table.
    let mut single = value.clone();
    single.as_object_mut().unwrap().remove("workloads");
    let text = render("certs", &single, PLAIN).unwrap();
    assert!(!text.contains("WORKLOAD IDENTITY"), "{text}");
}

#[test]
fn another_shape_is_refused_with_the_view_named() {
    let err = render("summary", &json!({"pending": "x"}), PLAIN).unwrap_err();
    assert!(
        matches!(&err, RenderError::Shape { view, .. } if view == "summary"),
        "{err}"
    );
    assert_eq!(
        render("secrets", &json!({}), PLAIN).unwrap_err(),
        RenderError::UnknownView("secrets".into())
    );
}

#[test]
fn units_read_at_a_glance() {
    assert_eq!(duration(59), "59s");
    assert_eq!(duration(3_661), "1h 1m");
    assert_eq!(duration(2 * 86_400 + 3 * 3_600), "2d 3h");
    assert_eq!(bytes(1023), "1023 B");
    assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
}

#[test]
fn traffic_totals_the_window_and_lists_edges_with_their_verdict() {
    let bucket = |c: u64, d: u64, b: u64| json!({"start": "2026-11-27T22:00:00Z", "connections": c, "denials": d, "bytes": b});
    let edge = |verdict: &str, policy: Option<&str>| {
        json!({"from": "shop/web", "to": "shop/db",
        "verdict": verdict, "connections": 2, "open": 1, "bytes": 6144, "lastSeen": "2026-11-27T22:00:00Z",
        "outcome": null, "policy": policy})
    };
    let value = json!({"bucketSeconds": 10, "buckets": [bucket(2, 0, 6144), bucket(1, 1, 0)],
        "nodes": [{"id": "shop/db", "kind": "local"}, {"id": "shop/web", "kind": "workload"}],
        "edges": [edge("allowed", None), edge("denied", Some("shop/deny-admin"))],
        "maxNodes": 40, "maxEdges": 60, "omittedEdges": 3, "omittedNodes": 2, "forgottenEdges": 0});
    let text = render("traffic", &value, PLAIN).unwrap();
    assert!(
        text.starts_with("last 0 min: 3 connections, 1 refused or denied, 6.0 KiB\n"),
        "{text}"
    );
    assert!(text.contains("shop/web  shop/db  denied"), "{text}");
    assert!(text.contains("shop/deny-admin"), "{text}");
    assert!(
        text.contains("3 more edges and 2 more nodes not shown"),
        "{text}"
    );
}
