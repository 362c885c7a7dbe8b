//! Passive health: endpoint addresses marked unhealthy after a failed connection, for
//! [`EJECTION`], carried from one registry to the next across reloads.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::{EJECTION, Registry};

/// Marks kept before expired ones are first swept: a sweep is O(marks) under the registry's
/// lock, so below this (a few hundred endpoints failing at once) none is needed at all.
const PRUNE_UNHEALTHY_ABOVE: usize = 1024;

/// Endpoint addresses marked unhealthy, until when; expired marks are swept in amortised O(1)
/// per new mark: a sweep runs only once the map has doubled since the last one left it (and
/// never below [`PRUNE_UNHEALTHY_ABOVE`]), so the map stays within twice the marks alive at the
/// last sweep, and a burst of failures does not pay an O(n) sweep each under the lock.
#[derive(Debug)]
pub(super) struct Unhealthy {
    pub(super) marks: HashMap<SocketAddr, Instant>,
    /// The size at which the next insert sweeps first.
    sweep_at: usize,
    /// Sweeps since the registry was built, for tests.
    sweeps: u64,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            marks: HashMap::new(),
            sweep_at: PRUNE_UNHEALTHY_ABOVE,
            sweeps: 0,
        }
    }
}

impl Unhealthy {
    fn mark(&mut self, address: SocketAddr, now: Instant) {
        if self.marks.len() >= self.sweep_at && !self.marks.contains_key(&address) {
            self.marks.retain(|_, until| *until > now);
            self.sweeps += 1;
            self.sweep_at = PRUNE_UNHEALTHY_ABOVE.max(self.marks.len().saturating_mul(2));
        }
        self.marks.insert(address, now + EJECTION);
    }
}

impl Registry {
    /// False while a connection to `ip` (any port) failed within the last [`EJECTION`]: the
    /// endpoint is skipped until then.
    pub fn is_healthy(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let unhealthy = self.unhealthy.lock().unwrap_or_else(|e| e.into_inner());
        !unhealthy
            .marks
            .iter()
            .any(|(addr, until)| addr.ip() == ip && *until > now)
    }

    /// Takes over `previous`'s endpoint health. A reload builds a new registry; an endpoint
    /// ejected for a failed connection must stay ejected for the rest of its [`EJECTION`], not
    /// be tried again by the first connection after every reload.
    pub fn keep_health_of(&mut self, previous: &Registry) {
        self.unhealthy = previous.unhealthy.clone();
    }

    /// Marks an endpoint address unhealthy after a failed connection. Only workload
    /// addresses are remembered (the only ones [`Registry::resolve_addr`] balances over), so
    /// failed passthrough destinations cannot grow the map; expired marks are dropped as new
    /// ones come (see [`Unhealthy`]).
    pub fn report_failure(&self, address: SocketAddr) {
        self.report_failure_at(address, Instant::now());
    }

    /// [`Registry::report_failure`] as if it happened at `now`, so tests can let marks expire
    /// without waiting [`EJECTION`].
    #[doc(hidden)]
    pub fn report_failure_at(&self, address: SocketAddr, now: Instant) {
        if self.at(address.ip().to_canonical()).next().is_none() {
            return;
        }
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mark(address, now);
    }

    /// How many endpoint addresses are marked (expired marks included), for tests.
    #[doc(hidden)]
    pub fn unhealthy_len(&self) -> usize {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .marks
            .len()
    }

    /// How many times expired marks were swept, for tests.
    #[doc(hidden)]
    pub fn unhealthy_sweeps(&self) -> u64 {
        self.unhealthy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sweeps
    }
}
