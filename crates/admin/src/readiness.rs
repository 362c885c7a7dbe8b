//! Readiness: a set of named conditions still pending, plus checks evaluated at each request
//! (a certificate that expired without rotation makes meshd unready again).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

type Check = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Shared readiness state: cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<String>>>,
    checks: Arc<Mutex<Vec<Check>>>,
    notes: Arc<Mutex<Vec<Check>>>,
}

impl Readiness {
    /// A readiness state with `pending` conditions still to come.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(pending: I) -> Self {
        let readiness = Readiness::default();
        for p in pending {
            readiness.set_pending(p);
        }
        readiness
    }

    /// Marks a condition pending.
    pub fn set_pending(&self, condition: impl Into<String>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(condition.into());
    }

    /// Marks a condition done.
    pub fn set_ready(&self, condition: &str) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(condition);
    }

    /// Adds a check run at every request: `Some(reason)` means not ready.
    pub fn add_check(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(check));
    }

    /// Adds a note run at every request: `Some(text)` is said beside "ready" without keeping
    /// meshd from being ready (e.g. which state it runs on while its control plane is away).
    pub fn add_note(&self, note: impl Fn() -> Option<String> + Send + Sync + 'static) {
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(note));
    }

    /// The notes that apply now.
    pub fn notes(&self) -> Vec<String> {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        notes.iter().filter_map(|note| note()).collect()
    }

    /// Everything that keeps meshd from being ready; empty when ready.
    pub fn blockers(&self) -> Vec<String> {
        let mut blockers: Vec<String> = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|p| format!("pending: {p}"))
            .collect();
        let checks = self
            .checks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        blockers.extend(checks.iter().filter_map(|check| check()));
        blockers
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Readiness")
            .field("blockers", &self.blockers())
            .finish()
    }
}
