//! Applying new configurations: wait until the tree is still ([`crate::stable`]), then load it
//! off the async workers (a 10 000-policy directory takes a while to parse and compile, and a
//! read may block), swap it in whole; a bad one changes nothing but the reported error.

use std::sync::Arc;
use std::time::Duration;

use meshd_metrics::Metrics;
use meshd_proxy::ProxyState;
use meshd_workloadapi::MeshState;

use crate::schema::MeshdConfig;
use tokio::sync::watch;

use crate::operator::Operated;
use crate::stable::{Fingerprint, RETRY, Stability};
use crate::{RereadFn, load_state, settings, systemd, update_state};

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    /// SIGHUP: an operator asked, so it loads even an unchanged tree.
    Signal,
    /// The watcher saw a completed change.
    FileChange,
    /// An earlier attempt found the tree still changing.
    Retry,
    /// istiod's state changed: the proxy state is rebuilt from it and the directory's
    /// snapshot in force, without reading the directory.
    ControlPlane,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
            Trigger::Retry => "retry",
            Trigger::ControlPlane => "istiod push",
        }
    }
}

/// Applies new configurations.
pub(crate) struct Reloader<'a> {
    pub(crate) config: &'a MeshdConfig,
    pub(crate) reread: &'a RereadFn,
    pub(crate) states: &'a watch::Sender<Arc<ProxyState>>,
    pub(crate) operated: &'a Operated,
    pub(crate) metrics: &'a Metrics,
    /// The generation in force: it counts configurations applied, so a rejected one takes no
    /// number.
    pub(crate) generation: u64,
    pub(crate) stability: Stability,
    /// The tree as the last load read it: a file event that leaves it unchanged (a second
    /// event of a burst already loaded) loads nothing.
    pub(crate) last_read: Option<Fingerprint>,
    /// The last load's error, and whether a postponement is reported in its place: when the
    /// tree settles back to what was last read, the postponement is over and the load's own
    /// outcome is what stands.
    pub(crate) load_error: Option<String>,
    pub(crate) postponed: bool,
    /// istiod's state, when meshd joins a mesh: every state is built from its latest value.
    pub(crate) mesh: Option<watch::Receiver<Arc<MeshState>>>,
}

impl Reloader<'_> {
    /// Says which changed keys of the daemon configuration file wait for a restart: a reload
    /// applies the configuration directory only. The file is read on the blocking pool.
    async fn warn_restart_keys(&self) {
        let reread = self.reread.clone();
        let new = tokio::task::spawn_blocking(move || reread())
            .await
            .unwrap_or_else(|e| Err(format!("reading it panicked: {e}")));
        match new {
            Ok(new) => {
                for key in settings::changed_keys(self.config, &new) {
                    tracing::warn!(
                        key,
                        "daemon configuration key changed: it takes effect after a restart (a reload applies the configuration directory only)"
                    );
                }
            }
            Err(e) => tracing::warn!("daemon configuration file: {e} (the running one stays)"),
        }
    }

    /// istiod's latest state (empty without a control plane).
    fn mesh(&self) -> Arc<MeshState> {
        self.mesh
            .as_ref()
            .map(|m| m.borrow().clone())
            .unwrap_or_default()
    }

    /// Updates the state in force with istiod's latest state, off the async workers: by
    /// what changed since the state in force was built (`ProxyState::with_mesh`). The
    /// directory is not read again: its snapshot in force is kept, whether or not a later
    /// edit of it was rejected.
    async fn apply_mesh(&mut self) {
        let config = self.config.clone();
        let previous = self.states.borrow().clone();
        let mesh = self.mesh();
        let next = self.generation + 1;
        let built =
            tokio::task::spawn_blocking(move || update_state(&config, &previous, &mesh, next))
                .await;
        match built {
            Ok(state) => {
                self.generation = next;
                self.states.send_replace(Arc::new(state));
                self.metrics.config_reloaded(true, next);
                tracing::info!(generation = next, "istiod's state applied");
            }
            Err(e) => {
                tracing::error!("applying istiod's state panicked, keeping the previous one: {e}")
            }
        }
    }

    /// One reload; returns when to try again if the tree did not settle.
    pub(crate) async fn reload(&mut self, trigger: Trigger) -> Option<Duration> {
        if trigger == Trigger::ControlPlane {
            self.apply_mesh().await;
            return None;
        }
        let why = trigger.name();
        // systemd's notify-reload protocol wants RELOADING=1 as soon as SIGHUP is taken; a
        // file change says so only once it loads something.
        if trigger == Trigger::Signal {
            systemd::reloading();
        }
        let fingerprint = match self.stability.wait(&self.config.config_dir).await {
            Ok(fingerprint) => fingerprint,
            Err(unstable) => {
                // Fail safe: a tree still being written is not loaded at all.
                let e = format!("reload postponed, the configuration directory is {unstable}");
                tracing::warn!(
                    trigger = why,
                    retry = ?RETRY,
                    "{e}; keeping the previous configuration"
                );
                self.postponed = true;
                self.report(Some(e));
                return Some(RETRY);
            }
        };
        if trigger != Trigger::Signal && self.last_read.as_ref() == Some(&fingerprint) {
            tracing::debug!(
                trigger = why,
                "configuration directory unchanged; nothing to load"
            );
            if self.postponed {
                self.postponed = false;
                self.report(self.load_error.clone());
            }
            return None;
        }
        if trigger != Trigger::Signal {
            systemd::reloading();
        }
        self.warn_restart_keys().await;
        let config = self.config.clone();
        let next = self.generation + 1;
        let mesh = self.mesh();
        // The reason is kept as text from here: it is shown (log, systemd, /config_dump), not
        // matched on.
        let loaded =
            match tokio::task::spawn_blocking(move || load_state(&config, next, &mesh)).await {
                Ok(loaded) => loaded.map_err(|e| e.to_string()),
                Err(e) => Err(format!("configuration load panicked: {e}")),
            };
        self.last_read = Some(fingerprint);
        let error = match loaded {
            Ok(mut state) => {
                state.succeed(&self.states.borrow());
                self.generation = next;
                self.states.send_replace(Arc::new(state));
                self.metrics.config_reloaded(true, next);
                tracing::info!(generation = next, trigger = why, "configuration reloaded");
                None
            }
            Err(e) => {
                // The last good configuration stays in force.
                tracing::error!(
                    trigger = why,
                    "reload rejected, keeping the previous configuration: {e}"
                );
                self.metrics.config_reloaded(false, self.generation);
                Some(e)
            }
        };
        self.load_error = error.clone();
        self.postponed = false;
        self.report(error);
        None
    }

    /// Reports the outcome to systemd and `/config_dump`.
    fn report(&self, error: Option<String>) {
        systemd::reloaded(self.generation, error.as_deref());
        *self
            .operated
            .last_reload_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = error;
    }
}
