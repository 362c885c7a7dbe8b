//! The `admin:` section of meshd.yaml: who the admin endpoint answers (`listen.admin` is
//! where), and the checks that keep it off the network unless the configuration says so.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `admin:` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminSettings {
    /// Lets `listen.admin` be a non-loopback address. Anyone who reaches it reads the whole
    /// configuration and can stop meshd, so it is off by default and warned about when on.
    #[serde(default)]
    pub allow_remote: bool,
    /// Host names the admin endpoint answers to besides its address, loopback addresses and
    /// `localhost` (e.g. the machine's name when `allowRemote` is on). Any other `Host` header
    /// is refused (421): that is what stops DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
}

/// An `admin:` section that parses but must not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The admin endpoint would be reachable from other machines without the configuration
    /// saying so.
    #[error(
        "listen.admin: {addr} is not a loopback address: anyone who reaches it can read the whole configuration and stop meshd; keep it on loopback (use ssh -L to reach it) or set admin.allowRemote: true"
    )]
    RemoteAdmin {
        /// The address.
        addr: SocketAddr,
    },
    /// An `admin.allowedHosts` entry that is not a host name.
    #[error(
        "admin.allowedHosts[{index}]: {name:?} is not a host name (no port, no scheme, no spaces, not empty)"
    )]
    AllowedHost {
        /// Its position in the list.
        index: usize,
        /// The entry.
        name: String,
    },
}

impl AdminSettings {
    /// Refuses an admin endpoint at `listen` off loopback unless allowed, and malformed host
    /// names; returns a warning for an allowed remote endpoint. Run before the port is bound.
    pub fn check(&self, listen: Option<SocketAddr>) -> Result<Vec<String>, SettingsError> {
        for (index, name) in self.allowed_hosts.iter().enumerate() {
            // What the guard compares a Host header with is a bare name: a port, a scheme, a
            // user or a wildcard here would never match, or match what it should not.
            let malformed = name.is_empty()
                || name.chars().any(|c| {
                    c.is_whitespace()
                        || c.is_control()
                        || matches!(c, ':' | '/' | '[' | ']' | '@' | '*')
                });
            if malformed {
                return Err(SettingsError::AllowedHost {
                    index,
                    name: name.clone(),
                });
            }
        }
        let Some(addr) = listen else {
            return Ok(Vec::new());
        };
        if addr.ip().to_canonical().is_loopback() {
            return Ok(Vec::new());
        }
        if !self.allow_remote {
            return Err(SettingsError::RemoteAdmin { addr });
        }
        Ok(vec![format!(
            "listen.admin: {addr} accepts connections from other machines (admin.allowRemote: true): anyone who reaches it reads the configuration and can stop meshd"
        )])
    }
}
