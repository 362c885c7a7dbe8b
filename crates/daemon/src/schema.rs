//! The schema of `meshd.yaml`: which sections the file has and the top-level keys. The daemon
//! owns it; each section's type is the crate's that uses it (`listen:`, `local:`,
//! `listeners:`, `plugins:`, `socks5:`, `pool:` meshd-proxy's, `admin:` meshd-admin's,
//! `identity:` meshd-identity's, `redirect:` meshd-redirect's). How the file is layered with
//! the environment and flags is `settings.rs`.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;

use meshd_admin::AdminSettings;
use meshd_identity::{DevCaSource, IdentitySource, TrustDomain, WorkloadSource};
use meshd_proxy::plugins::PluginSpec;
use meshd_proxy::{
    ExplicitListener, HBONE_PORT, Listen, LocalWorkloads, PoolSettings, ProxyConfig, Socks5Settings,
};
use meshd_redirect::RedirectConfig;
use meshd_xds::ControlPlaneSettings;
use serde::{Deserialize, Serialize};

/// meshd's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshdConfig {
    /// The directory of Istio YAML (policies, workloads, services).
    #[serde(default = "default_config_dir")]
    pub config_dir: PathBuf,
    /// The mesh trust domain: workload identities are `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// Namespaces whose workloads are in another trust domain than `trustDomain` (federated
    /// peers); a workload's `security.meshd.io/trust-domain` annotation wins, istiod's
    /// workloads carry their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trust_domains: BTreeMap<String, TrustDomain>,
    /// The mesh root namespace: its policies apply mesh-wide.
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// Where this meshd's certificate comes from.
    #[serde(default = "default_identity")]
    pub identity: IdentitySource,
    /// One identity per local workload: by `<namespace>/<serviceAccount>`, where that service
    /// account's SVID comes from (pinned to its SPIFFE ID). Workloads of other service
    /// accounts are served under `identity`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workload_identities: BTreeMap<String, WorkloadSource>,
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
    /// istiod: workloads, services and policies over Delta xDS, merged with `configDir`'s,
    /// and the certificate from the Istio CA (`meshd run --istio-bundle DIR` fills it from
    /// what `istioctl x workload entry configure` writes). Absent: local files only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<ControlPlaneSettings>,
}

impl Default for MeshdConfig {
    fn default() -> Self {
        MeshdConfig {
            config_dir: default_config_dir(),
            trust_domain: default_trust_domain(),
            trust_domains: BTreeMap::new(),
            root_namespace: default_root_namespace(),
            identity: default_identity(),
            workload_identities: BTreeMap::new(),
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
            control_plane: None,
        }
    }
}

/// A configuration that parses but must not run: a section's own check refused it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The `admin:` section with `listen.admin`.
    #[error(transparent)]
    Admin(#[from] meshd_admin::SettingsError),
    /// The proxy's sections.
    #[error(transparent)]
    Proxy(#[from] meshd_proxy::ConfigError),
    /// The `controlPlane:` section, alone or against the identity and trust domain.
    #[error("controlPlane: {0}")]
    ControlPlane(String),
    /// A `workloadIdentities` entry whose source is the Istio CA, against `controlPlane:`.
    #[error("workloadIdentities.{key:?}.istioCa: {reason}")]
    WorkloadIstioCa {
        /// The entry's key (`namespace/serviceAccount`).
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A `trustDomains` key that no namespace can have: it would never apply.
    #[error(
        "trustDomains: {0:?} is not a namespace name (a DNS-1123 label: lower-case letters, digits and '-', at most 63)"
    )]
    TrustDomainsNamespace(String),
}

impl MeshdConfig {
    /// Every section's check: what serde cannot see (entries and the admin endpoint reachable
    /// from other machines unless allowed, malformed admin host names). Returns warnings for
    /// what is allowed but risky.
    pub fn check(&self) -> Result<Vec<String>, CheckError> {
        let mut warnings = self.check_admin()?;
        warnings.extend(self.proxy().check()?);
        self.check_control_plane()?;
        self.check_workload_istio_ca()?;
        if let Some(bad) = (self.trust_domains.keys()).find(|ns| !is_dns1123_label(ns)) {
            return Err(CheckError::TrustDomainsNamespace(bad.clone()));
        }
        Ok(warnings)
    }

    /// `controlPlane:` with the rest: its own fields, one trust domain for the mesh, and an
    /// identity istiod accepts (the Istio CA's certificate directory must be the one the CA
    /// client writes; a dev CA's certificate chains to no root istiod knows).
    pub fn check_control_plane(&self) -> Result<(), CheckError> {
        let Some(cp) = &self.control_plane else {
            return Ok(());
        };
        cp.validate()
            .map_err(|e| CheckError::ControlPlane(e.to_string()))?;
        if cp.trust_domain != self.trust_domain {
            return Err(CheckError::ControlPlane(format!(
                "trustDomain {:?} differs from controlPlane.trustDomain {:?}: the mesh has one",
                self.trust_domain, cp.trust_domain
            )));
        }
        match &self.identity {
            IdentitySource::IstioCa(ca) if ca.cert_dir != cp.cert_dir => {
                Err(CheckError::ControlPlane(format!(
                    "identity.istioCa.certDir {} is not controlPlane.certDir {}: the CA client writes the latter",
                    ca.cert_dir.display(),
                    cp.cert_dir.display()
                )))
            }
            IdentitySource::DevCa(_) => Err(CheckError::ControlPlane(
                "identity is the development CA, whose certificates istiod does not accept: use istioCa (the default with --istio-bundle), files or spiffeHelper chaining to istiod's root".to_string(),
            )),
            _ => Ok(()),
        }
    }

    /// `workloadIdentities` entries from the Istio CA: there is a `controlPlane:` to ask, the
    /// service account is in its trust domain (the CA issues in no other), and each keeps its
    /// certificate in a directory of its own (two clients writing one directory would present
    /// each other's certificates).
    pub fn check_workload_istio_ca(&self) -> Result<(), CheckError> {
        let mut dirs: BTreeMap<&std::path::Path, &str> = BTreeMap::new();
        for (key, source) in &self.workload_identities {
            let WorkloadSource::IstioCa(ca) = source else {
                continue;
            };
            let error = |reason: String| CheckError::WorkloadIstioCa {
                key: key.clone(),
                reason,
            };
            let Some(cp) = &self.control_plane else {
                return Err(error(
                    "needs controlPlane: (or --istio-bundle): the Istio CA is istiod's".into(),
                ));
            };
            let namespace = key.split_once('/').map_or(key.as_str(), |(ns, _)| ns);
            if let Some(td) = self.trust_domains.get(namespace)
                && td.as_str() != cp.trust_domain
            {
                return Err(error(format!(
                    "namespace {namespace} is in trust domain {td} (trustDomains), the Istio CA issues for {}",
                    cp.trust_domain
                )));
            }
            if ca.cert_dir == cp.cert_dir {
                return Err(error(format!(
                    "certDir {} is controlPlane.certDir, where meshd's own certificate is kept",
                    ca.cert_dir.display()
                )));
            }
            if let Some(other) = dirs.insert(&ca.cert_dir, key) {
                return Err(error(format!(
                    "certDir {} is also {other:?}'s",
                    ca.cert_dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The admin endpoint's part of [`MeshdConfig::check`], for the daemon to run before it
    /// binds the admin port.
    pub fn check_admin(&self) -> Result<Vec<String>, CheckError> {
        Ok(self.admin.check(self.listen.admin)?)
    }

    /// The proxy's part: its sections and the capture mark.
    pub fn proxy(&self) -> ProxyConfig {
        ProxyConfig {
            local: self.local.clone(),
            listen: self.listen.clone(),
            hbone_port: self.hbone_port,
            listeners: self.listeners.clone(),
            plugins: self.plugins.clone(),
            socks5: self.socks5.clone(),
            pool: self.pool.clone(),
            mark: self.redirect.mark,
            original_source: self.redirect.original_source,
        }
    }
}

/// Kubernetes' rule for a namespace name (RFC 1123 label), as the policy loader applies it.
fn is_dns1123_label(name: &str) -> bool {
    /// RFC 1123's limit on a label's length.
    const MAX_LABEL: usize = 63;
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    name.len() <= MAX_LABEL
        && edge_ok(name.chars().next())
        && edge_ok(name.chars().last())
        && (name.chars()).all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
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
