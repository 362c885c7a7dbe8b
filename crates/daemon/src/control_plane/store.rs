//! What meshd holds from istiod: the decoded [`MeshState`] the proxy is built from, and each
//! resource's version and bytes (for `initial_resource_versions` on reconnect and for the
//! state persisted on disk).
//!
//! A resource that does not decode is rejected (the client NACKs it) and its last good version
//! stays, in the state and on disk: dropping it instead could drop a DENY (ztunnel drops it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use meshd_workloadapi::{MeshState, ResourceKind};
use meshd_xds::ads::{Handler, Rejection, Resource};
use tokio::sync::{Notify, watch};

use super::metrics::ControlPlaneMetrics;

/// One resource as istiod last sent it and meshd accepted it.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub(crate) version: String,
    pub(crate) body: Bytes,
}

/// Accepted resources by kind and name: what the persisted state is written from.
pub(crate) type HeldResources = HashMap<ResourceKind, HashMap<String, Held>>;

/// The handler the xDS client applies istiod's responses to.
pub(crate) struct MeshStore {
    state: MeshState,
    held: Arc<Mutex<HeldResources>>,
    /// The state after every applied response, for the daemon to build a proxy state from.
    published: watch::Sender<Arc<MeshState>>,
    /// Woken after every change, for the writer of the persisted state.
    changed: Arc<Notify>,
    metrics: ControlPlaneMetrics,
}

impl MeshStore {
    /// A store starting from `state` (from the persisted file, or empty) and what it was
    /// decoded from.
    pub(crate) fn new(
        state: MeshState,
        held: HeldResources,
        metrics: ControlPlaneMetrics,
    ) -> (MeshStore, watch::Receiver<Arc<MeshState>>) {
        let (published, updates) = watch::channel(Arc::new(state.clone()));
        let store = MeshStore {
            state,
            held: Arc::new(Mutex::new(held)),
            published,
            changed: Arc::new(Notify::new()),
            metrics,
        };
        (store, updates)
    }

    /// The accepted resources, shared with the persisted-state writer.
    pub(crate) fn held(&self) -> Arc<Mutex<HeldResources>> {
        Arc::clone(&self.held)
    }

    /// Notified after each change.
    pub(crate) fn changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HeldResources> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Handler for MeshStore {
    fn apply(
        &mut self,
        type_url: &str,
        updated: Vec<Resource>,
        removed: Vec<String>,
    ) -> Vec<Rejection> {
        let Some(kind) = ResourceKind::from_type_url(type_url) else {
            // The client subscribes to meshd's two types only; anything else is refused whole.
            return updated
                .into_iter()
                .map(|r| Rejection {
                    name: r.name,
                    message: format!("meshd does not use type {type_url}"),
                })
                .collect();
        };
        let mut rejected = Vec::new();
        let mut accepted = Vec::new();
        for resource in updated {
            match self.state.apply(kind, &resource.name, &resource.body) {
                Ok(refused) => {
                    if let Some(reason) = refused {
                        // Held (its addresses must resolve to it) but never reached directly.
                        tracing::warn!(
                            name = %resource.name,
                            reason = reason.as_str(),
                            "istiod resource refused: connections to it are refused"
                        );
                    }
                    accepted.push(resource);
                }
                Err(e) => {
                    tracing::warn!(
                        type_url,
                        name = %resource.name,
                        version = %resource.version,
                        "istiod resource rejected, keeping its last good version: {e}"
                    );
                    rejected.push(Rejection {
                        name: resource.name,
                        message: e.to_string(),
                    });
                }
            }
        }
        for name in &removed {
            self.state.remove(kind, name);
        }
        {
            let mut held = self.lock();
            let of_kind = held.entry(kind).or_default();
            for resource in accepted {
                of_kind.insert(
                    resource.name,
                    Held {
                        version: resource.version,
                        body: resource.body,
                    },
                );
            }
            for name in &removed {
                of_kind.remove(name);
            }
        }
        self.metrics.set_refused(self.state.refused());
        self.published.send_replace(Arc::new(self.state.clone()));
        self.changed.notify_one();
        rejected
    }

    fn held(&self, type_url: &str) -> HashMap<String, String> {
        let Some(kind) = ResourceKind::from_type_url(type_url) else {
            return HashMap::new();
        };
        self.lock()
            .get(&kind)
            .map(|of_kind| {
                of_kind
                    .iter()
                    .map(|(name, held)| (name.clone(), held.version.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
