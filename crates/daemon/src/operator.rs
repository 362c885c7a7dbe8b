//! The operator endpoints' view of the daemon: readiness, the configuration dump, metrics, the
//! log filter and the drain request, wired to meshd-admin.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use meshd_admin::{
    Endpoint, Handlers, Limits, LogLevelFn, OperatorRuntime, Readiness, ServeSettings,
};
use meshd_identity::{
    IdentityHandle, IdentityManager, IdentitySet, RotationStats, WorkloadManagers,
};
use meshd_metrics::Metrics;
use meshd_proxy::views;
use meshd_proxy::{Live, ProxyState, config_dump};

use crate::schema::MeshdConfig;
use tokio::sync::{Notify, watch};

use crate::StartupError;
use crate::startup::{self, Waiting};

/// What the operator endpoints read: filled in as the daemon starts, so readiness answers
/// (500, with what is pending) before certificates and listeners are there.
#[derive(Default)]
pub(crate) struct Operated {
    pub(crate) states: OnceLock<watch::Receiver<Arc<ProxyState>>>,
    pub(crate) identity: OnceLock<IdentityHandle>,
    /// Every identity meshd holds: its own and the local workloads' own.
    pub(crate) identities: OnceLock<IdentitySet>,
    pub(crate) rotations: OnceLock<Arc<RotationStats>>,
    pub(crate) last_reload_error: Mutex<Option<String>>,
    /// istiod's clients, when meshd joins a mesh.
    pub(crate) control_plane: OnceLock<crate::control_plane::ControlPlaneView>,
    /// Open connections and recent denials: a sink of the connection records.
    pub(crate) live: Live,
}

impl Operated {
    fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// One operator view as JSON; `None` for an unknown view, `Err` while meshd is starting.
    fn status(&self, view: &str) -> Option<Result<serde_json::Value, String>> {
        let live = match view {
            "connections" => Some(serde_json::to_value(self.live.connections())),
            "denials" => Some(serde_json::to_value(self.live.denials())),
            "traffic" => {
                let state = self.states.get().map(|s| s.borrow().clone());
                Some(serde_json::to_value(views::traffic(
                    state.as_deref(),
                    &self.live,
                )))
            }
            _ => None,
        };
        if let Some(value) = live {
            return Some(value.map_err(|e| e.to_string()));
        }
        if !meshd_status::view::VIEWS.contains(&view) {
            return None;
        }
        let (Some(states), Some(identity)) = (self.states.get(), self.identity.get()) else {
            return Some(Err("meshd is still starting".to_string()));
        };
        let state = states.borrow().clone();
        let certificate = identity.current();
        let value = match view {
            "summary" => serde_json::to_value(views::summary(
                &state,
                &certificate,
                self.last_reload_error(),
                &self.live,
            )),
            "workloads" => serde_json::to_value(views::workloads(&state)),
            "services" => serde_json::to_value(views::services(&state)),
            "policies" => serde_json::to_value(views::policies(&state)),
            "control-plane" => serde_json::to_value(
                self.control_plane
                    .get()
                    .map(|cp| cp.view(&state))
                    .unwrap_or_default(),
            ),
            _ => {
                let (ok, failed) = self
                    .rotations
                    .get()
                    .map_or((0, 0), |s| (s.rotations(), s.failed_rotations()));
                let mut certs = views::certs(&certificate, ok, failed);
                if let Some(identities) = self.identities.get() {
                    certs.workloads = identities
                        .workloads()
                        .map(|(_, handle)| views::workload_cert(&handle.current()))
                        .collect();
                }
                serde_json::to_value(certs)
            }
        };
        Some(value.map_err(|e| e.to_string()))
    }
}

/// Binds the admin, metrics and readiness listeners and serves them on their own thread
/// (meshd-admin's [`OperatorRuntime`]), readiness first, each as soon as it is bound (a port
/// in use is waited for, and readiness says so); refuses an admin endpoint off loopback that
/// the configuration does not allow.
pub(crate) async fn start_operator_endpoints(
    config: &MeshdConfig,
    operated: Arc<Operated>,
    set_log_level: LogLevelFn,
    readiness: Readiness,
    quit: Arc<Notify>,
    metrics: Metrics,
    waiting: &Waiting,
) -> Result<OperatorRuntime, StartupError> {
    // Before anything is bound: a refused admin address must never answer, even briefly.
    config.check_admin()?;
    let config_dump: meshd_admin::DumpFn = {
        let operated = operated.clone();
        Arc::new(
            move || match (operated.states.get(), operated.identity.get()) {
                (Some(states), Some(identity)) => {
                    let mut dump = config_dump(
                        &states.borrow(),
                        &identity.current(),
                        operated.last_reload_error().as_deref(),
                    );
                    if let (Some(view), Some(map)) =
                        (operated.control_plane.get(), dump.as_object_mut())
                    {
                        let view =
                            serde_json::to_value(view.view(&states.borrow())).unwrap_or_default();
                        map.insert("controlPlane".to_string(), view);
                    }
                    dump
                }
                _ => serde_json::json!({"pending": "meshd is still starting"}),
            },
        )
    };
    let status: meshd_admin::StatusFn = {
        let operated = operated.clone();
        Arc::new(move |view: &str| operated.status(view))
    };
    let handlers = Handlers {
        config_dump,
        status,
        page: meshd_status::PAGE,
        set_log_level,
        quit: Arc::new(move || quit.notify_one()),
        metrics: Arc::new(move || metrics.encode().map_err(|e| e.to_string())),
        metrics_content_type: meshd_metrics::CONTENT_TYPE,
        readiness,
    };
    let settings = ServeSettings {
        allowed_hosts: config.admin.allowed_hosts.clone(),
        limits: Limits::default(),
    };
    let mut operator =
        OperatorRuntime::start(handlers, settings).map_err(StartupError::Operator)?;
    for (endpoint, addr) in [
        (Endpoint::Readiness, config.listen.readiness),
        (Endpoint::Admin, config.listen.admin),
        (Endpoint::Metrics, config.listen.metrics),
    ] {
        let Some(addr) = addr else { continue };
        // A port in use is waited for; readiness, bound first, says so.
        let listener = startup::bind(waiting, addr, &format!("{endpoint:?}")).await?;
        let listener = listener
            .into_std()
            .and_then(|listener| operator.serve(endpoint, listener))
            .map_err(|source| StartupError::Serve {
                addr,
                endpoint,
                source,
            })?;
        tracing::debug!(?endpoint, addr = %listener, "operator endpoint bound");
    }
    Ok(operator)
}

/// Watches every certificate meshd holds, its own and each local workload's: an expired one
/// makes meshd unready (nothing under it could serve or reach anyone), and each has its series
/// of the expiry gauge and its rotation counts (meshd's own in
/// `meshd_certificate_rotations_total`, a workload's labelled by its identity).
pub(crate) fn watch_certificates(
    own: &IdentityManager,
    workloads: &WorkloadManagers,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    watch_certificate(own, None, readiness, metrics);
    for (id, manager) in workloads.managers() {
        watch_certificate(manager, Some(id.to_string()), readiness, metrics);
    }
}

/// One certificate's watch; `workload` names a workload's own identity (`None`: meshd's).
fn watch_certificate(
    identity: &IdentityManager,
    workload: Option<String>,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    let handle = identity.handle();
    let whose = workload
        .as_ref()
        .map_or_else(String::new, |id| format!(" of {id}"));
    readiness.add_check(move || {
        let not_after = handle.not_after();
        (not_after <= time::OffsetDateTime::now_utc())
            .then(|| format!("certificate{whose} expired at {not_after} and was not rotated"))
    });
    let mut updates = identity.handle().subscribe();
    let stats = identity.stats();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            {
                let set = updates.borrow_and_update().clone();
                let (id, not_after) = (set.id().to_string(), set.not_after().unix_timestamp());
                let (ok, failed) = (stats.rotations(), stats.failed_rotations());
                match workload {
                    None => metrics.certificate(&id, not_after, ok, failed),
                    Some(_) => metrics.workload_certificate(&id, not_after, ok, failed),
                }
            }
            // A failed rotation changes no certificate: look at the counters now and then too.
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(CERTIFICATE_METRICS_EVERY) => {}
            }
        }
    });
}

/// How often the certificate metrics are refreshed when no new certificate arrives.
const CERTIFICATE_METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// The machine-readable line supervisors and tests wait for.
pub(crate) fn ready_line(
    addrs: &meshd_proxy::BoundAddrs,
    operator: &[(Endpoint, SocketAddr)],
) -> String {
    let show = |a: Option<SocketAddr>| a.map_or("-".to_string(), |a| a.to_string());
    let endpoint = |e: Endpoint| show(operator.iter().find(|(x, _)| *x == e).map(|(_, a)| *a));
    format!(
        "meshd ready hbone={} socks5={} outbound={} inbound_plaintext={} listeners={} admin={} metrics={} readiness={}",
        addrs.hbone,
        show(addrs.socks5),
        show(addrs.outbound),
        show(addrs.inbound_plaintext),
        addrs
            .listeners
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
        endpoint(Endpoint::Admin),
        endpoint(Endpoint::Metrics),
        endpoint(Endpoint::Readiness),
    )
}
