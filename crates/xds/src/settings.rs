//! The `controlPlane:` section of meshd.yaml: where istiod is and who this VM is to it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use meshd_identity::{SpiffeId, TrustDomain, duration_text};
use serde::{Deserialize, Serialize};

use crate::Error;

/// istiod's in-cluster address, Istio's default `discoveryAddress` (and ztunnel's XDS_ADDRESS).
pub const DEFAULT_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// istiod's port for xDS and the CA over TLS (Istio's default).
pub const DEFAULT_PORT: u16 = 15012;
/// `CLUSTER_ID` when none is configured: Istio's default cluster name.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Certificate lifetime asked of the CA: ztunnel's and pilot-agent's `SECRET_TTL` default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The shortest lifetime accepted: renewal at half-life must leave time for a round trip
/// (tests use a few seconds; production keeps hours).
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// Where the Istio-CA certificate is persisted when no `certDir` is given (meshd's state
/// directory; pilot-agent writes `/etc/certs`, which a non-root meshd cannot).
pub const DEFAULT_CERT_DIR: &str = "/var/lib/meshd/istio-certs";
/// `ISTIO_VERSION` sent in the node metadata: the Istio release whose wire contract meshd
/// speaks (istio.io/api v1.32.0 as vendored; istiod warns when the key is absent).
pub const DEFAULT_ISTIO_VERSION: &str = "1.32.0";
/// Trust domain when none is configured (Istio's default).
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// How meshd reaches istiod and presents itself (defaults as ztunnel and Istio).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneSettings {
    /// istiod's xDS address `host:port` (an `https://` prefix is accepted).
    #[serde(default = "default_address")]
    pub address: String,
    /// The name istiod's certificate is verified against; default: the host of `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Dial this `ip:port` (or `ip`, keeping the port of `address`) instead of resolving
    /// `address`: what istioctl's `hosts` file does for a VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_to: Option<String>,
    /// istiod's root certificate(s), PEM: the only roots istiod's certificate may chain to.
    /// Required (serde's default is empty so that a file may give only some keys on top of
    /// `--istio-bundle`; [`ControlPlaneSettings::validate`] refuses it empty).
    #[serde(default)]
    pub root_cert: PathBuf,
    /// A Kubernetes service-account token (audience `istio-ca`), read at each connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `CLUSTER_ID` metadata and `clusterid` header: the cluster whose API checks the token.
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// `NETWORK` metadata.
    #[serde(default)]
    pub network: String,
    /// `MESH_ID` metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_id: Option<String>,
    /// Trust domain of the identity asked of the CA.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The VM's namespace (`NAMESPACE`; the identity's namespace). Required, as `rootCert`.
    #[serde(default)]
    pub namespace: String,
    /// The VM's service account (`SERVICE_ACCOUNT`; the identity's service account). Required,
    /// as `rootCert`.
    #[serde(default)]
    pub service_account: String,
    /// `WORKLOAD_NAME` metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_name: Option<String>,
    /// The name in the node ID; default: `workloadName`, else the machine's host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `LABELS` metadata.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `AUTO_REGISTER_GROUP`: the WorkloadGroup istiod auto-registers this VM into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_register_group: Option<String>,
    /// The VM's mesh-reachable address (`INSTANCE_IPS`, the auto-registered WorkloadEntry's
    /// address); default: the local address the kernel picks towards istiod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_ip: Option<IpAddr>,
    /// Where the Istio-CA key, chain and root are persisted.
    #[serde(default = "default_cert_dir")]
    pub cert_dir: PathBuf,
    /// The CA's address; default: `address` (istiod is the CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_address: Option<String>,
    /// Dial override for the CA, like `connectTo`; default: `connectTo` when the CA is istiod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_connect_to: Option<String>,
    /// Certificate lifetime asked of the CA (`24h`, `90m`); renewed at half-life.
    #[serde(default = "default_ttl", with = "duration_text")]
    pub ttl: Duration,
    /// `ISTIO_VERSION` metadata.
    #[serde(default = "default_istio_version")]
    pub istio_version: String,
}

fn default_address() -> String {
    DEFAULT_ADDRESS.to_string()
}
fn default_cluster_id() -> String {
    DEFAULT_CLUSTER_ID.to_string()
}
fn default_trust_domain() -> String {
    DEFAULT_TRUST_DOMAIN.to_string()
}
fn default_cert_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CERT_DIR)
}
fn default_ttl() -> Duration {
    DEFAULT_TTL
}
fn default_istio_version() -> String {
    DEFAULT_ISTIO_VERSION.to_string()
}

/// Where to dial and which name to verify, for istiod's xDS or CA endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The TLS server name istiod's certificate must carry.
    pub server_name: String,
    /// `host:port` or `ip:port` that is dialled.
    pub dial: String,
}

impl ControlPlaneSettings {
    /// Settings with the defaults for everything but the required fields.
    pub fn new(root_cert: impl Into<PathBuf>, namespace: &str, service_account: &str) -> Self {
        ControlPlaneSettings {
            address: default_address(),
            hostname: None,
            connect_to: None,
            root_cert: root_cert.into(),
            token_file: None,
            cluster_id: default_cluster_id(),
            network: String::new(),
            mesh_id: None,
            trust_domain: default_trust_domain(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            workload_name: None,
            name: None,
            labels: BTreeMap::new(),
            auto_register_group: None,
            instance_ip: None,
            cert_dir: default_cert_dir(),
            ca_address: None,
            ca_connect_to: None,
            ttl: DEFAULT_TTL,
            istio_version: default_istio_version(),
        }
    }

    /// Checks every field that can be checked without the network.
    pub fn validate(&self) -> Result<(), Error> {
        if self.root_cert.as_os_str().is_empty() {
            return Err(settings(
                "rootCert",
                "is required: istiod's root certificate file",
            ));
        }
        self.xds_target()?;
        self.ca_target()?;
        if self.cluster_id.is_empty() {
            return Err(settings("clusterId", "is empty"));
        }
        if self.ttl < MIN_TTL {
            return Err(settings("ttl", "is shorter than two seconds"));
        }
        for (field, v) in [
            ("namespace", &self.namespace),
            ("serviceAccount", &self.service_account),
        ] {
            if v.is_empty() || v.contains(['~', '/']) {
                return Err(settings(field, format!("{v:?} is not a Kubernetes name")));
            }
        }
        if let Some(name) = &self.name
            && (name.is_empty() || name.contains('~'))
        {
            return Err(settings(
                "name",
                format!("{name:?} cannot be part of a node ID"),
            ));
        }
        self.spiffe_id()?;
        Ok(())
    }

    /// The identity the CA must issue: `spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>`.
    pub fn spiffe_id(&self) -> Result<SpiffeId, Error> {
        TrustDomain::new(&self.trust_domain).map_err(|e| settings("trustDomain", e.to_string()))?;
        SpiffeId::istio(&self.trust_domain, &self.namespace, &self.service_account)
            .map_err(|e| settings("serviceAccount", e.to_string()))
    }

    /// Where the xDS stream dials and which name it verifies.
    pub fn xds_target(&self) -> Result<Target, Error> {
        target(
            "address",
            &self.address,
            self.hostname.as_deref(),
            self.connect_to.as_deref(),
        )
    }

    /// Where the CA client dials and which name it verifies.
    pub fn ca_target(&self) -> Result<Target, Error> {
        match &self.ca_address {
            None => {
                let mut t = self.xds_target()?;
                if let Some(c) = &self.ca_connect_to {
                    t.dial = dial_override("caConnectTo", c, port_of(&t.dial))?;
                }
                Ok(t)
            }
            Some(ca) => target(
                "caAddress",
                ca,
                self.hostname.as_deref(),
                self.ca_connect_to.as_deref(),
            ),
        }
    }
}

fn settings(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Settings {
        field,
        reason: reason.into(),
    }
}

fn port_of(dial: &str) -> u16 {
    dial.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(DEFAULT_PORT)
}

fn target(
    field: &'static str,
    address: &str,
    hostname: Option<&str>,
    connect_to: Option<&str>,
) -> Result<Target, Error> {
    let (host, port) = split_host_port(address).map_err(|r| settings(field, r))?;
    let server_name = match hostname {
        Some("") => return Err(settings("hostname", "is empty")),
        Some(h) => h.to_string(),
        None => host.clone(),
    };
    rustls_pki_types::ServerName::try_from(server_name.clone())
        .map_err(|e| settings("hostname", format!("{server_name:?}: {e}")))?;
    let dial = match connect_to {
        Some(c) => dial_override(
            if field == "address" {
                "connectTo"
            } else {
                "caConnectTo"
            },
            c,
            port,
        )?,
        None if host.contains(':') => format!("[{host}]:{port}"),
        None => format!("{host}:{port}"),
    };
    Ok(Target { server_name, dial })
}

fn dial_override(field: &'static str, value: &str, port: u16) -> Result<String, Error> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    let (host, p) = split_host_port(value).map_err(|r| settings(field, r))?;
    Ok(if host.contains(':') {
        format!("[{host}]:{p}")
    } else {
        format!("{host}:{p}")
    })
}

/// Splits `host:port`, `[v6]:port`, with an optional `https://` prefix; the port defaults to
/// [`DEFAULT_PORT`].
pub(crate) fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let rest = address.strip_prefix("https://").unwrap_or(address);
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("is empty".into());
    }
    if rest.contains("://") || rest.contains('/') {
        return Err(format!(
            "{address:?} is not host:port (only https:// is accepted)"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("{address:?}: unterminated '['"))?;
        match tail.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if tail.is_empty() => (h, None),
            None => return Err(format!("{address:?} is not host:port")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, _)) if h.contains(':') => {
                return Err(format!("{address:?}: an IPv6 address needs brackets"));
            }
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{address:?} has no host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{address:?}: bad port {p:?}")),
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> ControlPlaneSettings {
        ControlPlaneSettings::new("/etc/istio/root-cert.pem", "bar", "vm-sa")
    }

    #[test]
    fn defaults_are_istios() {
        let s: ControlPlaneSettings = serde_json::from_str(
            r#"{"rootCert":"/r.pem","namespace":"bar","serviceAccount":"vm-sa"}"#,
        )
        .unwrap();
        assert_eq!(s, base().with_root("/r.pem"));
        assert_eq!(s.address, "istiod.istio-system.svc:15012");
        assert_eq!(s.cluster_id, "Kubernetes");
        assert_eq!(s.ttl, Duration::from_secs(86_400));
        assert_eq!(s.trust_domain, "cluster.local");
        let t = s.xds_target().unwrap();
        assert_eq!(t.server_name, "istiod.istio-system.svc");
        assert_eq!(t.dial, "istiod.istio-system.svc:15012");
        assert_eq!(s.ca_target().unwrap(), t);
        assert_eq!(
            s.spiffe_id().unwrap().to_string(),
            "spiffe://cluster.local/ns/bar/sa/vm-sa"
        );
        s.validate().unwrap();
    }

    impl ControlPlaneSettings {
        fn with_root(mut self, p: &str) -> Self {
            self.root_cert = p.into();
            self
        }
    }

    #[test]
    fn overrides_dial_and_name_separately() {
        let mut s = base();
        s.address = "https://istiod-rev-1.istio-system.svc:15012".into();
        s.connect_to = Some("10.10.10.11".into());
        let t = s.xds_target().unwrap();
        assert_eq!(t.server_name, "istiod-rev-1.istio-system.svc");
        assert_eq!(t.dial, "10.10.10.11:15012");
        s.connect_to = Some("[fd00::2]:1234".into());
        s.hostname = Some("istiod.example".into());
        let t = s.xds_target().unwrap();
        assert_eq!(
            (t.server_name.as_str(), t.dial.as_str()),
            ("istiod.example", "[fd00::2]:1234")
        );
        // The CA follows istiod unless told otherwise.
        assert_eq!(s.ca_target().unwrap(), t);
        s.ca_address = Some("ca.example:443".into());
        let t = s.ca_target().unwrap();
        assert_eq!(
            (t.server_name.as_str(), t.dial.as_str()),
            ("istiod.example", "ca.example:443")
        );
    }

    #[test]
    fn rejects_each_bad_field() {
        type Edit = fn(&mut ControlPlaneSettings);
        let cases: Vec<(Edit, &str)> = vec![
            (|s| s.address = "".into(), "address"),
            (|s| s.address = "http://istiod:15012".into(), "address"),
            (|s| s.address = "istiod:0".into(), "address"),
            (|s| s.address = "istiod:http".into(), "address"),
            (|s| s.address = "fd00::1:15012".into(), "address"),
            (|s| s.address = "[fd00::1".into(), "address"),
            (|s| s.hostname = Some("".into()), "hostname"),
            (|s| s.hostname = Some("bad name".into()), "hostname"),
            (|s| s.connect_to = Some("host:x".into()), "connectTo"),
            (|s| s.ca_address = Some(":1".into()), "caAddress"),
            (|s| s.ca_connect_to = Some("a/b".into()), "caConnectTo"),
            (|s| s.trust_domain = "bad/td".into(), "trustDomain"),
            (|s| s.cluster_id = "".into(), "clusterId"),
            (|s| s.ttl = Duration::from_secs(1), "ttl"),
            (|s| s.namespace = "".into(), "namespace"),
            (|s| s.service_account = "a~b".into(), "serviceAccount"),
            (|s| s.name = Some("x~y".into()), "name"),
        ];
        for (edit, field) in cases {
            let mut s = base();
            edit(&mut s);
            match s.validate() {
                Err(Error::Settings { field: f, .. }) => assert_eq!(f, field, "{s:?}"),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_and_missing_fields_are_refused() {
        for bad in [
            r#"{"rootCert":"/r","namespace":"a","serviceAccount":"b","tokenfile":"/t"}"#,
            r#"{"rootCert":"/r","namespace":"a","serviceAccount":"b","ttl":"soon"}"#,
        ] {
            assert!(
                serde_json::from_str::<ControlPlaneSettings>(bad).is_err(),
                "{bad}"
            );
        }
        // Required keys may come from another layer (--istio-bundle), so serde accepts their
        // absence and validate() names the one missing.
        for (text, field) in [
            (r#"{"namespace":"a","serviceAccount":"b"}"#, "rootCert"),
            (r#"{"rootCert":"/r","serviceAccount":"b"}"#, "namespace"),
            (r#"{"rootCert":"/r","namespace":"a"}"#, "serviceAccount"),
        ] {
            let s: ControlPlaneSettings = serde_json::from_str(text).unwrap();
            match s.validate() {
                Err(Error::Settings { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
