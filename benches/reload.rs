//! Configuration reload, end to end: how long from a file write until connections are decided
//! by the new policy, and whether decisions wait while a large directory compiles.
//!
//! A bench binary with its own loops rather than criterion: one sample is a whole reload
//! (hundreds of milliseconds, dominated by the debounce window), and the second measurement is
//! a distribution of per-decision latencies, not a mean. Everything runs on the daemon's own
//! path: a real directory, `watch_dir` with the daemon's `DEBOUNCE`, `load_state` in
//! `spawn_blocking`, the new state swapped into a `watch` channel, and the probe decided as the
//! authorization layer decides it (destination looked up among the local workloads, then
//! `engine.decide`). No listener is bound.
//!
//! Baselines in the same run: `load_state` alone for each directory, and decisions with no
//! reload running.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshd_benches::policy_yaml;
use meshd_daemon::MeshdConfig;
use meshd_daemon::load_state;
use meshd_daemon::watcher::{DEBOUNCE, watch_dir};
use meshd_proxy::ProxyState;
use meshd_rbac::{Connection, Destination, Peer};
use tokio::runtime::Runtime;
use tokio::sync::{Notify, watch};

/// Worker threads, as the daemon's runtime has on this 2-core machine (tokio's default is one
/// per core).
const WORKERS: usize = 2;

/// Quiet time before each write, so one iteration's burst never merges with the previous
/// reload's: two debounce windows (the debouncer's own, then the watcher's quiet window) plus
/// slack.
const SETTLE: Duration = Duration::from_millis(500);

/// A write that is never seen means the watcher is broken; fail instead of hanging.
const GIVE_UP: Duration = Duration::from_secs(30);

/// How long decisions are sampled, with and without reloads (each): several 10 000-policy
/// reloads fit in it.
const DECIDE_FOR: Duration = Duration::from_secs(8);

/// The probe's destination: the local WorkloadEntry `app/web`.
const PROBE_DESTINATION: &str = "10.0.0.2:9090";

/// The probe's peer, and the principal the toggle file allows instead of it.
const PROBE_PRINCIPAL: &str = "cluster.local/ns/probe/sa/client";
const OTHER_PRINCIPAL: &str = "cluster.local/ns/probe/sa/someone-else";

const WORKLOAD_YAML: &str = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: web, namespace: app}
spec:
  address: 10.0.0.2
  labels: {app: web, version: v1}
  serviceAccount: web
  ports: {http: 9090}
";

/// The one policy each iteration rewrites: it allows either the probe or someone else. Every
/// other bench policy leaves the probe denied (wrong namespace, principal and port), so the
/// probe is allowed exactly when this file allows it.
fn toggle_yaml(allow_probe: bool) -> String {
    let who = if allow_probe {
        PROBE_PRINCIPAL
    } else {
        OTHER_PRINCIPAL
    };
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: probe-toggle, namespace: app}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ['{who}']}}}}]
    to: [{{operation: {{ports: ['9090']}}}}]
"
    )
}

/// A configuration directory of `policies` AuthorizationPolicies (the toggle plus bench
/// policies), inside a private parent: the watcher also watches the parent, and a shared
/// `/tmp` would trigger reloads of its own.
struct BenchDir {
    _base: tempfile::TempDir,
    config: MeshdConfig,
    toggle: PathBuf,
}

impl BenchDir {
    fn new(policies: usize) -> BenchDir {
        let base = tempfile::tempdir().expect("temp dir");
        let dir = base.path().join("config");
        std::fs::create_dir(&dir).expect("config dir");
        std::fs::write(dir.join("workload.yaml"), WORKLOAD_YAML).expect("write workload");
        let others = policies.saturating_sub(1);
        if others > 0 {
            // Half apply to the probe's destination, half elsewhere, as the rbac bench's
            // 10 000 case.
            let applying = others / 2 + others % 2;
            std::fs::write(
                dir.join("policies.yaml"),
                policy_yaml(applying, others - applying),
            )
            .expect("write policies");
        }
        let toggle = dir.join("probe.yaml");
        std::fs::write(&toggle, toggle_yaml(false)).expect("write toggle");
        let config = MeshdConfig {
            config_dir: dir,
            // Named, so the local-workload check binds no socket.
            local: meshd_proxy::config::LocalWorkloads {
                addresses: Vec::new(),
                workloads: vec!["app/web".to_string()],
            },
            ..MeshdConfig::default()
        };
        BenchDir {
            _base: base,
            config,
            toggle,
        }
    }

    fn load(&self, generation: u64) -> ProxyState {
        load_state(&self.config, generation, &meshd_proxy::MeshState::default())
            .unwrap_or_else(|e| panic!("bench directory does not load: {e}"))
    }
}

/// Whether the probe is allowed, decided as the inbound authorization layer decides it;
/// `None` when the destination is not a local workload.
fn probe_allowed(state: &ProxyState, peer: &Peer, destination: SocketAddr) -> Option<bool> {
    let workload = state.registry.local_workload(destination)?;
    let connection = Connection {
        peer: Some(peer.clone()),
        source_ip: IpAddr::from([10, 9, 9, 9]),
        destination: Destination {
            namespace: workload.namespace().to_string(),
            labels: workload.labels().clone(),
            ip: destination.ip(),
            port: destination.port(),
            bound_policies: Default::default(),
        },
    };
    Some(state.engine.decide(&connection).allowed())
}

fn probe() -> (Peer, SocketAddr) {
    let peer = Peer::from_principal(PROBE_PRINCIPAL).expect("probe principal");
    let destination = PROBE_DESTINATION.parse().expect("probe destination");
    (peer, destination)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The daemon's reload step (`Reloader::reload` without its logs, metrics and systemd
/// notifications): load off the async workers, swap the whole state in.
struct Reloader {
    config: MeshdConfig,
    states: watch::Sender<Arc<ProxyState>>,
    generation: u64,
}

impl Reloader {
    async fn reload(&mut self) {
        let config = self.config.clone();
        let next = self.generation + 1;
        let loaded = tokio::task::spawn_blocking(move || {
            load_state(&config, next, &meshd_proxy::MeshState::default())
        })
        .await
        .unwrap_or_else(|e| panic!("configuration load panicked: {e}"));
        match loaded {
            Ok(state) => {
                self.generation = next;
                self.states.send_replace(Arc::new(state));
            }
            Err(e) => panic!("reload rejected: {e}"),
        }
    }
}

/// One size's reload timings.
struct Reloads {
    /// `load_state` alone.
    load: Vec<Duration>,
    /// Freeing a loaded state alone (whoever holds the last reference pays it).
    free: Vec<Duration>,
    /// Write until the watcher's callback.
    callback: Vec<Duration>,
    /// Write until a state deciding the new way is seen.
    enforced: Vec<Duration>,
}

/// Rewrites the toggle `iterations` times and times each write until the probe's decision
/// flips, with the daemon's reload path between them.
fn write_to_enforced(dir: &BenchDir, iterations: usize) -> Reloads {
    let (load, free) = (0..iterations)
        .map(|i| {
            let start = Instant::now();
            let state = black_box(dir.load(i as u64));
            let loaded = Instant::now();
            drop(state);
            (loaded - start, loaded.elapsed())
        })
        .unzip();
    let runtime = runtime();
    let (callback, enforced) = runtime.block_on(async {
        let (states, updates) = watch::channel(Arc::new(dir.load(1)));
        let changed = Arc::new(Notify::new());
        let fired = Arc::new(Mutex::new(None::<Instant>));
        let _watcher = {
            let (changed, fired) = (changed.clone(), fired.clone());
            watch_dir(&dir.config.config_dir, DEBOUNCE, move || {
                *fired.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                changed.notify_one();
            })
            .expect("watch the bench directory")
        };
        let observer = tokio::spawn(observe(updates, dir.toggle.clone(), fired, iterations));
        // The daemon's serve loop runs on the `block_on` thread; so does this one.
        let mut reloader = Reloader {
            config: dir.config.clone(),
            states,
            generation: 1,
        };
        loop {
            tokio::select! {
                _ = changed.notified() => reloader.reload().await,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {
                    if observer.is_finished() {
                        break;
                    }
                }
            }
        }
        observer.await.expect("observer")
    });
    Reloads {
        load,
        free,
        callback,
        enforced,
    }
}

/// Writes the toggle, alternating its answer, and waits on the watch channel (as the proxy
/// holds it) for a state that decides the probe the new way.
async fn observe(
    mut updates: watch::Receiver<Arc<ProxyState>>,
    toggle: PathBuf,
    fired: Arc<Mutex<Option<Instant>>>,
    iterations: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (peer, destination) = probe();
    let mut callback = Vec::new();
    let mut enforced = Vec::new();
    for i in 0..iterations {
        let allow = i % 2 == 0;
        tokio::time::sleep(SETTLE).await;
        updates.borrow_and_update();
        let start = Instant::now();
        write(&toggle, &toggle_yaml(allow));
        let seen = tokio::time::timeout(GIVE_UP, async {
            loop {
                updates.changed().await.expect("reloader alive");
                let state = updates.borrow_and_update().clone();
                if probe_allowed(&state, &peer, destination) == Some(allow) {
                    return Instant::now();
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("write {i} not enforced within {GIVE_UP:?}"));
        enforced.push(seen - start);
        let fired = *fired.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = fired.filter(|at| *at >= start) {
            callback.push(at - start);
        }
    }
    (callback, enforced)
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Per-decision latencies.
struct Decisions {
    /// The decision alone: current state, destination lookup, `decide`.
    decide: Vec<Duration>,
    /// From the end of one decision to the end of the next: the yield, waiting to be polled
    /// again, and the decision. A worker the OS takes away shows here.
    interval: Vec<Duration>,
    /// The decisions that held the last reference to a replaced state, and so freed it.
    freed: Vec<Duration>,
    reloads: u64,
}

/// Decides the probe in a loop on a worker for `DECIDE_FOR`, with 10 000-policy reloads back
/// to back in `spawn_blocking` when `reloading`.
fn decisions(runtime: &Runtime, dir: &BenchDir, reloading: bool) -> Decisions {
    runtime.block_on(async {
        let (states, updates) = watch::channel(Arc::new(dir.load(1)));
        let decider = tokio::spawn(decide_loop(updates));
        let mut reloader = Reloader {
            config: dir.config.clone(),
            states,
            generation: 1,
        };
        while reloading && !decider.is_finished() {
            reloader.reload().await;
        }
        let (decide, interval, freed) = decider.await.expect("decider");
        Decisions {
            decide,
            interval,
            freed,
            reloads: reloader.generation - 1,
        }
    })
}

async fn decide_loop(
    states: watch::Receiver<Arc<ProxyState>>,
) -> (Vec<Duration>, Vec<Duration>, Vec<Duration>) {
    let (peer, destination) = probe();
    let mut decide = Vec::with_capacity(1 << 20);
    let mut interval = Vec::with_capacity(1 << 20);
    let mut freed = Vec::new();
    let end = Instant::now() + DECIDE_FOR;
    let mut last = Instant::now();
    while last < end {
        let start = Instant::now();
        // As the inbound service does per connection: a clone of the current state, dropped
        // when the connection is decided (the last holder of a replaced state frees it).
        let state = states.borrow().clone();
        black_box(probe_allowed(&state, &peer, destination));
        let last_holder = Arc::strong_count(&state) == 1;
        drop(state);
        let done = Instant::now();
        decide.push(done - start);
        if last_holder {
            freed.push(done - start);
        }
        interval.push(done - last);
        last = done;
        // Other connections' turn.
        tokio::task::yield_now().await;
    }
    (decide, interval, freed)
}

/// The sample at percentile `p` (nearest rank), `ZERO` when empty.
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    match sorted.len() {
        0 => Duration::ZERO,
        n => sorted[((p / 100.0) * (n - 1) as f64).round() as usize],
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn reload_row(what: &str, samples: &[Duration], minus: Duration) {
    let at = |p| percentile(samples, p).saturating_sub(minus);
    println!(
        "  {what:<44} {:>10} {:>10} {:>10}   (n={})",
        ms(at(50.0)),
        ms(at(90.0)),
        ms(at(100.0)),
        samples.len()
    );
}

fn decision_row(what: &str, samples: &[Duration], baseline: &[Duration]) {
    let ratio =
        |p| percentile(samples, p).as_secs_f64() / percentile(baseline, p).as_secs_f64().max(1e-12);
    println!(
        "  {what:<30} {:>10} {:>10} {:>12}   x{:.2} / x{:.2} / x{:.2}   (n={})",
        us(percentile(samples, 50.0)),
        us(percentile(samples, 99.0)),
        us(percentile(samples, 100.0)),
        ratio(50.0),
        ratio(99.0),
        ratio(100.0),
        samples.len()
    );
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "reload bench: {cores} cores (shared, noisy VM), {WORKERS} tokio workers, DEBOUNCE {DEBOUNCE:?}"
    );

    let sizes = [(1, 20), (10_000, 5)];
    let mut large = None;
    for (policies, iterations) in sizes {
        let dir = BenchDir::new(policies);
        let reloads = write_to_enforced(&dir, iterations);
        println!(
            "\n{policies} polic{} ({iterations} writes):",
            if policies == 1 { "y" } else { "ies" }
        );
        println!("  {:<44} {:>10} {:>10} {:>10}", "", "median", "p90", "max");
        reload_row("load_state alone (baseline)", &reloads.load, Duration::ZERO);
        reload_row("freeing a state alone", &reloads.free, Duration::ZERO);
        reload_row(
            "write -> watcher callback",
            &reloads.callback,
            Duration::ZERO,
        );
        reload_row(
            "write -> new policy enforced",
            &reloads.enforced,
            Duration::ZERO,
        );
        reload_row(
            "write -> enforced, minus DEBOUNCE",
            &reloads.enforced,
            DEBOUNCE,
        );
        if policies == 10_000 {
            large = Some(dir);
        }
    }

    let dir = large.expect("the 10 000-policy directory");
    let runtime = runtime();
    let quiet = decisions(&runtime, &dir, false);
    let busy = decisions(&runtime, &dir, true);
    println!(
        "\nprobe decisions on a {WORKERS}-worker runtime, {DECIDE_FOR:?} each; 10 000 policies; ratio = reloading / no reload at p50 / p99 / max:"
    );
    println!("  {:<30} {:>10} {:>10} {:>12}", "", "p50", "p99", "max");
    decision_row("decide, no reload", &quiet.decide, &quiet.decide);
    decision_row(
        &format!("decide, {} reloads", busy.reloads),
        &busy.decide,
        &quiet.decide,
    );
    decision_row("interval, no reload", &quiet.interval, &quiet.interval);
    decision_row(
        &format!("interval, {} reloads", busy.reloads),
        &busy.interval,
        &quiet.interval,
    );
    let over = |samples: &[Duration]| samples.iter().filter(|d| **d > SLOW).count();
    println!(
        "  decisions over {SLOW:?}: {} without reloads, {} with; {} decisions freed a replaced state (max {})",
        over(&quiet.decide),
        over(&busy.decide),
        busy.freed.len(),
        us(percentile(&busy.freed, 100.0)),
    );
}

/// A decision slower than this waited on something other than the engine.
const SLOW: Duration = Duration::from_millis(1);
