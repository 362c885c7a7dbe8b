//! The proxy's sections of `meshd.yaml`: listeners, local workloads, explicit listeners,
//! plugins, SOCKS5 and the HBONE pool. The file's schema (which sections exist, the top-level
//! keys, the layers) is the daemon's: crates/daemon/src/schema.rs.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::plugins::PluginSpec;

/// Default HBONE port, as ztunnel.
pub const HBONE_PORT: u16 = 15008;

/// The proxy's part of meshd's configuration: what it binds, which workloads are local, the
/// plugins, the HBONE client's pool and the mark captured traffic's upstream sockets carry.
/// The sections are meshd.yaml's (`local:`, `listen:`, `hbonePort`, `listeners:`, `plugins:`,
/// `socks5:`, `pool:`); the file's schema is the daemon's (meshd-daemon, `MeshdConfig`), which
/// builds this from it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyConfig {
    /// Which workloads are on this machine.
    pub local: LocalWorkloads,
    /// Listener addresses.
    pub listen: Listen,
    /// The port peers' meshd accept HBONE on.
    pub hbone_port: u16,
    /// Explicit outbound listeners, for machines where traffic capture is not allowed.
    pub listeners: Vec<ExplicitListener>,
    /// Plugins, in order, after authorization.
    pub plugins: Vec<PluginSpec>,
    /// SOCKS5 settings.
    pub socks5: Socks5Settings,
    /// The HBONE client's connection pool.
    pub pool: PoolSettings,
    /// The mark upstream sockets carry when traffic is captured (`redirect.mark`), so the
    /// capture rules let meshd's own connections through.
    pub mark: u32,
    /// Connect to local workloads from the client's address (`redirect.originalSource`),
    /// from sockets carrying `mark` whether or not traffic is captured: the rules that bring
    /// the replies back select meshd's connections by it.
    pub original_source: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            local: LocalWorkloads::default(),
            listen: Listen::default(),
            hbone_port: HBONE_PORT,
            listeners: Vec::new(),
            plugins: Vec::new(),
            socks5: Socks5Settings::default(),
            pool: PoolSettings::default(),
            mark: meshd_redirect::RedirectConfig::default().mark,
            original_source: false,
        }
    }
}

/// A proxy configuration that parses but must not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// An outbound entry (SOCKS5, explicit listener) would be reachable from other machines
    /// without the configuration saying so.
    #[error(
        "{field}: {addr} is not a loopback address: anyone who reaches it borrows this machine's identity; set {allow} to allow it"
    )]
    RemoteEntry {
        /// The field, e.g. `listen.socks5` or `listeners[0].listen`.
        field: String,
        /// The address.
        addr: SocketAddr,
        /// The key that allows it.
        allow: String,
    },
    /// `listen.hboneQuic` is set in a meshd built without HBONE over QUIC.
    #[error(
        "listen.hboneQuic: {0}: HBONE over QUIC is not in this build (meshd's `quic` feature, off by default); remove the key or use a meshd built with `--features quic`"
    )]
    QuicNotBuilt(SocketAddr),
}

impl ProxyConfig {
    /// Checks what serde cannot: refuses outbound entries reachable from other machines unless
    /// allowed, and returns warnings for what is allowed but risky. (The admin endpoint's
    /// address is checked by meshd-admin's `AdminSettings::check`, before it is bound.)
    pub fn check(&self) -> Result<Vec<String>, ConfigError> {
        check_quic(&self.listen, meshd_hbone::QUIC_BUILT)?;
        let mut warnings = Vec::new();
        let mut entries = Vec::new();
        if let Some(addr) = self.listen.socks5 {
            entries.push((
                "listen.socks5".to_string(),
                addr,
                self.socks5.allow_remote,
                "socks5.allowRemote: true".to_string(),
            ));
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            entries.push((
                format!("listeners[{i}].listen"),
                listener.listen,
                listener.allow_remote,
                format!("listeners[{i}].allowRemote: true"),
            ));
        }
        for (field, addr, allowed, allow) in entries {
            if addr.ip().to_canonical().is_loopback() {
                continue;
            }
            if !allowed {
                return Err(ConfigError::RemoteEntry { field, addr, allow });
            }
            warnings.push(format!(
                "{field}: {addr} accepts connections from other machines ({allow}): anyone who reaches it connects with this machine's identity"
            ));
        }
        Ok(warnings)
    }

    /// The mark upstream sockets carry: needed only when traffic is captured.
    pub fn socket_mark(&self) -> Option<u32> {
        (self.listen.outbound.is_some() || self.listen.inbound_plaintext.is_some())
            .then_some(self.mark)
    }
}

/// A QUIC listener needs HBONE over QUIC compiled in (`built`: [`meshd_hbone::QUIC_BUILT`],
/// a parameter so that both answers are tested in either build).
fn check_quic(listen: &Listen, built: bool) -> Result<(), ConfigError> {
    match listen.hbone_quic {
        Some(addr) if !built => Err(ConfigError::QuicNotBuilt(addr)),
        _ => Ok(()),
    }
}

/// Which workloads are local. With neither list set, a workload is local when its address can
/// be bound on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// SOCKS5 (15080); off unless set. Loopback only unless `socks5.allowRemote`.
    #[serde(default)]
    pub socks5: Option<SocketAddr>,
    /// Admin endpoints (`/config_dump`, `/logging`, `/quitquitquit`); loopback only unless
    /// `admin.allowRemote`.
    #[serde(default = "default_admin_listen")]
    pub admin: Option<SocketAddr>,
    /// Prometheus metrics (`/metrics`, `/stats/prometheus`); loopback by default: the series
    /// name peer identities and policies.
    #[serde(default = "default_metrics_listen")]
    pub metrics: Option<SocketAddr>,
    /// Readiness (`/healthz/ready`); loopback by default.
    #[serde(default = "default_readiness_listen")]
    pub readiness: Option<SocketAddr>,
}

impl Listen {
    /// Every port a listener is configured on (0 where the system picks one).
    pub fn configured_ports(&self) -> impl Iterator<Item = u16> + '_ {
        [
            Some(self.hbone),
            self.hbone_quic,
            self.inbound_plaintext,
            self.outbound,
            self.socks5,
            self.admin,
            self.metrics,
            self.readiness,
        ]
        .into_iter()
        .flatten()
        .map(|a| a.port())
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            hbone: default_hbone_listen(),
            hbone_quic: None,
            inbound_plaintext: None,
            outbound: None,
            socks5: None,
            admin: default_admin_listen(),
            metrics: default_metrics_listen(),
            readiness: default_readiness_listen(),
        }
    }
}

/// `pool:` settings: ztunnel's two pool knobs, under the names of its environment variables.
///
/// Tunnels to one peer (one destination address and identity) share HBONE connections, up to
/// `maxStreamsPerConnection` streams each; a connection with no streams left is kept for
/// `unusedReleaseTimeout` so that the next tunnel skips the TCP and TLS handshakes. A shorter
/// timeout gives memory back sooner after a burst (each idle HBONE connection holds about
/// 150 KB on each side, mostly h2 and TLS state: docs/performance.md) at the price of a handshake
/// for traffic that comes back later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSettings {
    /// How long an unused HBONE connection stays open: `5m` by default, as ztunnel's
    /// `POOL_UNUSED_RELEASE_TIMEOUT`. Written like `30s`, `5m` or `1h`; zero is refused.
    #[serde(
        default = "default_unused_release_timeout",
        with = "meshd_identity::duration_text"
    )]
    pub unused_release_timeout: Duration,
    /// How long an unused HBONE connection stays open while an older one to the same peer is
    /// open: `10s` by default. After a burst the pool keeps its oldest connection for
    /// `unusedReleaseTimeout` and lets the others (idle, since tunnels fill the oldest first) go
    /// after this; no longer than `unusedReleaseTimeout` in effect. Zero is refused.
    #[serde(
        default = "default_surplus_release_timeout",
        with = "meshd_identity::duration_text"
    )]
    pub surplus_release_timeout: Duration,
    /// Streams per HBONE connection before the pool opens another: 100 by default, as
    /// ztunnel's `POOL_MAX_STREAMS_PER_CONNECTION` (the peer's own limit caps it further).
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: NonZeroU32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            unused_release_timeout: default_unused_release_timeout(),
            surplus_release_timeout: default_surplus_release_timeout(),
            max_streams_per_connection: default_max_streams_per_connection(),
        }
    }
}

fn default_unused_release_timeout() -> Duration {
    meshd_hbone::DEFAULT_CLIENT_IDLE_TIMEOUT
}

fn default_surplus_release_timeout() -> Duration {
    meshd_hbone::DEFAULT_CLIENT_SURPLUS_IDLE_TIMEOUT
}

fn default_max_streams_per_connection() -> NonZeroU32 {
    const ZTUNNEL: NonZeroU32 = NonZeroU32::new(meshd_hbone::DEFAULT_MAX_STREAMS_PER_CONNECTION)
        .expect("ztunnel's 100 is not zero");
    ZTUNNEL
}

/// `socks5:` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Socks5Settings {
    /// Lets `listen.socks5` be a non-loopback address. Anyone who reaches the port borrows this
    /// machine's identity, so it is off by default and warned about when on.
    #[serde(default)]
    pub allow_remote: bool,
}

/// `127.0.0.1:9080 → reviews.default:9080`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExplicitListener {
    /// Where applications connect: loopback unless `allowRemote`.
    pub listen: SocketAddr,
    /// `host:port` (a service host, `name.namespace`, or an IP).
    pub target: String,
    /// Lets `listen` be a non-loopback address (anyone who reaches it borrows this machine's
    /// identity).
    #[serde(default)]
    pub allow_remote: bool,
    /// The local workload (`namespace/name`) the listener's connections come from: they
    /// present its identity when meshd holds one of its own (`workloadIdentities`). Unset: the
    /// workload at the client's address, else the machine's only local workload, else meshd's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
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

/// Admin on loopback only, as ztunnel: it can change log levels and drain the proxy.
fn default_admin_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15000)))
}

/// Metrics on loopback unless configured: 15020 names every peer identity and policy that
/// decided a connection, which is not for the whole network to read.
fn default_metrics_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15020)))
}

/// Readiness on loopback unless configured (a local health check, or systemd's).
fn default_readiness_listen() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 15021)))
}

fn default_hbone_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], HBONE_PORT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quic_listen() -> Listen {
        Listen {
            hbone_quic: Some(SocketAddr::from(([127, 0, 0, 1], 15009))),
            ..Listen::default()
        }
    }

    #[test]
    fn a_quic_listener_is_refused_in_a_build_without_quic() {
        assert_eq!(
            check_quic(&quic_listen(), false),
            Err(ConfigError::QuicNotBuilt(SocketAddr::from((
                [127, 0, 0, 1],
                15009
            ))))
        );
        // Without the key there is nothing to refuse.
        assert_eq!(check_quic(&Listen::default(), false), Ok(()));
    }

    #[test]
    fn a_quic_listener_is_accepted_in_a_build_with_quic() {
        assert_eq!(check_quic(&quic_listen(), true), Ok(()));
    }

    #[test]
    fn the_proxy_check_follows_this_build() {
        let config = ProxyConfig {
            local: LocalWorkloads::default(),
            listen: quic_listen(),
            hbone_port: crate::HBONE_PORT,
            listeners: Vec::new(),
            plugins: Vec::new(),
            socks5: Socks5Settings::default(),
            pool: PoolSettings::default(),
            mark: 0,
            original_source: false,
        };
        let checked = config.check();
        if meshd_hbone::QUIC_BUILT {
            assert_eq!(checked, Ok(Vec::new()));
        } else {
            assert!(
                matches!(checked, Err(ConfigError::QuicNotBuilt(_))),
                "{checked:?}"
            );
        }
    }
}
