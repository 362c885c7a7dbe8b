//! One resource of any accepted kind.

use crate::authz::AuthorizationPolicy;
use crate::meta::{Kind, ObjectMeta, ResourceKey};
use crate::networking::{ServiceEntry, WorkloadEntry};
use crate::peer::PeerAuthentication;

/// A resource read from the configuration directory.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// A WorkloadEntry.
    WorkloadEntry(WorkloadEntry),
    /// A ServiceEntry.
    ServiceEntry(ServiceEntry),
}

impl Resource {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::PeerAuthentication(_) => Kind::PeerAuthentication,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
        }
    }

    /// The metadata.
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::PeerAuthentication(r) => &r.metadata,
            Resource::WorkloadEntry(r) => &r.metadata,
            Resource::ServiceEntry(r) => &r.metadata,
        }
    }

    /// (kind, namespace, name): unique within a snapshot.
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(self.kind(), self.meta())
    }
}
