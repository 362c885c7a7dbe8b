//! Admission before authentication: how many TLS handshakes may be in flight at once, overall
//! and per source address, so that hosts which connect and never finish a handshake cannot take
//! the places of authenticated peers.
//!
//! The server holds a [`HandshakeTicket`] from accept until the peer has proved its identity,
//! then gives it back and takes one of the `max_connections` permits instead; a connection that
//! never authenticates only ever holds a ticket, and loses it at the handshake timeout.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// The handshake budget of one server (shared by its accept loop and its connection tasks).
#[derive(Debug, Clone)]
pub(crate) struct HandshakeBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    max_total: usize,
    max_per_source: usize,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: usize,
    // Only sources with a handshake in flight have an entry, so the map is bounded by
    // `max_total` however many addresses connect.
    per_source: HashMap<IpAddr, usize>,
}

/// Why a connection was refused before its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_handshakes` handshakes are in flight.
    Total,
    /// `max_handshakes_per_ip` handshakes from this source are in flight.
    PerSource,
}

impl Refusal {
    /// In words, for logs and records.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Refusal::Total => "hbone handshake limit reached",
            Refusal::PerSource => "hbone per-source handshake limit reached",
        }
    }
}

/// One handshake's place in the budget; given back when dropped.
#[derive(Debug)]
pub(crate) struct HandshakeTicket {
    inner: Arc<Inner>,
    source: IpAddr,
}

impl HandshakeBudget {
    pub(crate) fn new(max_total: usize, max_per_source: usize) -> HandshakeBudget {
        HandshakeBudget {
            inner: Arc::new(Inner {
                max_total,
                max_per_source,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A place for a handshake from `ip`, or why there is none.
    pub(crate) fn try_admit(&self, ip: IpAddr) -> Result<HandshakeTicket, Refusal> {
        let source = source_key(ip);
        let mut state = lock(&self.inner.state);
        if state.total >= self.inner.max_total {
            return Err(Refusal::Total);
        }
        let count = state.per_source.entry(source).or_insert(0);
        if *count >= self.inner.max_per_source {
            return Err(Refusal::PerSource);
        }
        *count += 1;
        state.total += 1;
        Ok(HandshakeTicket {
            inner: Arc::clone(&self.inner),
            source,
        })
    }

    /// Handshakes in flight now.
    pub(crate) fn in_flight(&self) -> usize {
        lock(&self.inner.state).total
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        state.total = state.total.saturating_sub(1);
        if let Some(count) = state.per_source.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.per_source.remove(&self.source);
            }
        }
    }
}

/// The unit a per-source limit counts: an IPv4 address (also when it arrives IPv4-mapped on a
/// dual-stack socket), or an IPv6 /64, the smallest block a host is normally given; counting
/// single IPv6 addresses would let one host take the whole budget from its own subnet.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// Locks a std mutex, ignoring poisoning: the counters stay consistent even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!("test literal"))
    }

    #[test]
    fn per_source_cap_leaves_room_for_others() {
        // One source at its cap is refused; another source is still admitted.
        let budget = HandshakeBudget::new(10, 2);
        let held: Vec<_> = (0..2).map(|_| budget.try_admit(ip("10.0.0.1"))).collect();
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(
            budget.try_admit(ip("10.0.0.1")).err(),
            Some(Refusal::PerSource)
        );
        assert!(budget.try_admit(ip("10.0.0.2")).is_ok());
        // The second ticket above was dropped at once: two remain in flight.
        assert_eq!(budget.in_flight(), 2);
    }

    #[test]
    fn total_cap_and_release() {
        // Beyond the total, everyone waits for a place; a finished handshake frees one.
        let budget = HandshakeBudget::new(2, 2);
        let a = budget.try_admit(ip("10.0.0.1")).ok();
        let _b = budget.try_admit(ip("10.0.0.2")).ok();
        assert_eq!(budget.try_admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        drop(a);
        assert!(budget.try_admit(ip("10.0.0.3")).is_ok());
        assert_eq!(
            lock(&budget.inner.state).per_source.len(),
            1,
            "released sources leave"
        );
    }

    #[test]
    fn mapped_ipv4_and_ipv6_subnets_count_as_one_source() {
        // ::ffff:10.0.0.1 is 10.0.0.1; two addresses of one /64 are one host's.
        let budget = HandshakeBudget::new(10, 1);
        let _v4 = budget.try_admit(ip("10.0.0.1"));
        assert_eq!(
            budget.try_admit(ip("::ffff:10.0.0.1")).err(),
            Some(Refusal::PerSource)
        );
        let _v6 = budget.try_admit(ip("2001:db8:0:1::1"));
        assert_eq!(
            budget.try_admit(ip("2001:db8:0:1::2")).err(),
            Some(Refusal::PerSource)
        );
        assert!(budget.try_admit(ip("2001:db8:0:2::1")).is_ok());
    }
}
