//! The engine's answer: allow or deny, which policy decided, and why in words.

use std::fmt;

use crate::PolicyKey;

/// Why a connection was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// No ALLOW policy applies to the destination, and no DENY matched.
    NoAllowPolicies,
    /// This ALLOW policy matched.
    Allowed(PolicyKey),
    /// This DENY policy matched.
    Denied(PolicyKey),
    /// This CUSTOM policy matched; meshd has no external authorizer at L4, so it denies.
    CustomDenied(PolicyKey),
    /// ALLOW policies apply to the destination but none matched.
    NotAllowed,
    /// The connection is plaintext and this PeerAuthentication makes the port STRICT.
    PlaintextRefused {
        /// The PeerAuthentication that set STRICT.
        peer_authentication: PolicyKey,
        /// The destination port.
        port: u16,
    },
}

/// A decision about one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Why, naming the deciding policy.
    pub reason: Reason,
    /// AUDIT policies that matched (they never change the decision).
    pub audited: Vec<PolicyKey>,
    /// Dry-run policies that matched, with whether they would have allowed.
    pub dry_run: Vec<(PolicyKey, bool)>,
}

impl Decision {
    /// True when the connection may proceed.
    pub fn allowed(&self) -> bool {
        matches!(self.reason, Reason::NoAllowPolicies | Reason::Allowed(_))
    }

    /// The policy that decided, if one did.
    pub fn policy(&self) -> Option<&PolicyKey> {
        match &self.reason {
            Reason::Allowed(k) | Reason::Denied(k) | Reason::CustomDenied(k) => Some(k),
            Reason::PlaintextRefused {
                peer_authentication,
                ..
            } => Some(peer_authentication),
            Reason::NoAllowPolicies | Reason::NotAllowed => None,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoAllowPolicies => f.write_str(
                "allowed: no ALLOW policy applies to the destination and no DENY policy matched",
            ),
            Reason::Allowed(k) => write!(f, "allowed by ALLOW policy {k}"),
            Reason::Denied(k) => write!(f, "denied by DENY policy {k}"),
            Reason::CustomDenied(k) => write!(
                f,
                "denied by CUSTOM policy {k}: meshd has no external authorizer at L4, so a matching CUSTOM policy denies"
            ),
            Reason::NotAllowed => {
                f.write_str("denied: ALLOW policies apply to the destination, but none matched")
            }
            Reason::PlaintextRefused {
                peer_authentication,
                port,
            } => write!(
                f,
                "plaintext refused: PeerAuthentication {peer_authentication} requires mTLS (STRICT) on port {port}"
            ),
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.reason)?;
        if !self.audited.is_empty() {
            let names: Vec<String> = self.audited.iter().map(ToString::to_string).collect();
            write!(f, "; audited by {}", names.join(", "))?;
        }
        for (key, allow) in &self.dry_run {
            let would = if *allow { "allow" } else { "deny" };
            write!(f, "; dry-run policy {key} would {would}")?;
        }
        Ok(())
    }
}
