//! meshd's daemon lifecycle: start, reload, drain, stop, as one small module a test can drive
//! without a process. `bin/meshd` parses flags, installs logging and calls [`run`].
//!
//! Start: load the configuration directory and check what only a person can fix (an error is
//! fatal: [`Exit::Config`]), open the operator endpoints (readiness answers 500 with what is
//! pending from the first moment), wait for a usable certificate, bind the proxy's listeners
//! (waiting while a port is in use), report ready. What time or another agent cures is waited
//! for, not fatal (module `startup`). Reload: once the directory is still (no file open for
//! writing, nothing changed across a quiet window: [`stable`]), a new snapshot is built off to
//! the side and swapped whole; a bad one changes nothing and is reported (log, metrics,
//! `/config_dump`). Drain: on SIGTERM, SIGINT or `POST /quitquitquit`, stop accepting and give
//! open connections [`DRAIN`] to finish.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod control_plane;
mod fdlimit;
mod file_layer;
mod identities;
mod operator;
mod reload;
pub mod schema;
pub mod settings;
pub mod stable;
mod startup;
pub mod systemd;
pub mod watcher;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_admin::{Endpoint, LogLevelFn, Readiness};
use meshd_manifests::{LoadError, LoadOptions, Snapshot, load_dir};
use meshd_metrics::{HbonePool, Metrics};
use meshd_proxy::AccessLog;
use meshd_proxy::plugins::{PluginError, PluginRegistry};
use meshd_proxy::record::Sinks;
use meshd_proxy::strict_without_capture;
use meshd_proxy::{Proxy, ProxyState, StartError, local_predicate};
use meshd_workloadapi::MeshState;

pub use crate::control_plane::{STATE_FILE, read_state};
use crate::schema::CheckError;
pub use crate::schema::MeshdConfig;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};

use crate::operator::{Operated, ready_line, start_operator_endpoints, watch_certificates};
use crate::reload::{Reloader, Trigger};
use crate::stable::{MAX_WAIT, QUIET, Stability};
use crate::startup::{Failure, Pauses, Waiting, port_in_use, until_ready};
use crate::watcher::{DEBOUNCE, watch_dir};

/// How long open connections get to finish on shutdown.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Re-reads the daemon configuration file (and its environment and flag layers).
pub type RereadFn = Arc<dyn Fn() -> Result<MeshdConfig, String> + Send + Sync>;

/// How the daemon ended.
#[derive(Debug)]
pub enum Exit {
    /// Stopped on request after draining.
    Stopped,
    /// The configuration cannot run and only a person can fix it (files, an unsafe listener,
    /// an identity path that can never exist, a port that is not ours): exit 78 (EX_CONFIG).
    Config(StartupError),
}

/// Why start-up ended with [`Exit::Config`]: what only a person can fix. Each variant keeps
/// the error it comes from as its source; the message is what `meshd` prints.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartupError {
    /// The configuration directory does not load.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The daemon settings are unusable (listeners, the admin address).
    #[error(transparent)]
    Settings(#[from] CheckError),
    /// A configured plugin is unknown or its configuration invalid.
    #[error(transparent)]
    Plugins(#[from] PluginError),
    /// The identity cannot start: a path that can never exist, or files no agent will mend.
    #[error("identity: {0}")]
    Identity(#[source] meshd_identity::Error),
    /// A port cannot be bound for a reason other than another process holding it.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What was to listen there.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The operator endpoints' runtime could not start.
    #[error("cannot start the operator endpoints: {0}")]
    Operator(#[source] std::io::Error),
    /// An operator endpoint could not serve its bound listener.
    #[error("cannot serve {addr} ({endpoint:?}): {source}")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// Which endpoint.
        endpoint: Endpoint,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy could not bind its listeners or start.
    #[error(transparent)]
    Proxy(#[from] StartError),
    /// The control-plane clients cannot start (settings, the VM's address).
    #[error("control plane: {0}")]
    ControlPlane(String),
    /// `redirect.originalSource` is on, but this kernel or this process's capabilities do
    /// not allow connecting from a client's address.
    #[error(
        "redirect.originalSource: true, but meshd cannot connect from its clients' addresses: {0}; grant CAP_NET_ADMIN (under systemd: the drop-in /usr/share/doc/meshd/examples/original-source.conf) or set redirect.originalSource: false"
    )]
    OriginalSource(#[source] std::io::Error),
}

/// Why the daemon could not run at all (signals, the runtime).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Installing a signal handler failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(#[from] std::io::Error),
}

/// Loads the configuration directory into a snapshot, logging its warnings.
pub fn load_snapshot(config: &MeshdConfig) -> Result<Snapshot, LoadError> {
    let options = LoadOptions {
        root_namespace: config.root_namespace.clone(),
    };
    let snapshot = load_dir(&config.config_dir, &options)?;
    for warning in &snapshot.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!("configuration loaded: {}", snapshot.summary());
    Ok(snapshot)
}

/// Builds the proxy's state (generation `generation`) from the directory's snapshot and what
/// istiod sent (empty without a control plane), logging what it warns about.
pub fn build_state(
    config: &MeshdConfig,
    snapshot: &Snapshot,
    mesh: &MeshState,
    generation: u64,
) -> ProxyState {
    let proxy = config.proxy();
    let state = ProxyState::build(
        snapshot,
        mesh,
        &config.trust_domain,
        generation,
        local_predicate(&proxy),
    )
    .with_namespace_trust_domains(namespace_trust_domains(config));
    for warning in strict_without_capture(&proxy, &state) {
        tracing::warn!("{warning}");
    }
    state
}

/// meshd.yaml's `trustDomains` as the proxy reads it.
fn namespace_trust_domains(config: &MeshdConfig) -> std::collections::BTreeMap<String, String> {
    (config.trust_domains.iter())
        .map(|(namespace, td)| (namespace.clone(), td.to_string()))
        .collect()
}

/// The state for istiod's new state `mesh` (generation `generation`), built from `previous`
/// by what changed in istiod's state since it (the directory's snapshot is `previous`'s),
/// logging what it warns about.
pub fn update_state(
    config: &MeshdConfig,
    previous: &ProxyState,
    mesh: &MeshState,
    generation: u64,
) -> ProxyState {
    let proxy = config.proxy();
    let state = previous.with_mesh(mesh, generation, local_predicate(&proxy));
    for warning in strict_without_capture(&proxy, &state) {
        tracing::warn!("{warning}");
    }
    state
}

/// Loads the directory into a new state (generation `generation`) beside istiod's `mesh`.
pub fn load_state(
    config: &MeshdConfig,
    generation: u64,
    mesh: &MeshState,
) -> Result<ProxyState, LoadError> {
    let snapshot = load_snapshot(config)?;
    Ok(build_state(config, &snapshot, mesh, generation))
}

/// Binds the proxy's listeners, waiting with backoff while a port is in use, and starts
/// serving with `identity`. A failed attempt keeps none of the listeners, so nothing is
/// accepted before meshd is ready.
async fn start_proxy(
    config: &MeshdConfig,
    identities: meshd_identity::IdentitySet,
    updates: watch::Receiver<Arc<ProxyState>>,
    sinks: Sinks,
    waiting: &Waiting,
    reserved: &[u16],
) -> Result<Proxy, StartupError> {
    let config = &config.proxy();
    let listeners = until_ready(waiting, Pauses::bind(), || async move {
        Proxy::bind(config).await.map_err(|e| match &e {
            StartError::Bind { source, .. } if port_in_use(source) => Failure::Wait(e.into()),
            _ => Failure::Fatal(e.into()),
        })
    })
    .await?;
    Proxy::start_on(
        listeners,
        config,
        identities,
        updates,
        sinks,
        &PluginRegistry::builtin(),
        reserved,
    )
    .await
    .map_err(StartupError::from)
}

/// Reads the configuration directory again after start-up waited: it was read before the
/// wait and is watched only once serving starts, so a change made meanwhile would otherwise be
/// missed until the next one. Nothing was served yet, so the new state keeps generation 1; a
/// directory that no longer loads changes nothing but the reported error, as a reload.
fn reread_after_waiting(
    config: &MeshdConfig,
    mesh: &MeshState,
    states: &watch::Sender<Arc<ProxyState>>,
    operated: &Operated,
) {
    match load_state(config, 1, mesh) {
        Ok(state) => {
            states.send_replace(Arc::new(state));
        }
        Err(e) => {
            tracing::error!(
                "configuration changed while meshd waited and is now rejected, keeping the one read at start: {e}"
            );
            *operated
                .last_reload_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        }
    }
}

/// The signals the daemon answers. Installed first: SIGHUP's default action would kill a
/// meshd still starting.
struct Signals {
    hangup: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// SIGTERM or SIGINT.
    async fn stop(&mut self) {
        stop(&mut self.terminate, &mut self.interrupt).await;
    }
}

async fn stop(
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) {
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

/// Resolves when istiod's state changed; never without a control plane, or once its client
/// is gone (the daemon is ending).
async fn mesh_changed(mesh: &mut Option<watch::Receiver<Arc<MeshState>>>) -> Option<()> {
    match mesh {
        Some(rx) => match rx.changed().await {
            Ok(()) => Some(()),
            Err(_) => {
                *mesh = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A started daemon: what the serve loop needs.
struct Running {
    config: MeshdConfig,
    reread: RereadFn,
    proxy: Proxy,
    states: watch::Sender<Arc<ProxyState>>,
    operated: Arc<Operated>,
    metrics: Metrics,
    quit: Arc<Notify>,
    /// Notified by the directory watcher once per change.
    changed: Arc<Notify>,
    /// Armed before meshd reports ready, so a change made right after is not missed.
    watcher: Option<watcher::DirWatcher>,
    /// istiod's clients, when meshd joins a mesh; their state changes rebuild the proxy's.
    control: Option<control_plane::ControlPlane>,
    _identity: identities::Identities,
    /// The admin, metrics and readiness endpoints' thread: they answer until the daemon ends.
    _operator: meshd_admin::OperatorRuntime,
}

/// Runs the daemon until it is asked to stop.
pub async fn run(
    config: MeshdConfig,
    set_log_level: LogLevelFn,
    reread: RereadFn,
) -> Result<Exit, DaemonError> {
    let mut signals = Signals::install()?;
    let running = tokio::select! {
        started = start(config, set_log_level, reread) => match started {
            Ok(running) => running,
            Err(exit) => return Ok(exit),
        },
        () = signals.stop() => return Ok(Exit::Stopped),
    };
    Ok(running.serve(signals).await)
}

/// Start: configuration, operator endpoints, certificate, proxy; `Err` is how it ended.
async fn start(
    config: MeshdConfig,
    set_log_level: LogLevelFn,
    reread: RereadFn,
) -> Result<Running, Exit> {
    let snapshot = load_snapshot(&config).map_err(|e| Exit::Config(e.into()))?;
    // What only a person can fix ends start-up before anything is waited for.
    startup::check_config(&config).map_err(Exit::Config)?;
    fdlimit::raise(&config);
    let cp_metrics = config
        .control_plane
        .as_ref()
        .map(|_| control_plane::ControlPlaneMetrics::default());
    let metrics = Metrics::with_extra(
        tokio::runtime::Handle::current(),
        metrics_options(&config),
        |registry| {
            if let Some(cp) = &cp_metrics {
                cp.register(registry);
            }
        },
    );
    metrics.config_reloaded(true, 1);
    let mut pending = vec!["certificates", "listeners"];
    if config.control_plane.is_some() {
        pending.push(control_plane::READY_CONDITION);
    }
    let readiness = Readiness::new(pending);
    let waiting = Waiting::new(&readiness);
    let _extend = waiting.extend_start_timeout();
    let operated = Arc::new(Operated::default());
    let quit = Arc::new(Notify::new());
    let operator = start_operator_endpoints(
        &config,
        operated.clone(),
        set_log_level,
        readiness.clone(),
        quit.clone(),
        metrics.clone(),
        &waiting,
    )
    .await
    .map_err(Exit::Config)?;
    let mut cas = control_plane::CaClients::default();
    if let Some(cp) = &config.control_plane {
        cas.own = control_plane::start_ca(cp, &config.identity, &waiting)
            .await
            .map_err(Exit::Config)?;
    }
    let identity = identities::start_own(&config, &waiting)
        .await
        .map_err(Exit::Config)?;
    let _ = operated.identity.set(identity.handle());
    let _ = operated.rotations.set(identity.stats());
    if let Some(cp) = &config.control_plane {
        cas.workloads = control_plane::start_workload_cas(cp, &config, &waiting)
            .await
            .map_err(Exit::Config)?;
    }
    let workloads = identities::start_workloads(&config, &waiting)
        .await
        .map_err(Exit::Config)?;
    let identity = identities::Identities {
        own: identity,
        workloads,
    };
    let _ = operated.identities.set(identity.set());
    readiness.set_ready("certificates");
    watch_certificates(&identity.own, &identity.workloads, &readiness, &metrics);
    let control = match (&config.control_plane, cp_metrics) {
        (Some(cp), Some(cp_metrics)) => Some(
            control_plane::start_xds(
                cp,
                identity.own.handle(),
                cas,
                &readiness,
                &waiting,
                cp_metrics,
            )
            .await
            .map_err(Exit::Config)?,
        ),
        _ => None,
    };
    if let Some(control) = &control {
        readiness.add_note(control.readiness_note());
        let _ = operated.control_plane.set(control.view());
    }
    let mesh = control
        .as_ref()
        .map(|c| c.mesh.borrow().clone())
        .unwrap_or_default();
    let state = build_state(&config, &snapshot, &mesh, 1);
    let local: Vec<String> = state
        .registry
        .local_workloads()
        .map(|w| w.key().to_string())
        .collect();
    let (states, updates) = watch::channel(Arc::new(state));
    let _ = operated.states.set(updates.clone());
    // The access log, the metrics and the operator views are consumers of one stream of
    // connection records.
    let sinks = Sinks::new(vec![
        Arc::new(AccessLog),
        Arc::new(metrics.clone()),
        Arc::new(operated.live.clone()),
    ]);
    // The operator ports as bound (a port 0 resolved) are meshd's own too.
    let operator_ports: Vec<u16> = operator.bound().iter().map(|(_, a)| a.port()).collect();
    let proxy = start_proxy(
        &config,
        identity.set(),
        updates,
        sinks,
        &waiting,
        &operator_ports,
    )
    .await
    .map_err(Exit::Config)?;
    if waiting.waited() {
        reread_after_waiting(&config, &mesh, &states, &operated);
    }
    readiness.set_ready("listeners");
    let client = proxy.hbone_client().clone();
    metrics.hbone_pool(move || HbonePool {
        connections: client.pooled_connections() as u64,
        connections_opened: client.connections_opened(),
    });
    tracing::info!(
        identity = %identity.own.handle().current().id(),
        workload_identities = identity.workloads.managers().count(),
        hbone = %proxy.addrs().hbone,
        local_workloads = ?local,
        "meshd ready"
    );
    // Watch before saying ready: a supervisor (or a test) that writes a file as soon as meshd
    // is ready must see it applied. A change made in between waits as a notification.
    let changed = Arc::new(Notify::new());
    let watcher = {
        let changed = changed.clone();
        watch_dir(&config.config_dir, DEBOUNCE, move || changed.notify_one())
            .inspect_err(|e| tracing::warn!("{e}: reload on SIGHUP only"))
            .ok()
    };
    // What start-up alone needed (the parsers, the policy compiler, the loaders) is most of an
    // idle meshd's resident memory: clean pages of its binary, which the kernel reads back from
    // the page cache if they are touched again (crates/memory/src/pages.rs). Before the ready
    // line, so nothing is in flight while they go.
    let released = meshd_memory::release_start_up_pages();
    tracing::debug!(bytes = released, "start-up pages released");
    // A machine-readable line for supervisors and tests.
    println!("{}", ready_line(proxy.addrs(), operator.bound()));
    systemd::ready(1);
    Ok(Running {
        config,
        reread,
        proxy,
        states,
        operated,
        metrics,
        quit,
        changed,
        watcher,
        control,
        _identity: identity,
        _operator: operator,
    })
}

/// How the metrics label what records do not say: istiod's cluster id when meshd joins one.
fn metrics_options(config: &MeshdConfig) -> meshd_metrics::Options {
    match &config.control_plane {
        Some(cp) => meshd_metrics::Options {
            cluster_id: cp.cluster_id.clone(),
        },
        None => meshd_metrics::Options::default(),
    }
}

impl Running {
    /// Serve: reload on file change or SIGHUP until asked to stop, then drain.
    async fn serve(self, signals: Signals) -> Exit {
        let Signals {
            mut hangup,
            mut terminate,
            mut interrupt,
        } = signals;
        systemd::spawn_watchdog();
        let (changed, watcher) = (self.changed.clone(), &self.watcher);
        let mut reloader = Reloader {
            config: &self.config,
            reread: &self.reread,
            states: &self.states,
            operated: &self.operated,
            metrics: &self.metrics,
            generation: 1,
            stability: Stability {
                quiet: QUIET,
                max_wait: MAX_WAIT,
                writes: watcher.as_ref().map(|w| w.writes()),
            },
            last_read: None,
            load_error: None,
            postponed: false,
            mesh: self.control.as_ref().map(|c| c.mesh.clone()),
        };
        let mut retry: Option<tokio::time::Instant> = None;
        let mut mesh = self.control.as_ref().map(|c| c.mesh.clone());
        loop {
            let trigger = tokio::select! {
                _ = hangup.recv() => Trigger::Signal,
                _ = changed.notified() => Trigger::FileChange,
                Some(()) = mesh_changed(&mut mesh) => Trigger::ControlPlane,
                () = sleep_until(retry), if retry.is_some() => Trigger::Retry,
                _ = self.quit.notified() => {
                    tracing::info!("drain requested on /quitquitquit");
                    break;
                }
                () = stop(&mut terminate, &mut interrupt) => break,
            };
            // A reload may wait for the tree to settle: a stop request ends it at once.
            tokio::select! {
                again = reloader.reload(trigger) => {
                    retry = again.map(|after| tokio::time::Instant::now() + after);
                }
                _ = self.quit.notified() => {
                    tracing::info!("drain requested on /quitquitquit");
                    break;
                }
                () = stop(&mut terminate, &mut interrupt) => break,
            }
        }
        tracing::info!(drain = ?DRAIN, "draining: no new connections; a second SIGTERM stops at once");
        systemd::stopping();
        tokio::select! {
            _ = self.proxy.shutdown(DRAIN) => {}
            () = stop(&mut terminate, &mut interrupt) => {
                tracing::warn!("second stop signal: stopping without waiting");
            }
        }
        Exit::Stopped
    }
}
