//! What meshd holds from istiod: every resource by its xDS name, updated one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::convert::{decode_address, decode_authorization};
use crate::error::DecodeError;
use crate::intern::Sym;
use crate::model::{Address, Authorization, Refusal, Service, Workload};
use crate::shared::{Change, SharedMap};
use crate::{ADDRESS_TYPE, AUTHORIZATION_TYPE};

/// The two resource types meshd subscribes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// [`ADDRESS_TYPE`]: workloads and services.
    Address,
    /// [`AUTHORIZATION_TYPE`]: policies.
    Authorization,
}

impl ResourceKind {
    /// The kind of a type URL, if meshd uses it.
    pub fn from_type_url(type_url: &str) -> Option<Self> {
        match type_url {
            ADDRESS_TYPE => Some(ResourceKind::Address),
            AUTHORIZATION_TYPE => Some(ResourceKind::Authorization),
            _ => None,
        }
    }

    /// Its type URL.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceKind::Address => ADDRESS_TYPE,
            ResourceKind::Authorization => AUTHORIZATION_TYPE,
        }
    }
}

/// Everything istiod sent, by resource name, each resource shared (`Arc`) and the maps shared
/// shard by shard ([`SharedMap`]): a clone of the state (published after every push) copies a
/// few pointers, and the state of one push can be compared with an earlier one's in the time
/// of what changed between them ([`MeshState::workload_changes`] and its siblings).
///
/// Resource names are checked against the body (a workload's uid, a service's
/// `<namespace>/<hostname>`, a policy's `<namespace>/<name>`), so a name identifies one
/// resource and a removal by name removes exactly it.
#[derive(Debug, Clone, Default)]
pub struct MeshState {
    /// Keyed by the workload's own uid (a shared string, not a second copy).
    workloads: SharedMap<Sym, Arc<Workload>>,
    services: SharedMap<String, Arc<Service>>,
    policies: SharedMap<String, Arc<Authorization>>,
    /// Refused workloads and services by reason, kept up to date on every change.
    refused: BTreeMap<Refusal, usize>,
}

impl MeshState {
    /// Decodes one resource and puts it in place of any resource of that name. On error the
    /// state is unchanged (the last good version stays). `Ok(Some(reason))`: the resource is
    /// held but refused (a workload or service meshd will not reach), for the caller to log.
    pub fn apply(
        &mut self,
        kind: ResourceKind,
        name: &str,
        body: &[u8],
    ) -> Result<Option<Refusal>, DecodeError> {
        match kind {
            ResourceKind::Address => {
                let address = decode_address(body)?;
                let refused = match &address {
                    Address::Workload(w) => w.refused,
                    Address::Service(s) => s.refused,
                };
                self.insert_address(name, address)?;
                Ok(refused)
            }
            ResourceKind::Authorization => {
                let policy = decode_authorization(body)?;
                self.insert_authorization(name, Arc::new(policy))?;
                Ok(None)
            }
        }
    }

    /// Puts a decoded address under its resource name.
    pub fn insert_address(&mut self, name: &str, address: Address) -> Result<(), DecodeError> {
        match address {
            Address::Workload(w) => {
                check_name(name, &w.uid)?;
                // A name is either a workload or a service: an address that changed kind
                // replaces the other.
                self.remove_service(name);
                self.count(w.refused, 1);
                if let Some(old) = self.workloads.insert(w.uid.clone(), w) {
                    self.count(old.refused, -1);
                }
            }
            Address::Service(s) => {
                check_name(name, &s.key())?;
                self.remove_workload(name);
                self.count(s.refused, 1);
                if let Some(old) = self.services.insert(name.to_string(), s) {
                    self.count(old.refused, -1);
                }
            }
        }
        Ok(())
    }

    /// Puts a decoded policy under its resource name.
    pub fn insert_authorization(
        &mut self,
        name: &str,
        policy: Arc<Authorization>,
    ) -> Result<(), DecodeError> {
        check_name(name, &policy.key())?;
        self.policies.insert(name.to_string(), policy);
        Ok(())
    }

    /// Removes a resource by name; false when there was none.
    pub fn remove(&mut self, kind: ResourceKind, name: &str) -> bool {
        match kind {
            ResourceKind::Address => self.remove_workload(name) | self.remove_service(name),
            ResourceKind::Authorization => self.policies.remove(name).is_some(),
        }
    }

    fn remove_workload(&mut self, name: &str) -> bool {
        let old = self.workloads.remove(name);
        if let Some(old) = &old {
            self.count(old.refused, -1);
        }
        old.is_some()
    }

    fn remove_service(&mut self, name: &str) -> bool {
        let old = self.services.remove(name);
        if let Some(old) = &old {
            self.count(old.refused, -1);
        }
        old.is_some()
    }

    fn count(&mut self, refusal: Option<Refusal>, delta: isize) {
        if let Some(reason) = refusal {
            let n = self.refused.entry(reason).or_default();
            *n = n.saturating_add_signed(delta);
            if *n == 0 {
                self.refused.remove(&reason);
            }
        }
    }

    /// The workloads, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    /// The services, in no particular order.
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    /// The policies, in no particular order.
    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    /// The workloads that differ from `older`'s (uid, old, new), in no particular order; the
    /// cost is that of the changes when `self` descends from `older` (see [`SharedMap::diff`]).
    pub fn workload_changes<'a>(
        &'a self,
        older: &'a MeshState,
    ) -> impl Iterator<Item = Change<'a, Sym, Arc<Workload>>> + 'a {
        self.workloads
            .diff(&older.workloads, |a, b| Arc::ptr_eq(a, b) || a == b)
    }

    /// The services that differ from `older`'s, as [`MeshState::workload_changes`].
    pub fn service_changes<'a>(
        &'a self,
        older: &'a MeshState,
    ) -> impl Iterator<Item = Change<'a, String, Arc<Service>>> + 'a {
        self.services
            .diff(&older.services, |a, b| Arc::ptr_eq(a, b) || a == b)
    }

    /// True when the policies are `older`'s, found without comparing them when `self`
    /// descends from `older` and no policy was touched since.
    pub fn same_policies(&self, older: &MeshState) -> bool {
        self.policies.same_as(&older.policies)
            || (self.policies.len() == older.policies.len()
                && self
                    .policies
                    .diff(&older.policies, |a, b| Arc::ptr_eq(a, b) || a == b)
                    .next()
                    .is_none())
    }

    /// A workload by uid.
    pub fn workload(&self, uid: &str) -> Option<&Arc<Workload>> {
        self.workloads.get(uid)
    }

    /// A service by `<namespace>/<hostname>`.
    pub fn service(&self, key: &str) -> Option<&Arc<Service>> {
        self.services.get(key)
    }

    /// A policy by `<namespace>/<name>`.
    pub fn policy(&self, key: &str) -> Option<&Arc<Authorization>> {
        self.policies.get(key)
    }

    /// How many resources of a kind are held (workloads and services together for addresses).
    pub fn len(&self, kind: ResourceKind) -> usize {
        match kind {
            ResourceKind::Address => self.workloads.len() + self.services.len(),
            ResourceKind::Authorization => self.policies.len(),
        }
    }

    /// True when nothing is held (a local-only meshd, or before istiod's first push).
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty() && self.services.is_empty() && self.policies.is_empty()
    }

    /// Refused workloads and services by reason (reasons with none are absent).
    pub fn refused(&self) -> &BTreeMap<Refusal, usize> {
        &self.refused
    }
}

fn check_name(name: &str, expected: &str) -> Result<(), DecodeError> {
    if name == expected {
        Ok(())
    } else {
        Err(DecodeError::NameMismatch {
            name: name.to_string(),
            expected: expected.to_string(),
        })
    }
}
