//! meshd as a service: live reload on file change with traffic flowing, systemd's notify
//! protocol on a test socket, and draining. Real meshd processes, each test on its own loopback
//! range (`meshd_integration::loopback`).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use meshd_integration::mesh::{Mesh, Node, Plugin};
use meshd_integration::pair::{Pair, rewrite};
use meshd_integration::resources::Workload;
use meshd_integration::{Meshd, NotifySocket, echo_roundtrip, eventually, http};

const DENY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
";

#[test]
fn file_changes_reload_live_and_allowed_connections_survive() {
    let pair = Pair::new();
    let (_a, _b) = pair.start();
    assert!(pair.allowed());
    // A long-lived allowed connection: it must survive every step that keeps it allowed.
    let mut held = TcpStream::connect((pair.a, 16001)).unwrap();
    assert!(echo_roundtrip(&mut held, b"held").is_some());
    let dir = pair.policies();
    let mut g = pair.generation();

    // Dropped in: a DENY policy.
    std::fs::write(dir.join("deny.yaml"), DENY).unwrap();
    g = pair.expect(g, false, "dropping a DENY policy");
    assert!(
        echo_roundtrip(&mut held, b"x").is_none(),
        "the denied connection was closed"
    );

    // Edited in place: the DENY now names another principal.
    std::fs::write(dir.join("deny.yaml"), DENY.replace("sa/web", "sa/other")).unwrap();
    g = pair.expect(g, true, "editing in place");
    let mut held = TcpStream::connect((pair.a, 16001)).unwrap();
    assert!(echo_roundtrip(&mut held, b"held").is_some());

    // Replaced by rename (an editor's save, a config-management tool's atomic write).
    std::fs::write(
        dir.join(".deny.yaml.tmp"),
        DENY.replace("sa/web", "sa/third"),
    )
    .unwrap();
    std::fs::rename(dir.join(".deny.yaml.tmp"), dir.join("deny.yaml")).unwrap();
    g = pair.expect(g, true, "replacing by rename");

    // Broken: nothing changes, the error is shown, the generation stays.
    std::fs::write(
        dir.join("deny.yaml"),
        "kind: AuthorizationPolicy\nspec: {action: NOPE}\n",
    )
    .unwrap();
    let error = eventually("the rejected reload", || pair.last_reload_error());
    assert!(error.contains("deny.yaml"), "{error}");
    assert_eq!(
        pair.generation(),
        g,
        "a rejected configuration takes no generation"
    );
    assert!(pair.allowed(), "the last good configuration stays in force");

    // Fixed, as a DENY for web again.
    std::fs::write(dir.join("deny.yaml"), DENY).unwrap();
    g = pair.expect(g, false, "fixing the broken file");
    assert_eq!(pair.last_reload_error(), None);

    // Renamed to a name the loader ignores (*.yaml~): as good as deleted.
    std::fs::rename(dir.join("deny.yaml"), dir.join("deny.yaml~")).unwrap();
    g = pair.expect(g, true, "renaming it away");
    std::fs::rename(dir.join("deny.yaml~"), dir.join("deny.yaml")).unwrap();
    g = pair.expect(g, false, "renaming it back");

    // Deleted.
    std::fs::remove_file(dir.join("deny.yaml")).unwrap();
    g = pair.expect(g, true, "deleting it");
    let mut held = TcpStream::connect((pair.a, 16001)).unwrap();
    assert!(echo_roundtrip(&mut held, b"held").is_some());

    // A Kubernetes-style ..data symlink swap in a subdirectory.
    let cm = dir.join("configmap");
    std::fs::create_dir_all(cm.join("..v1")).unwrap();
    std::fs::create_dir_all(cm.join("..v2")).unwrap();
    std::fs::write(
        cm.join("..v1/extra.yaml"),
        DENY.replace("sa/web", "sa/nobody"),
    )
    .unwrap();
    std::fs::write(cm.join("..v2/extra.yaml"), DENY).unwrap();
    std::os::unix::fs::symlink("..v1", cm.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/extra.yaml", cm.join("extra.yaml")).unwrap();
    g = pair.expect(g, true, "adding a ..data directory");
    assert!(
        echo_roundtrip(&mut held, b"still").is_some(),
        "untouched by an allowing reload"
    );
    std::os::unix::fs::symlink("..v2", cm.join("..data_tmp")).unwrap();
    std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
    g = pair.expect(g, false, "the ..data swap");
    std::fs::remove_dir_all(&cm).unwrap();
    g = pair.expect(g, true, "removing the configmap directory");

    // The whole directory deleted: the load fails, the last good configuration stays; when it
    // comes back (with a DENY now) it is watched again.
    let mesh = pair.mesh.config_dir("b");
    let saved = pair.ws.path().join("mesh-b.saved");
    std::fs::rename(&mesh, &saved).unwrap();
    eventually("the failed load of a missing directory", || {
        pair.last_reload_error()
    });
    assert!(pair.allowed(), "still the last good configuration");
    std::fs::write(saved.join("policies/deny.yaml"), DENY).unwrap();
    std::fs::rename(&saved, &mesh).unwrap();
    g = pair.expect(g, false, "the directory's return");
    std::fs::remove_file(mesh.join("policies/deny.yaml")).unwrap();
    pair.expect(g, true, "a change inside the returned directory");
}

#[test]
fn sd_notify_ready_reloading_watchdog_and_stopping() {
    let pair = Pair::new();
    let mut notify = NotifySocket::new(pair.ws.path());
    let mut command = pair.mesh.command("b");
    command
        .env("NOTIFY_SOCKET", &notify.path)
        .env("WATCHDOG_USEC", "200000");
    let b = Meshd::spawn(command);
    let ready = notify.wait_for("READY=1");
    assert!(
        ready.contains("STATUS=serving configuration generation 1"),
        "{ready}"
    );
    notify.wait_for("WATCHDOG=1");
    notify.wait_for("WATCHDOG=1");
    b.signal("HUP");
    let reloading = notify.wait_for("RELOADING=1");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let ready = notify.wait_for("READY=1");
    assert!(ready.contains("generation 2"), "{ready}");
    b.signal("TERM");
    notify.wait_for("STOPPING=1");
}

#[test]
fn quitquitquit_drains_and_exits_zero() {
    let pair = Pair::new();
    let mut b = pair.mesh.start("b");
    let (status, _) = http(SocketAddr::new(pair.b, 15000), "POST", "/quitquitquit").unwrap();
    assert_eq!(status, 200);
    let code = b.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
}

#[test]
fn sigterm_drains_open_connections_and_a_second_sigterm_exits_at_once() {
    let pair = Pair::new();
    let (_a, mut b) = pair.start();
    let mut held = TcpStream::connect((pair.a, 16001)).unwrap();
    assert!(echo_roundtrip(&mut held, b"held").is_some());
    b.signal("TERM");
    b.wait_for_log("draining");
    // The open connection still carries bytes while draining.
    assert!(echo_roundtrip(&mut held, b"during drain").is_some());
    let started = Instant::now();
    b.signal("TERM");
    let code = b.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the second SIGTERM did not wait for the drain"
    );
}

#[test]
fn config_show_names_each_source_and_a_restart_key_change_is_logged() {
    let pair = Pair::new();
    let config = pair.mesh.config("b");
    let out = Command::new(meshd_integration::meshd_bin())
        .args(["config", "show", "--config"])
        .arg(&config)
        .env("MESHD_HBONE_PORT", "15099")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("no {key} in {text}"))
            .to_string()
    };
    assert!(line("hbonePort").contains("15099") && line("hbonePort").contains("environment"));
    assert!(line("listen.admin").ends_with(&format!("# {}", config.display())));
    assert!(line("listen.hboneQuic").ends_with("# default"));

    // A running meshd re-reads the file on reload and says which changed keys need a restart.
    let b = Meshd::start(&config);
    rewrite(&config, "configDir:", "hbonePort: 15099\nconfigDir:");
    b.signal("HUP");
    b.wait_for_log("daemon configuration key changed: it takes effect after a restart");
    b.wait_for_log("key=\"hbonePort\"");
}

/// `meshd run` for `config` under a shell that first sets the open-file limits.
fn spawn_with_nofile(config: &Path, hard: u64, soft: u64) -> Meshd {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!(
            "ulimit -Sn {soft} && ulimit -Hn {hard} && exec \"$0\" run --config \"$1\""
        ))
        .arg(meshd_integration::meshd_bin())
        .arg(config);
    Meshd::spawn(command)
}

/// The soft and hard "Max open files" of a running process.
fn nofile_of(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

// meshd raises its open-file soft limit to the hard limit at start; when the hard limit is
// below what it could need, it says so: with connection_limit maxTotal 1000, 2 directions × 1000
// tunnels × 1 descriptor + 20 HBONE connections + 128 = 2 148, within a hard limit of 8 192;
// without it, the 10 228 it assumes for 10 000 tunnels, above a hard limit of 4 096. (Only lowered limits: raising a hard
// limit may be refused even to root, e.g. in a container.)
#[test]
fn open_file_soft_limit_raised_to_hard_and_a_low_hard_limit_warned() {
    let mut mesh = Mesh::new();
    mesh.shared_dir = true;
    let web = mesh.ip(1);
    mesh.workload(Workload::new("web", web));
    mesh.node(Node::new("a", web, "web"));
    mesh.node(Node::new("limited", web, "web")).plugin(
        Plugin::new("connection_limit")
            .with("maxPerSource", 1000)
            .with("maxTotal", 1000),
    );
    mesh.write();
    let limited = mesh.config("limited");
    let roomy = spawn_with_nofile(&limited, 8192, 512);
    assert_eq!(nofile_of(roomy.pid()), (8192, 8192));
    let log = roomy.wait_for_log("raised the open-file soft limit to the hard limit");
    assert!(log.contains("from=512 to=8192"), "{log}");
    assert!(!log.contains("open-file limit"), "{log}");
    drop(roomy);

    let unlimited = mesh.config("a");
    let tight = spawn_with_nofile(&unlimited, 4096, 512);
    assert_eq!(nofile_of(tight.pid()), (4096, 4096));
    tight.wait_for_log(
        "open-file limit 4096 is below the 10228 descriptors meshd could need (10000 concurrent \
         tunnelled connections, as no connection_limit maxTotal is set: one descriptor each, one \
         per 100 for their HBONE connections)",
    );
}

/// The threads of a running process whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.starts_with(prefix))
        .count()
}

// `workerThreads` sets how many threads run connections; without it meshd runs ztunnel's two
// (one on a one-CPU machine), not one per CPU. Traffic flows either way.
#[test]
fn worker_threads_follow_the_configuration() {
    let pair = Pair::new();
    // Two as ztunnel, one on a machine with one or two CPUs.
    let default_threads = match std::thread::available_parallelism() {
        Ok(cpus) if cpus.get() <= 2 => 1,
        _ => 2,
    };
    let b = pair.mesh.start("b");
    let mut mesh = pair.mesh.clone();
    mesh.node_mut("a").setting("workerThreads", "3");
    mesh.write_node("a");
    let a = mesh.start("a");
    assert!(
        pair.allowed(),
        "traffic through a meshd with 3 worker threads"
    );
    assert_eq!(threads_named(a.pid(), "tokio-rt-worker"), 3);
    assert_eq!(threads_named(b.pid(), "tokio-rt-worker"), default_threads);
}
