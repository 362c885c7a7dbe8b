//! The admin endpoint refuses what a web page can send, over real sockets, one refusal per
//! test: a Host that is not this endpoint (DNS rebinding), a state change without the header a
//! form cannot send, a cross-site Origin, cross-site fetch metadata, and a GET that would
//! change something. Each checks that nothing changed.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::Ordering;

use meshd_admin::Endpoint;

use support::{Fixture, fixture, raw, start};

/// The admin endpoint with stand-in handlers; its address.
async fn admin() -> (Fixture, std::net::SocketAddr) {
    let f = fixture();
    let addr = start(Endpoint::Admin, f.handlers.clone()).await;
    (f, addr)
}

#[tokio::test]
async fn a_rebinding_host_is_421_on_every_route() {
    // A page on evil.test whose name now points at 127.0.0.1: reads and actions alike.
    let (f, addr) = admin().await;
    for (method, path) in [
        ("GET", "/config_dump"),
        ("GET", "/status/summary"),
        ("GET", "/"),
        ("GET", "/logging"),
        ("POST", "/quitquitquit"),
        ("POST", "/logging?level=off"),
    ] {
        let (status, body) = raw(
            addr,
            method,
            path,
            "Host: evil.test:15000\r\nX-Meshd-Admin: 1\r\n",
        )
        .await;
        assert_eq!(status, 421, "{method} {path}: {body}");
        assert!(
            body.contains("\"evil.test:15000\" is not this admin endpoint"),
            "{body}"
        );
        assert!(!body.contains("generation"), "{body}");
    }
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
    assert_eq!(*f.level.lock().unwrap(), "info");
}

#[tokio::test]
async fn no_host_is_421() {
    // HTTP/1.0 without Host: nothing says which site it is for, so nothing is answered.
    let (_f, addr) = admin().await;
    let (status, _) = raw(addr, "GET", "/config_dump", "").await;
    assert_eq!(status, 421);
}

#[tokio::test]
async fn localhost_through_a_tunnel_is_served() {
    // ssh -L 8080:localhost:15000: the browser says Host: localhost:8080.
    let (_f, addr) = admin().await;
    let (status, body) = raw(addr, "GET", "/config_dump", "Host: localhost:8080\r\n").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_post_without_the_admin_header_is_403() {
    // What an HTML form sends: a POST with no custom header. Neither action happens.
    let (f, addr) = admin().await;
    let host = format!("Host: {addr}\r\n");
    let (status, body) = raw(addr, "POST", "/quitquitquit", &host).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("X-Meshd-Admin"), "{body}");
    let (status, _) = raw(addr, "POST", "/logging?level=off", &host).await;
    assert_eq!(status, 403);
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
    assert_eq!(*f.level.lock().unwrap(), "info");
    // With it (curl -X POST -H 'X-Meshd-Admin: 1'), both work.
    let with = format!("{host}X-Meshd-Admin: 1\r\n");
    assert_eq!(raw(addr, "POST", "/logging?level=off", &with).await.0, 200);
    assert_eq!(*f.level.lock().unwrap(), "off");
    assert_eq!(raw(addr, "POST", "/quitquitquit", &with).await.0, 200);
    assert_eq!(f.quits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cross_site_origin_is_403_even_with_the_header() {
    // A page elsewhere (or a sibling port on localhost) is not the admin page's origin.
    let (f, addr) = admin().await;
    for origin in ["http://evil.test", "http://localhost:3000", "null"] {
        let headers = format!("Host: localhost:15000\r\nOrigin: {origin}\r\nX-Meshd-Admin: 1\r\n");
        let (status, body) = raw(addr, "POST", "/quitquitquit", &headers).await;
        assert_eq!(status, 403, "{origin}: {body}");
        assert!(body.contains("cross-origin request"), "{body}");
    }
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
    // The page's own origin passes.
    let own = "Host: localhost:15000\r\nOrigin: http://localhost:15000\r\n";
    assert_eq!(raw(addr, "GET", "/status/summary", own).await.0, 200);
}

#[tokio::test]
async fn cross_site_fetch_metadata_is_403() {
    // An <img> or a fetch from another site: Sec-Fetch-Site says so, and no Origin is needed.
    let (f, addr) = admin().await;
    for site in ["cross-site", "same-site"] {
        let headers = format!("Host: {addr}\r\nSec-Fetch-Site: {site}\r\n");
        let (status, body) = raw(addr, "GET", "/config_dump", &headers).await;
        assert_eq!(status, 403, "{site}: {body}");
        assert!(!body.contains("generation"), "{body}");
    }
    let headers = format!("Host: {addr}\r\nSec-Fetch-Site: same-origin\r\n");
    assert_eq!(raw(addr, "GET", "/config_dump", &headers).await.0, 200);
    assert_eq!(f.quits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_get_never_changes_the_log_level() {
    // <img src="http://localhost:15000/logging?level=off">: a GET only reads.
    let (f, addr) = admin().await;
    let host = format!("Host: {addr}\r\nX-Meshd-Admin: 1\r\n");
    let (status, body) = raw(addr, "GET", "/logging?level=off", &host).await;
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("use POST"), "{body}");
    assert_eq!(*f.level.lock().unwrap(), "info");
    let (status, body) = raw(addr, "GET", "/logging", &host).await;
    assert_eq!(status, 200);
    assert!(body.contains("current log level: info"), "{body}");
}

#[tokio::test]
async fn metrics_and_readiness_answer_any_host() {
    // Scraped by whatever name the scraper uses; they only read.
    let f = fixture();
    let metrics = start(Endpoint::Metrics, f.handlers.clone()).await;
    let readiness = start(Endpoint::Readiness, f.handlers.clone()).await;
    let host = "Host: node7.prod.example:15020\r\n";
    assert_eq!(raw(metrics, "GET", "/metrics", host).await.0, 200);
    assert_eq!(raw(readiness, "GET", "/healthz/ready", host).await.0, 500);
}
