//! A map whose clone is cheap and whose clones share what neither changed: istiod's state is
//! published (and a proxy state built from it) after every push, and a push usually changes
//! one resource among a hundred thousand.
//!
//! The entries are spread by hash over a fixed number of shards, each an `Arc`ed hash map. A
//! clone copies the shards' pointers ([`SHARDS`] of them); a change copies the one shard it
//! touches when that shard is shared (copy on write), about `len / SHARDS` entries. Two maps
//! that descend from one another can be compared shard by shard: a shared shard holds the same
//! entries, so [`SharedMap::diff`] only looks into the shards that changed. A persistent map
//! (a HAMT such as `imbl`) would do the same with more levels; one level is enough for the
//! sizes istiod sends (10⁵–10⁶ resources) and keeps lookups a single hash probe.

use std::collections::HashMap as StdHashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::FixedState>;

/// One shard.
type Shard<K, V> = Arc<HashMap<K, V>>;

/// Shards per map: 100 000 entries make ~100 per shard, so a change copies ~100 entries and a
/// clone copies 1 024 pointers (both a few microseconds).
pub const SHARDS: usize = 1024;

/// A hash map of `K` to `V` in [`SHARDS`] shared shards (see the module documentation).
#[derive(Debug)]
pub struct SharedMap<K, V> {
    shards: Arc<Vec<Shard<K, V>>>,
    len: usize,
}

impl<K, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap {
            shards: Arc::clone(&self.shards),
            len: self.len,
        }
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        // Every shard starts as the same empty map: two allocations, not a thousand (a
        // local-only meshd builds empty maps on every reload); the first insert into a shard
        // copies the empty map, which allocates nothing.
        let empty = Arc::new(HashMap::default());
        SharedMap {
            shards: Arc::new(vec![empty; SHARDS]),
            len: 0,
        }
    }
}

/// One entry that differs between two maps: its key, the older value and the newer one.
pub type Change<'a, K, V> = (&'a K, Option<&'a V>, Option<&'a V>);

impl<K: Hash + Eq + Clone, V: Clone> SharedMap<K, V> {
    fn shard_of<Q: Hash + ?Sized>(key: &Q) -> usize {
        // A fixed seed: the shard of a key must not depend on the map (diffs compare shards of
        // two maps). The seed inside each shard's table is fixed too, which is fine for keys
        // istiod chose: a table degrades only within one shard of ~100 entries.
        (foldhash::fast::FixedState::default().hash_one(key) as usize) % SHARDS
    }

    fn shard_mut(&mut self, index: usize) -> &mut HashMap<K, V> {
        // Copy the shard list if another map shares it, then the shard itself.
        let shards = Arc::make_mut(&mut self.shards);
        Arc::make_mut(&mut shards[index])
    }

    /// The value of `key`.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[Self::shard_of(key)].get(key)
    }

    /// Puts `value` under `key`, returning the value it replaces.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.shard_mut(Self::shard_of(&key)).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let index = Self::shard_of(key);
        if !self.shards[index].contains_key(key) {
            return None; // nothing to copy
        }
        let old = self.shard_mut(index).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    /// Entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when both maps share every shard: the same entries, without looking at them.
    pub fn same_as(&self, other: &SharedMap<K, V>) -> bool {
        Arc::ptr_eq(&self.shards, &other.shards)
            || self
                .shards
                .iter()
                .zip(other.shards.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The entries that differ from `older`: added, removed, or replaced by a value `same`
    /// does not hold equal to. Shards both maps share are skipped unread, so the cost is that
    /// of the shards changed since the maps parted.
    pub fn diff<'a>(
        &'a self,
        older: &'a SharedMap<K, V>,
        same: impl Fn(&V, &V) -> bool + Copy + 'a,
    ) -> impl Iterator<Item = Change<'a, K, V>> + 'a {
        let changed = move |(new, old): (&'a Shard<K, V>, &'a Shard<K, V>)| {
            let (new, old) = (&**new, &**old);
            let replaced = new.iter().filter_map(move |(k, v)| match old.get(k) {
                Some(o) if same(o, v) => None,
                o => Some((k, o, Some(v))),
            });
            let removed = old
                .iter()
                .filter(move |(k, _)| !new.contains_key(*k))
                .map(|(k, o)| (k, Some(o), None));
            replaced.chain(removed)
        };
        let shared = Arc::ptr_eq(&self.shards, &older.shards);
        self.shards
            .iter()
            .zip(older.shards.iter())
            .filter(move |(a, b)| !shared && !Arc::ptr_eq(a, b))
            .flat_map(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_shares_and_a_change_copies_one_shard() {
        let mut a: SharedMap<String, u32> = SharedMap::default();
        for i in 0..10_000 {
            a.insert(format!("k{i}"), i);
        }
        let mut b = a.clone();
        assert!(b.same_as(&a));
        b.insert("k5".into(), 50);
        b.remove("k6");
        b.insert("new".into(), 1);
        assert_eq!(a.get("k5"), Some(&5));
        assert_eq!(b.get("k5"), Some(&50));
        assert_eq!((a.len(), b.len()), (10_000, 10_000));
        let unshared = a
            .shards
            .iter()
            .zip(b.shards.iter())
            .filter(|(x, y)| !Arc::ptr_eq(x, y))
            .count();
        assert!(unshared <= 3, "{unshared} shards copied");
        let mut diff: Vec<_> = b
            .diff(&a, |x, y| x == y)
            .map(|(k, o, n)| (k.clone(), o.copied(), n.copied()))
            .collect();
        diff.sort();
        assert_eq!(
            diff,
            [
                ("k5".to_string(), Some(5), Some(50)),
                ("k6".to_string(), Some(6), None),
                ("new".to_string(), None, Some(1)),
            ]
        );
        assert_eq!(a.diff(&a.clone(), |x, y| x == y).count(), 0);
    }

    #[test]
    fn removing_an_absent_key_copies_nothing() {
        let a: SharedMap<String, u32> = SharedMap::default();
        let mut b = a.clone();
        assert_eq!(b.remove("none"), None);
        assert!(Arc::ptr_eq(&a.shards, &b.shards));
    }
}
