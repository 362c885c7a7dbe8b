//! The watchdog pings come from the data-plane runtime: while its worker is wedged, they stop.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn a_wedged_runtime_stops_the_watchdog_pings() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let pings = Arc::new(AtomicUsize::new(0));
    let counter = pings.clone();
    // spawn_pinger needs a runtime context; entering one is enough.
    let _pinger = {
        let _entered = runtime.enter();
        meshd_daemon::systemd::spawn_pinger(Duration::from_millis(50), move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
    };
    let count = |window: Duration| {
        let before = pings.load(Ordering::SeqCst);
        std::thread::sleep(window);
        pings.load(Ordering::SeqCst) - before
    };
    let healthy = count(Duration::from_millis(500));
    assert!(healthy >= 4, "a healthy runtime pings: {healthy}");
    // Wedge the only worker: a task that blocks it for 1.5 s.
    runtime.spawn(async { std::thread::sleep(Duration::from_millis(1500)) });
    std::thread::sleep(Duration::from_millis(200));
    let wedged = count(Duration::from_millis(1000));
    assert!(wedged <= 1, "a wedged runtime must not ping: {wedged}");
    std::thread::sleep(Duration::from_millis(500));
    let recovered = count(Duration::from_millis(500));
    assert!(recovered >= 4, "pings resume: {recovered}");
}
