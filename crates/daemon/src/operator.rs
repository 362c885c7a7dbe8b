//! The operator endpoints' view of the daemon: readiness, the configuration dump, metrics, the
//! log filter and the drain request, wired to meshd-admin.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};

use meshd_admin::{Endpoint, Handlers, LogLevelFn, Readiness};
use meshd_identity::{IdentityHandle, IdentityManager};
use meshd_metrics::Metrics;
use meshd_proxy::dump::config_dump;
use meshd_proxy::{ProxyConfig, ProxyState};
use tokio::sync::{Notify, watch};

/// What the operator endpoints read: filled in as the daemon starts, so readiness answers
/// (500, with what is pending) before certificates and listeners are there.
#[derive(Default)]
pub(crate) struct Operated {
    pub(crate) states: OnceLock<watch::Receiver<Arc<ProxyState>>>,
    pub(crate) identity: OnceLock<IdentityHandle>,
    pub(crate) last_reload_error: Mutex<Option<String>>,
}

/// Binds the admin, metrics and readiness listeners and serves them.
pub(crate) async fn start_operator_endpoints(
    config: &ProxyConfig,
    operated: Arc<Operated>,
    set_log_level: LogLevelFn,
    readiness: Readiness,
    quit: Arc<Notify>,
    metrics: Metrics,
) -> Result<Vec<(Endpoint, SocketAddr)>, String> {
    let config_dump: meshd_admin::DumpFn = {
        let operated = operated.clone();
        Arc::new(
            move || match (operated.states.get(), operated.identity.get()) {
                (Some(states), Some(identity)) => {
                    let error = operated
                        .last_reload_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    config_dump(&states.borrow(), &identity.current(), error.as_deref())
                }
                _ => serde_json::json!({"pending": "meshd is still starting"}),
            },
        )
    };
    let handlers = Handlers {
        config_dump,
        set_log_level,
        quit: Arc::new(move || quit.notify_one()),
        metrics: Arc::new(move || metrics.encode().map_err(|e| e.to_string())),
        metrics_content_type: meshd_metrics::CONTENT_TYPE,
        readiness,
    };
    let mut bound = Vec::new();
    for (endpoint, addr) in [
        (Endpoint::Readiness, config.listen.readiness),
        (Endpoint::Admin, config.listen.admin),
        (Endpoint::Metrics, config.listen.metrics),
    ] {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} ({endpoint:?}): {e}"))?;
        let local = listener.local_addr().unwrap_or(addr);
        tokio::spawn(meshd_admin::serve(listener, endpoint, handlers.clone()));
        bound.push((endpoint, local));
    }
    Ok(bound)
}

/// Keeps readiness and the certificate metrics in step with the identity: an expired
/// certificate that was not rotated makes meshd unready.
pub(crate) fn watch_certificate(
    identity: &IdentityManager,
    readiness: &Readiness,
    metrics: &Metrics,
) {
    let handle = identity.handle();
    readiness.add_check(move || {
        let not_after = handle.not_after();
        (not_after <= time::OffsetDateTime::now_utc())
            .then(|| format!("certificate expired at {not_after} and was not rotated"))
    });
    let mut updates = identity.handle().subscribe();
    let stats = identity.stats();
    let metrics = metrics.clone();
    tokio::spawn(async move {
        loop {
            {
                let set = updates.borrow_and_update().clone();
                metrics.certificate(
                    &set.id().to_string(),
                    set.not_after().unix_timestamp(),
                    stats.rotations(),
                    stats.failed_rotations(),
                );
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
