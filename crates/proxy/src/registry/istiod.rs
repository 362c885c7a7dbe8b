//! istiod's part of the registry, updated by the resources that changed between two of
//! istiod's states rather than rebuilt: with 100 000 workloads a rebuild is a second, one
//! workload's update tens of microseconds (benches/istiod.rs).
//!
//! Every index is a [`SharedMap`], so the part is cloned for the next registry in a few
//! microseconds and the two share all but the shards a push touched. Lists under one key
//! (workloads at one address, with one identity, behind one service) are kept in uid order:
//! the order a full build of the same state gives, whatever order the pushes came in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use meshd_workloadapi::model::{self as xds, Health};
use meshd_workloadapi::shared::SharedMap;
use meshd_workloadapi::{MeshState, Sym};

use super::{Origin, Port, Service, Workload};

/// istiod's workloads and services with their indexes. A workload here is a pointer to the
/// model istiod's state holds ([`Workload::istiod`]); the indexes hold pointers to it.
#[derive(Debug, Default, Clone)]
pub(super) struct IstiodPart {
    /// By uid (the model's own string).
    pub(super) workloads: SharedMap<Sym, Arc<Workload>>,
    pub(super) by_address: SharedMap<IpAddr, List>,
    /// (namespace, service account) → workloads with that identity.
    pub(super) by_identity: SharedMap<(Sym, Sym), List>,
    /// By `<namespace>/<hostname>`.
    pub(super) services: SharedMap<String, Arc<Service>>,
    /// Healthy workloads backing a service, by service key (whether or not istiod sent the
    /// service itself yet).
    pub(super) endpoints: SharedMap<Sym, List>,
    /// The local workloads, by uid (a machine has a handful).
    pub(super) local: BTreeMap<Sym, Arc<Workload>>,
}

/// Workloads under one index key, in uid order. Most addresses hold one workload: a small
/// vector keeps it inline rather than in an allocation of its own (one per workload).
pub(super) type List = smallvec::SmallVec<[Arc<Workload>; 1]>;

/// Inserts `w` into the list, in uid order.
fn add(list: &mut List, w: &Arc<Workload>) {
    let at = list.partition_point(|x| x.key() < w.key());
    list.insert(at, Arc::clone(w));
}

/// Removes the workload with `w`'s uid from the list under `key`, and the list once empty.
fn take<K: std::hash::Hash + Eq + Clone>(map: &mut SharedMap<K, List>, key: &K, w: &Workload) {
    let Some(list) = map.get(key) else { return };
    let mut list = list.clone();
    list.retain(|x| x.key() != w.key());
    if list.is_empty() {
        map.remove(key);
    } else {
        map.insert(key.clone(), list);
    }
}

fn put<K: std::hash::Hash + Eq + Clone>(map: &mut SharedMap<K, List>, key: K, w: &Arc<Workload>) {
    let mut list = map.get(&key).cloned().unwrap_or_default();
    add(&mut list, w);
    map.insert(key, list);
}

impl IstiodPart {
    /// Applies what changed from `older` to `newer` (the whole of `newer` when `older` is
    /// empty); `is_local` is asked about the workloads that changed only.
    pub(super) fn apply(
        &mut self,
        older: &MeshState,
        newer: &MeshState,
        is_local: &impl Fn(&Workload) -> bool,
    ) {
        for (uid, _, new) in newer.workload_changes(older) {
            self.remove_workload(uid);
            if let Some(new) = new {
                self.add_workload(new, is_local);
            }
        }
        for (key, _, new) in newer.service_changes(older) {
            match new {
                Some(s) => {
                    self.services
                        .insert(key.clone(), Arc::new(istiod_service(s)));
                }
                None => {
                    self.services.remove(key.as_str());
                }
            }
        }
    }

    fn remove_workload(&mut self, uid: &str) {
        let Some(old) = self.workloads.remove(uid) else {
            return;
        };
        for address in old.addresses() {
            take(&mut self.by_address, &address, &old);
        }
        let Some(model) = old.from_istiod() else {
            return;
        };
        let identity = (model.namespace.clone(), model.service_account.clone());
        take(&mut self.by_identity, &identity, &old);
        for service in model.services.keys() {
            take(&mut self.endpoints, service, &old);
        }
        self.local.remove(uid);
    }

    fn add_workload(&mut self, w: &Arc<xds::Workload>, is_local: &impl Fn(&Workload) -> bool) {
        // A workload with no address is not reachable and is left out.
        let Some(workload) = Workload::istiod(w) else {
            return;
        };
        let workload = Arc::new(workload);
        for address in workload.addresses() {
            put(&mut self.by_address, address, &workload);
        }
        let identity = (w.namespace.clone(), w.service_account.clone());
        put(&mut self.by_identity, identity, &workload);
        if w.health == Health::Healthy {
            for service in w.services.keys() {
                put(&mut self.endpoints, service.clone(), &workload);
            }
        }
        if is_local(&workload) {
            self.local.insert(w.uid.clone(), Arc::clone(&workload));
        }
        self.workloads.insert(w.uid.clone(), workload);
    }
}

fn istiod_service(s: &xds::Service) -> Service {
    Service {
        key: s.key(),
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        hosts: vec![s.hostname.clone()],
        vips: s.addresses.iter().map(|a| a.address).collect(),
        ports: s
            .ports
            .iter()
            .map(|p| Port {
                number: p.service_port,
                name: None,
                target: p.target_port,
            })
            .collect(),
        origin: Origin::Istiod,
        refused: s.refused,
        endpoints: Vec::new(),
    }
}
