//! The daemon configuration (`meshd.yaml`): identity, listeners, local workloads, plugins.

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use meshd_identity::{DevCaSource, IdentitySource};
use meshd_redirect::RedirectConfig;
use serde::{Deserialize, Serialize};

use crate::plugins::PluginSpec;

/// Default HBONE port, as ztunnel.
pub const HBONE_PORT: u16 = 15008;

/// meshd's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// SOCKS5 settings.
    #[serde(default)]
    pub socks5: Socks5Settings,
    /// Admin endpoint settings: who it answers (`listen.admin` is where).
    #[serde(default)]
    pub admin: AdminSettings,
    /// Threads that run connections. Default: 2, as ztunnel (`ZTUNNEL_WORKER_THREADS`), on
    /// machines with more than two CPUs; 1 on one or two, where meshd would otherwise contend
    /// with the workloads it serves for every CPU ([`default_worker_threads`]).
    #[serde(default = "default_worker_threads")]
    pub worker_threads: NonZeroUsize,
    /// The HBONE client's connection pool.
    #[serde(default)]
    pub pool: PoolSettings,
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
            socks5: Socks5Settings::default(),
            admin: AdminSettings::default(),
            worker_threads: default_worker_threads(),
            pool: PoolSettings::default(),
        }
    }
}

/// A daemon configuration that parses but must not run.
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

impl ProxyConfig {
    /// Checks what serde cannot: refuses outbound entries reachable from other machines unless
    /// allowed, and returns warnings for what is allowed but risky.
    pub fn check(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = self.check_admin()?;
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

    /// The admin endpoint's part of [`ProxyConfig::check`], for the daemon to run before it
    /// binds the admin port: off loopback only with `admin.allowRemote`, well-formed
    /// `admin.allowedHosts`.
    pub fn check_admin(&self) -> Result<Vec<String>, ConfigError> {
        self.admin.check(self.listen.admin)
    }

    /// The mark upstream sockets carry: needed only when traffic is captured.
    pub fn socket_mark(&self) -> Option<u32> {
        (self.listen.outbound.is_some() || self.listen.inbound_plaintext.is_some())
            .then_some(self.redirect.mark)
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
    /// Streams per HBONE connection before the pool opens another: 100 by default, as
    /// ztunnel's `POOL_MAX_STREAMS_PER_CONNECTION` (the peer's own limit caps it further).
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: NonZeroU32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        PoolSettings {
            unused_release_timeout: default_unused_release_timeout(),
            max_streams_per_connection: default_max_streams_per_connection(),
        }
    }
}

fn default_unused_release_timeout() -> Duration {
    meshd_hbone::DEFAULT_CLIENT_IDLE_TIMEOUT
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

impl AdminSettings {
    /// Refuses an admin endpoint off loopback unless allowed, and malformed host names.
    fn check(&self, listen: Option<SocketAddr>) -> Result<Vec<String>, ConfigError> {
        for (index, name) in self.allowed_hosts.iter().enumerate() {
            let malformed = name.is_empty()
                || name.chars().any(|c| {
                    c.is_whitespace()
                        || c.is_control()
                        || matches!(c, ':' | '/' | '[' | ']' | '@' | '*')
                });
            if malformed {
                return Err(ConfigError::AllowedHost {
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
            return Err(ConfigError::RemoteAdmin { addr });
        }
        Ok(vec![format!(
            "listen.admin: {addr} accepts connections from other machines (admin.allowRemote: true): anyone who reaches it reads the configuration and can stop meshd"
        )])
    }
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

/// Threads by default: ztunnel's two, or one where the process may use at most two CPUs.
///
/// On a two-CPU machine a second worker mostly wakes to find nothing to do: each connection's
/// tasks hop between the two threads (futex wake-ups) while the applications and the kernel's
/// network stack want the same CPUs. Measured with benches/e2e (two vCPUs, both machines
/// sharing them), one worker a side against two: the 1 KiB request/response rate went from
/// 0.79–0.82 to 0.97–0.99 of the plain relay's, CPU per GB with 8 streams from 1.39–1.42× to
/// 1.08–1.13× the relay's, and CPU per new connection from 272/320 µs to 172/184 µs
/// (client/server), with bulk throughput unchanged within noise.
pub fn default_worker_threads() -> NonZeroUsize {
    const ONE: NonZeroUsize = NonZeroUsize::MIN;
    const ZTUNNEL: NonZeroUsize = NonZeroUsize::new(2).expect("2 is not zero");
    match std::thread::available_parallelism() {
        Ok(cpus) if cpus.get() > 2 => ZTUNNEL,
        Ok(_) => ONE,
        Err(_) => ZTUNNEL,
    }
}

fn default_hbone_port() -> u16 {
    HBONE_PORT
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
