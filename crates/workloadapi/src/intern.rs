//! Shared strings for istiod's resources: with 10⁵ workloads, the same namespace, trust domain,
//! service account, cluster, node and canonical names repeat across thousands of them, and the
//! proxy's registry refers to the same values again. Each distinct value is held once, as an
//! [`Sym`] (an `Arc<str>`), and every resource that carries it points at it.
//!
//! The pool is one per process, behind a mutex taken once per decoded resource: a process
//! holds one istiod state (and, for the length of a push, the one before it), so values repeat
//! across states too. Entries nobody else holds any more are dropped when the pool has doubled
//! since it was last swept, so a value istiod stopped sending does not stay for the life of
//! the process.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::model::{Owner, Placement, PortMapping};

/// A shared, immutable string: a field of istiod's resources (and what the registry keeps of
/// them). Compares, hashes and orders as the string it holds.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Sym(Arc<str>);

impl Sym {
    /// The string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Deref for Sym {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Sym {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Sym {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Sym {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Sym {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<&str> for Sym {
    fn from(s: &str) -> Self {
        Sym(Arc::from(s))
    }
}

impl From<String> for Sym {
    fn from(s: String) -> Self {
        Sym(Arc::from(s))
    }
}

impl From<&String> for Sym {
    fn from(s: &String) -> Self {
        Sym(Arc::from(s.as_str()))
    }
}

impl From<Sym> for String {
    fn from(s: Sym) -> Self {
        s.0.to_string()
    }
}

impl PartialEq<str> for Sym {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for Sym {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<String> for Sym {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Sym> for str {
    fn eq(&self, other: &Sym) -> bool {
        *self == *other.0
    }
}

impl PartialEq<Sym> for &str {
    fn eq(&self, other: &Sym) -> bool {
        **self == *other.0
    }
}

impl PartialEq<Sym> for String {
    fn eq(&self, other: &Sym) -> bool {
        **self == *other.0
    }
}

/// A workload's services: `(<namespace>/<hostname>, its ports)` in key order, shared by the
/// workloads that back the same services on the same ports (a deployment's replicas).
pub(crate) type ServiceList = Arc<[(Sym, Arc<[PortMapping]>)]>;

/// One set of shared values of a type.
struct Set<T: ?Sized> {
    held: HashSet<Arc<T>, foldhash::fast::FixedState>,
    /// The size after the last sweep: the next sweep waits for twice as many.
    swept_at: usize,
}

impl<T: ?Sized + Hash + Eq> Set<T> {
    fn new() -> Self {
        Set {
            held: HashSet::default(),
            swept_at: 0,
        }
    }

    /// The shared copy of `value`, made by `make` when there is none.
    fn get<Q>(&mut self, value: &Q, make: impl FnOnce(&Q) -> Arc<T>) -> Arc<T>
    where
        Arc<T>: Borrow<Q>,
        Q: ?Sized + Hash + Eq,
    {
        if let Some(held) = self.held.get(value) {
            return Arc::clone(held);
        }
        if self.held.len() >= self.swept_at.saturating_mul(2).max(4096) {
            // Only the pool holds these: no resource uses them any more.
            self.held.retain(|v| Arc::strong_count(v) > 1);
            self.swept_at = self.held.len();
        }
        let made = make(value);
        self.held.insert(Arc::clone(&made));
        made
    }
}

/// The process's shared values; [`pool`] locks it.
pub(crate) struct Pool {
    strings: Set<str>,
    ports: Set<[PortMapping]>,
    services: Set<[(Sym, Arc<[PortMapping]>)]>,
    policies: Set<[Sym]>,
    owners: Set<Owner>,
    placements: Set<Placement>,
}

impl Pool {
    /// The shared copy of a string.
    pub(crate) fn sym(&mut self, s: &str) -> Sym {
        Sym(self.strings.get(s, |v| Arc::from(v)))
    }

    /// The shared copy of a port list.
    pub(crate) fn ports(&mut self, ports: &[PortMapping]) -> Arc<[PortMapping]> {
        self.ports.get(ports, |v| Arc::from(v))
    }

    /// The shared copy of a workload's services (sorted by key, keys unique).
    pub(crate) fn services(&mut self, list: &[(Sym, Arc<[PortMapping]>)]) -> ServiceList {
        self.services.get(list, |v| Arc::from(v))
    }

    /// The shared copy of a workload's owner.
    pub(crate) fn owner(&mut self, owner: Owner) -> Arc<Owner> {
        self.owners.get(&owner, |v| Arc::new(v.clone()))
    }

    /// The shared copy of a workload's placement.
    pub(crate) fn placement(&mut self, placement: Placement) -> Arc<Placement> {
        self.placements.get(&placement, |v| Arc::new(v.clone()))
    }

    /// The shared copy of a list of policy keys.
    pub(crate) fn policies(&mut self, keys: &[Sym]) -> Arc<[Sym]> {
        self.policies.get(keys, |v| Arc::from(v))
    }
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// Runs `f` with the process's pool, locked.
pub(crate) fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    // A panic while the pool was locked leaves it consistent (every insert is whole), so a
    // poisoned lock is taken as it is.
    let mut guard: MutexGuard<'_, Option<Pool>> =
        POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = guard.get_or_insert_with(|| Pool {
        strings: Set::new(),
        ports: Set::new(),
        services: Set::new(),
        policies: Set::new(),
        owners: Set::new(),
        placements: Set::new(),
    });
    f(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_one_allocation() {
        let (a, b) = with_pool(|p| (p.sym("ns-intern-test"), p.sym("ns-intern-test")));
        assert!(Arc::ptr_eq(&a.0, &b.0));
        assert_eq!(a, "ns-intern-test");
    }

    #[test]
    fn values_nobody_holds_are_swept() {
        let mut set: Set<str> = Set::new();
        let kept = set.get("kept", |v| Arc::from(v));
        for i in 0..5000 {
            set.get(format!("dropped-{i}").as_str(), |v| Arc::from(v));
        }
        // The sweep at 4 096 entries dropped those made before it; "kept" is still shared.
        assert!(set.held.len() < 5000, "{}", set.held.len());
        assert!(Arc::ptr_eq(&set.get("kept", |v| Arc::from(v)), &kept));
    }
}
