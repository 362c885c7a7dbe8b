//! The test's ADS handler: holds name → version per type, refuses chosen names, and records
//! what the client asked of it (each `initial_resource_versions`) and what it was given.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use meshd_xds::ads::{AUTHORIZATION_TYPE, Handler, Rejection, Resource};

/// What the test's handler holds, and what the client asked of it.
#[derive(Default)]
pub struct Store {
    pub held: BTreeMap<(String, String), String>,
    /// Names refused by `apply` (a stand-in for a resource meshd cannot convert).
    pub refuse: HashSet<String>,
    /// Every `held()` answer, i.e. each `initial_resource_versions` sent.
    pub initial: Vec<(String, HashMap<String, String>)>,
    /// Every name seen in an update, and every removal.
    pub updates: Vec<String>,
    pub removals: Vec<String>,
}

#[derive(Clone, Default)]
pub struct Shared(pub Arc<Mutex<Store>>);

impl Handler for Shared {
    fn apply(&mut self, t: &str, updated: Vec<Resource>, removed: Vec<String>) -> Vec<Rejection> {
        let mut s = self.0.lock().unwrap();
        let mut rejected = vec![];
        for r in updated {
            s.updates.push(r.name.clone());
            assert!(
                !r.body.is_empty() || t == AUTHORIZATION_TYPE,
                "{} has a body",
                r.name
            );
            if s.refuse.contains(&r.name) {
                rejected.push(Rejection {
                    name: r.name,
                    message: "cannot convert".into(),
                });
            } else {
                s.held.insert((t.to_string(), r.name), r.version);
            }
        }
        for n in removed {
            s.removals.push(n.clone());
            s.held.remove(&(t.to_string(), n));
        }
        rejected
    }

    fn held(&self, t: &str) -> HashMap<String, String> {
        let mut s = self.0.lock().unwrap();
        let held: HashMap<String, String> = s
            .held
            .iter()
            .filter(|((ty, _), _)| ty == t)
            .map(|((_, n), v)| (n.clone(), v.clone()))
            .collect();
        s.initial.push((t.to_string(), held.clone()));
        held
    }

    fn count(&self, t: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .held
            .keys()
            .filter(|(ty, _)| ty == t)
            .count()
    }
}

impl Shared {
    pub fn has(&self, t: &str, name: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .held
            .contains_key(&(t.to_string(), name.to_string()))
    }
    pub fn names(&self, t: &str) -> Vec<String> {
        let s = self.0.lock().unwrap();
        s.held
            .keys()
            .filter(|(ty, _)| ty == t)
            .map(|(_, n)| n.clone())
            .collect()
    }
}
