//! A reload re-reads `meshd.yaml` off the task that answers signals: a read that takes its time
//! (a slow or hung filesystem) must not keep SIGTERM waiting. The daemon runs in this process
//! on a one-worker runtime, as on a two-CPU machine; the signals are real ones sent to this
//! process (tokio's handlers, installed by the daemon, take them). One test in this binary, so
//! no other test sees them.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use meshd_daemon::MeshdConfig;
use meshd_daemon::{Exit, RereadFn};

/// How long the re-read of `meshd.yaml` takes.
const SLOW_READ: Duration = Duration::from_secs(4);

fn signal(name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_slow_meshd_yaml_read_on_reload_does_not_hold_up_sigterm() {
    let root = tempfile::tempdir().unwrap();
    let ca = root.path().join("ca");
    meshd_identity::DevCa::init("cluster.local", &ca).unwrap();
    let mesh = root.path().join("mesh");
    std::fs::create_dir(&mesh).unwrap();
    std::fs::write(
        mesh.join("workloads.yaml"),
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: shop}
spec: {address: 127.10.76.1, serviceAccount: web}
",
    )
    .unwrap();
    let text = format!(
        "configDir: {}
identity:
  devCa: {{dir: {}, namespace: shop, serviceAccount: web}}
local: {{workloads: [shop/web]}}
listen:
  hbone: 127.10.76.1:15008
  admin: 127.10.76.1:15000
  metrics: 127.10.76.1:15020
  readiness: 127.10.76.1:15021
",
        mesh.display(),
        ca.display()
    );
    let path = root.path().join("meshd.yaml");
    let config: MeshdConfig = meshd_manifests::parse_text(&path, &text).unwrap();
    let rereads = Arc::new(AtomicUsize::new(0));
    let reread: RereadFn = {
        let (config, rereads) = (config.clone(), rereads.clone());
        Arc::new(move || {
            rereads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(SLOW_READ);
            Ok(config.clone())
        })
    };
    let set_log_level: meshd_admin::LogLevelFn = Arc::new(|level| Ok(level.to_string()));
    let daemon = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let exit = runtime.block_on(meshd_daemon::run(config, set_log_level, reread));
        (exit.unwrap(), Instant::now())
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect("127.10.76.1:15008").is_err() {
        assert!(Instant::now() < deadline, "the daemon never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The serve loop (and its watcher) come right after the listeners.
    std::thread::sleep(Duration::from_millis(500));
    signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rereads.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "the SIGHUP reload never re-read meshd.yaml"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal("TERM");
    let sent = Instant::now();
    let (exit, stopped) = daemon.join().unwrap();
    assert!(matches!(exit, Exit::Stopped), "{exit:?}");
    let took = stopped.duration_since(sent);
    assert!(
        took < SLOW_READ / 2,
        "SIGTERM waited {took:?} for the re-read of meshd.yaml"
    );
}
