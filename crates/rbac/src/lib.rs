//! meshd's L4 authorization engine: Istio AuthorizationPolicy and PeerAuthentication, compiled.
//!
//! [`Engine::compile`] turns validated resources (from `meshd-policy`) into an indexed set of
//! matchers, and [`Engine::decide`] answers for one [`Connection`]: allow or deny, which policy
//! decided, and why. The semantics are Istio's as ztunnel enforces them, with meshd's own
//! fail-closed decisions where ztunnel fails open (numbered M1–M11 below; for users, the table in
//! docs/configuration.md, "How policies are enforced"):
//!
//! - Scope: root-namespace policies apply mesh-wide, others to their namespace;
//!   `selector.matchLabels` narrows to matching workloads (a root-namespace selector policy
//!   matches in every namespace); an empty selector applies to the whole namespace (M5);
//!   `targetRef(s)` policies are loaded but not enforced (M10).
//! - Order: a STRICT PeerAuthentication refuses plaintext first; then any matching DENY (or
//!   CUSTOM, which denies since meshd has no external authorizer at L4, M7) denies; then, if any
//!   ALLOW policy applies, one must match; else allow. AUDIT and dry-run policies never change a
//!   decision; their matches are reported.
//! - Rules: rules OR; `from`, `to` and each `when` AND; entries OR; fields AND; values OR; every
//!   `notX` holds when no value matches. Strings support exact, `x*`, `*x` and `*`; IP blocks
//!   are CIDR containment (host bits ignored, v4 and v6 apart); plaintext peers have no
//!   principal or namespace. `trustDomains` are enforced (M6); principals compare literally,
//!   with no trust-domain aliases (M11).
//! - Layer 7: an ALLOW rule using L7 attributes is dropped (the policy still applies, M2); in a
//!   DENY or CUSTOM rule the L7-only parts match everything, so the rule denies on its L4 parts
//!   alone (M1).
//! - PeerAuthentication: workload port level, workload, namespace, mesh, default PERMISSIVE;
//!   UNSET inherits, DISABLE acts as PERMISSIVE (M3, M4).
//!
//! - istiod's policies ([`Engine::compile_all`]): `istio.security.Authorization` resources
//!   (meshd-workloadapi), already converted to L4 by istiod, are a second input beside the
//!   files: GLOBAL applies mesh-wide, NAMESPACE to its namespace, WORKLOAD_SELECTOR only to
//!   destinations whose workload lists it ([`Destination::bound_policies`]). Same decision
//!   order; keys carry their source ([`PolicySource`]), so a file never shadows an istiod
//!   policy. An empty match (istiod's rendering of an L7-only part) matches every connection in
//!   a DENY and makes its group never match in an ALLOW (never an allow-all).
//!
//! It does not read files, validate resources (load them with `meshd-manifests`), or touch
//! connections: the proxy asks, the engine answers.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

mod compile;
mod connection;
mod decision;
mod engine;
mod istiod;
mod peer_authn;

use std::fmt;

pub use connection::{Connection, Destination, Peer};
pub use decision::{Decision, Reason};
pub use engine::Engine;
/// Policy keys a destination is bound to ([`Destination::bound_policies`]) are istiod's shared strings.
pub use meshd_workloadapi::Sym;
pub use peer_authn::EffectiveMode;

/// Where a policy came from. Keys of the two sources never collide: a file cannot shadow, replace
/// or weaken a policy istiod sent under the same `<namespace>/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PolicySource {
    /// A file of the configuration directory (AuthorizationPolicy or PeerAuthentication).
    #[default]
    File,
    /// An `istio.security.Authorization` from istiod.
    Istiod,
}

/// `<namespace>/<name>` of a policy, and its source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Where it came from.
    pub source: PolicySource,
}

impl PolicyKey {
    /// The key of a policy from a file.
    pub fn new(namespace: &str, name: &str) -> Self {
        PolicyKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            source: PolicySource::File,
        }
    }

    /// The key of a policy from istiod.
    pub fn istiod(namespace: &str, name: &str) -> Self {
        PolicyKey {
            source: PolicySource::Istiod,
            ..PolicyKey::new(namespace, name)
        }
    }
}

/// `<namespace>/<name>` for a file's policy, `istiod:<namespace>/<name>` for istiod's, so that
/// decisions, logs and `meshd authz check` name the source (`:` cannot occur in a namespace).
impl fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.source == PolicySource::Istiod {
            f.write_str("istiod:")?;
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Errors of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RbacError {
    /// A principal that is not `<trust-domain>/ns/<namespace>/sa/<service-account>`.
    #[error(
        "principal {0:?} is not of the form <trust-domain>/ns/<namespace>/sa/<service-account>"
    )]
    BadPrincipal(String),
}
