//! The daemon configuration (`meshd.yaml`): identity, listeners, local workloads, plugins.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use meshd_identity::{DevCaSource, IdentitySource};
use meshd_redirect::RedirectConfig;
use serde::Deserialize;

use crate::plugins::PluginSpec;

/// Default HBONE port, as ztunnel.
pub const HBONE_PORT: u16 = 15008;

/// meshd's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxyConfig {
    /// The directory of Istio YAML (policies, workloads, services).
    #[serde(default = "default_config_dir")]
    pub config_dir: PathBuf,
    /// The mesh trust domain: workload identities are `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The mesh root namespace: its policies apply mesh-wide.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// Where this meshd's certificate comes from.
    #[serde(default = "default_identity")]
    pub identity: IdentitySource,
    /// Which workloads are on this machine.
    #[serde(default)]
    pub local: LocalWorkloads,
    /// Listener addresses.
    #[serde(default)]
    pub listen: Listen,
    /// The port peers' meshd accept HBONE on.
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Explicit outbound listeners, for machines where traffic capture is not allowed.
    #[serde(default)]
    pub listeners: Vec<ExplicitListener>,
    /// Plugins, in order, after authorization.
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    /// Traffic-capture rules (`meshd redirect install`).
    #[serde(default)]
    pub redirect: RedirectConfig,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            config_dir: default_config_dir(),
            trust_domain: default_trust_domain(),
            root_namespace: default_root_namespace(),
            identity: default_identity(),
            local: LocalWorkloads::default(),
            listen: Listen::default(),
            hbone_port: default_hbone_port(),
            listeners: Vec::new(),
            plugins: Vec::new(),
            redirect: RedirectConfig::default(),
        }
    }
}

impl ProxyConfig {
    /// The mark upstream sockets carry: needed only when traffic is captured.
    pub fn socket_mark(&self) -> Option<u32> {
        (self.listen.outbound.is_some() || self.listen.inbound_plaintext.is_some())
            .then_some(self.redirect.mark)
    }
}

/// Which workloads are local. With neither list set, a workload is local when its address can
/// be bound on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkloads {
    /// Addresses of this machine.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// WorkloadEntries (`namespace/name`) on this machine.
    #[serde(default)]
    pub workloads: Vec<String>,
}

/// Listener addresses; `null` turns a listener off.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// Inbound HBONE (mTLS).
    #[serde(default = "default_hbone_listen")]
    pub hbone: SocketAddr,
    /// Inbound HBONE over QUIC (UDP; experimental, meshd to meshd only); off unless set.
    #[serde(default)]
    pub hbone_quic: Option<SocketAddr>,
    /// Captured inbound plaintext (15006); off unless set.
    #[serde(default)]
    pub inbound_plaintext: Option<SocketAddr>,
    /// Captured outbound traffic (15001); off unless set.
    #[serde(default)]
    pub outbound: Option<SocketAddr>,
    /// SOCKS5 (15080); off unless set.
    #[serde(default)]
    pub socks5: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            hbone: default_hbone_listen(),
            hbone_quic: None,
            inbound_plaintext: None,
            outbound: None,
            socks5: None,
        }
    }
}

/// `127.0.0.1:9080 → reviews.default:9080`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplicitListener {
    /// Where applications connect.
    pub listen: SocketAddr,
    /// `host:port` (a service host, `name.namespace`, or an IP).
    pub target: String,
}

impl ExplicitListener {
    /// Splits `target` into host and port.
    pub fn target(&self) -> Result<(String, u16), String> {
        let (host, port) = self
            .target
            .rsplit_once(':')
            .ok_or_else(|| format!("target {:?} is not host:port", self.target))?;
        let port = port
            .parse()
            .map_err(|_| format!("target {:?} has a bad port", self.target))?;
        Ok((
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        ))
    }
}

fn default_config_dir() -> PathBuf {
    PathBuf::from("/etc/meshd/mesh")
}

fn default_trust_domain() -> String {
    meshd_identity::DEFAULT_TRUST_DOMAIN.to_string()
}

fn default_root_namespace() -> String {
    meshd_policy::meta::DEFAULT_ROOT_NAMESPACE.to_string()
}

fn default_identity() -> IdentitySource {
    IdentitySource::DevCa(DevCaSource::new("/var/lib/meshd/dev-ca"))
}

fn default_hbone_port() -> u16 {
    HBONE_PORT
}

fn default_hbone_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], HBONE_PORT))
}
