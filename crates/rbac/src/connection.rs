//! What the engine decides about: a connection as the receiving meshd sees it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use meshd_policy::authz::Labels;
use meshd_workloadapi::Sym;

use crate::RbacError;

/// The authenticated peer of an mTLS connection, in Istio's identity form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    principal: String,
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Peer {
    /// Parses an Istio principal, `<trust-domain>/ns/<namespace>/sa/<service-account>`
    /// (a leading `spiffe://` is accepted and dropped, as policies compare without it).
    pub fn from_principal(principal: &str) -> Result<Self, RbacError> {
        let bare = principal.strip_prefix("spiffe://").unwrap_or(principal);
        let parts: Vec<&str> = bare.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty() => {
                Ok(Peer {
                    principal: bare.to_string(),
                    trust_domain: (*td).to_string(),
                    namespace: (*ns).to_string(),
                    service_account: (*sa).to_string(),
                })
            }
            _ => Err(RbacError::BadPrincipal(principal.to_string())),
        }
    }

    /// Builds a peer from its parts.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Peer {
            principal: format!("{trust_domain}/ns/{namespace}/sa/{service_account}"),
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// `<td>/ns/<ns>/sa/<sa>`: what `principals` compare against.
    pub fn principal(&self) -> &str {
        &self.principal
    }

    /// The trust domain: what `trustDomains` compare against.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The identity's namespace: what `namespaces` compare against.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.principal)
    }
}

/// The destination workload of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's labels.
    pub labels: Labels,
    /// The workload's address.
    pub ip: IpAddr,
    /// The workload's (target) port the connection is for.
    pub port: u16,
    /// The istiod WORKLOAD_SELECTOR policies (`<namespace>/<name>`) istiod bound to the
    /// workload (its `authorization_policies`): istiod sends no labels, so this list is the only
    /// way such a policy applies. Empty for workloads from files.
    pub bound_policies: Arc<[Sym]>,
}

/// One connection to decide about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// The mTLS peer; `None` for plaintext.
    pub peer: Option<Peer>,
    /// The source address as received.
    pub source_ip: IpAddr,
    /// Where it goes.
    pub destination: Destination,
}

impl Connection {
    /// The principal, or `""` for plaintext (which no principal pattern matches).
    pub(crate) fn principal(&self) -> &str {
        self.peer.as_ref().map_or("", Peer::principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn principals_parse_in_istio_form_only() {
        let peer = Peer::from_principal("cluster.local/ns/a/sa/b").unwrap();
        assert_eq!(peer.namespace(), "a");
        assert_eq!(peer.service_account(), "b");
        assert_eq!(peer.trust_domain(), "cluster.local");
        assert_eq!(
            Peer::from_principal("spiffe://cluster.local/ns/a/sa/b").unwrap(),
            peer
        );
        for bad in [
            "",
            "cluster.local/ns/a",
            "cluster.local/ns/a/sa/b/c",
            "td/x/a/sa/b",
            "/ns/a/sa/b",
        ] {
            assert!(Peer::from_principal(bad).is_err(), "{bad}");
        }
    }
}
