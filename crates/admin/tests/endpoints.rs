//! The endpoints over real sockets, with stand-in handlers: every route, and every refusal.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use meshd_admin::{Endpoint, Handlers, ServeSettings, serve};
use tokio::net::TcpListener;

use support::{fixture, request, start};

#[tokio::test]
async fn readiness_is_500_with_what_is_pending_then_200() {
    // Nothing is ready until every condition is; the body says what is missing.
    let f = fixture();
    let addr = start(Endpoint::Readiness, f.handlers.clone()).await;
    let (status, body) = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(status, 500);
    assert!(body.contains("pending: certificates"), "{body}");
    f.readiness.set_ready("certificates");
    assert_eq!(request(addr, "GET", "/healthz/ready").await.0, 200);
    // A check evaluated per request turns it back to 500 (an expired certificate).
    f.readiness.add_check(|| Some("certificate expired".into()));
    let (status, body) = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(status, 500);
    assert!(body.contains("certificate expired"), "{body}");
}

#[tokio::test]
async fn config_dump_is_json() {
    let f = fixture();
    let addr = start(Endpoint::Admin, f.handlers).await;
    let (status, body) = request(addr, "GET", "/config_dump").await;
    assert_eq!(status, 200);
    assert!(body.contains("content-type: application/json"), "{body}");
    assert!(body.contains("\"generation\": 7"), "{body}");
}

#[tokio::test]
async fn logging_reads_and_changes_the_filter() {
    // A percent-encoded filter arrives decoded.
    let f = fixture();
    let addr = start(Endpoint::Admin, f.handlers).await;
    let (status, body) = request(addr, "GET", "/logging").await;
    assert_eq!(status, 200);
    assert!(body.contains("current log level: info"), "{body}");
    let (status, body) = request(addr, "POST", "/logging?level=meshd%3Ddebug%2Cinfo").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(*f.level.lock().unwrap(), "meshd=debug,info");
}

#[tokio::test]
async fn logging_rejects_a_bad_filter_with_400() {
    // The filter in force stays as it was.
    let f = fixture();
    let addr = start(Endpoint::Admin, f.handlers).await;
    let (status, body) = request(addr, "POST", "/logging?level=nope!").await;
    assert_eq!(status, 400);
    assert!(body.contains("bad log filter"), "{body}");
    assert_eq!(*f.level.lock().unwrap(), "info");
}

#[tokio::test]
async fn quitquitquit_needs_post() {
    // A GET (a crawler, a browser prefetch) never drains the proxy.
    let f = fixture();
    let addr = start(Endpoint::Admin, f.handlers).await;
    assert_eq!(request(addr, "GET", "/quitquitquit").await.0, 405);
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
    assert_eq!(request(addr, "POST", "/quitquitquit").await.0, 200);
    assert_eq!(f.quits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn metrics_on_both_paths_with_the_openmetrics_type() {
    let f = fixture();
    let addr = start(Endpoint::Metrics, f.handlers).await;
    for path in ["/metrics", "/stats/prometheus"] {
        let (status, body) = request(addr, "GET", path).await;
        assert_eq!(status, 200);
        assert!(
            body.contains("content-type: application/openmetrics-text"),
            "{body}"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}

#[tokio::test]
async fn each_listener_serves_only_its_own_routes() {
    // The metrics port (0.0.0.0 by default) must never expose admin actions.
    let f = fixture();
    let metrics = start(Endpoint::Metrics, f.handlers.clone()).await;
    let readiness = start(Endpoint::Readiness, f.handlers.clone()).await;
    let admin = start(Endpoint::Admin, f.handlers).await;
    assert_eq!(request(metrics, "POST", "/quitquitquit").await.0, 404);
    assert_eq!(request(metrics, "GET", "/config_dump").await.0, 404);
    assert_eq!(
        request(readiness, "POST", "/logging?level=debug").await.0,
        404
    );
    assert_eq!(request(admin, "GET", "/metrics").await.0, 404);
    assert_eq!(request(admin, "GET", "/nope").await.0, 404);
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
}

/// The status views and the page, on an address of their own (127.10.59.x: the status tests').
async fn start_status(handlers: Handlers) -> SocketAddr {
    let listener = TcpListener::bind("127.10.59.3:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Endpoint::Admin,
        handlers,
        ServeSettings::default(),
    ));
    addr
}

#[tokio::test]
async fn status_views_answer_json_and_say_what_is_pending_or_unknown() {
    let addr = start_status(fixture().handlers).await;
    let (status, response) = request(addr, "GET", "/status/summary").await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("application/json"), "{response}");
    assert!(response.contains("no-store"), "{response}");
    assert!(response.ends_with("{\"generation\":7}"), "{response}");
    // Starting: 503 with what is pending, as JSON (the client tells the user).
    let (status, response) = request(addr, "GET", "/status/certs").await;
    assert_eq!(status, 503, "{response}");
    assert!(
        response.contains("\"pending\":\"meshd is still starting\""),
        "{response}"
    );
    // An unknown view is a 404 naming it.
    let (status, response) = request(addr, "GET", "/status/secrets").await;
    assert_eq!(status, 404, "{response}");
    assert!(
        response.contains("unknown view \\\"secrets\\\""),
        "{response}"
    );
    // Views are read-only.
    let (status, _) = request(addr, "POST", "/status/summary").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_page_is_served_with_a_policy_that_keeps_it_on_this_origin() {
    let addr = start_status(fixture().handlers).await;
    let (status, response) = request(addr, "GET", "/").await;
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("text/html"), "{response}");
    assert!(response.contains("default-src 'none'"), "{response}");
    assert!(response.contains("connect-src 'self'"), "{response}");
    assert!(response.ends_with("<title>meshd</title>"), "{response}");
    // Only on the admin endpoint.
    let metrics = {
        let listener = TcpListener::bind("127.10.59.3:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            Endpoint::Metrics,
            fixture().handlers,
            ServeSettings::default(),
        ));
        addr
    };
    assert_eq!(request(metrics, "GET", "/").await.0, 404);
}
