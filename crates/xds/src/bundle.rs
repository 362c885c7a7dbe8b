//! Reads what `istioctl x workload entry configure` writes for a VM, unchanged, as
//! [`ControlPlaneSettings`]: `cluster.env`, `mesh.yaml`, `root-cert.pem`, `istio-token`, `hosts`.
//!
//! `cluster.env` gives the identity and metadata (`POD_NAMESPACE`, `SERVICE_ACCOUNT`,
//! `TRUST_DOMAIN`, `CA_ADDR`, `ISTIO_META_*`, `ISTIO_METAJSON_LABELS`); `mesh.yaml` gives
//! `defaultConfig.discoveryAddress`; `hosts` maps istiod's name to the address the VM can reach
//! (the east-west gateway), which becomes `connectTo` while the name is still what istiod's
//! certificate is verified against. Keys meshd has no use for (`ISTIO_INBOUND_PORTS`,
//! `CANONICAL_*`, ...) are ignored; a malformed line is an error naming file, line and key.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use meshd_manifests::yaml::{self, Value};

use crate::Error;
use crate::settings::{
    ControlPlaneSettings, DEFAULT_ADDRESS, DEFAULT_TRUST_DOMAIN, split_host_port,
};

/// `cluster.env`: the VM's environment for pilot-agent.
pub const CLUSTER_ENV: &str = "cluster.env";
/// `mesh.yaml`: the proxy's mesh config.
pub const MESH_YAML: &str = "mesh.yaml";
/// `root-cert.pem`: istiod's root (configmap `istio-ca-root-cert`).
pub const ROOT_CERT: &str = "root-cert.pem";
/// `istio-token`: the service-account token (audience `istio-ca`, 1 h by default).
pub const TOKEN: &str = "istio-token";
/// `hosts`: lines for /etc/hosts mapping istiod's name to a reachable address.
pub const HOSTS: &str = "hosts";
/// Largest bundle file read: istioctl's files are a few KiB; a larger one is not a bundle.
const MAX_FILE: u64 = 1 << 20;

/// Reads the bundle in `dir` into settings; other fields keep their defaults.
pub fn load(dir: &Path) -> Result<ControlPlaneSettings, Error> {
    let env_path = dir.join(CLUSTER_ENV);
    let env = parse_env(&env_path, &read(&env_path)?)?;
    let get = |k: &str| env.get(k).map(|(_, v)| v.as_str());
    let required = |k: &str| -> Result<String, Error> {
        match env.get(k) {
            Some((_, v)) if !v.is_empty() => Ok(v.clone()),
            Some((line, _)) => Err(bad(&env_path, *line, k, "is empty")),
            None => Err(bad(&env_path, 0, k, "is missing")),
        }
    };

    let root_cert = dir.join(ROOT_CERT);
    meshd_identity::pem::read_certificates(&root_cert)?;
    let mut s = ControlPlaneSettings::new(
        root_cert,
        &required("POD_NAMESPACE")?,
        &required("SERVICE_ACCOUNT")?,
    );
    let mesh_path = dir.join(MESH_YAML);
    s.address = discovery_address(&mesh_path, &read(&mesh_path)?)?;
    check_address(&mesh_path, 0, "defaultConfig.discoveryAddress", &s.address)?;
    if let Some((line, ca)) = env.get("CA_ADDR").filter(|(_, v)| !v.is_empty()) {
        check_address(&env_path, *line, "CA_ADDR", ca)?;
        if *ca != s.address {
            s.ca_address = Some(ca.clone());
        }
    }
    let token = dir.join(TOKEN);
    if token.exists() {
        s.token_file = Some(token);
    }
    if let Some(v) = get("ISTIO_META_CLUSTER_ID").filter(|v| !v.is_empty()) {
        s.cluster_id = v.to_string();
    }
    s.network = get("ISTIO_META_NETWORK").unwrap_or_default().to_string();
    s.mesh_id = get("ISTIO_META_MESH_ID")
        .filter(|v| !v.is_empty())
        .map(String::from);
    s.trust_domain = match get("TRUST_DOMAIN") {
        Some(td) if !td.is_empty() => td.to_string(),
        _ => DEFAULT_TRUST_DOMAIN.to_string(),
    };
    s.workload_name = get("ISTIO_META_WORKLOAD_NAME")
        .filter(|v| !v.is_empty())
        .map(String::from);
    s.auto_register_group = get("ISTIO_META_AUTO_REGISTER_GROUP")
        .filter(|v| !v.is_empty())
        .map(String::from);
    if let Some((line, json)) = env.get("ISTIO_METAJSON_LABELS") {
        s.labels = labels(&env_path, *line, json)?;
    }
    let hosts_path = dir.join(HOSTS);
    if hosts_path.exists() {
        let hosts = parse_hosts(&hosts_path, &read(&hosts_path)?)?;
        apply_hosts(&mut s, &hosts);
    }
    s.validate().map_err(|e| match e {
        Error::Settings { field, reason } => bad(&env_path, 0, field, &reason),
        other => other,
    })?;
    Ok(s)
}

fn bad(file: &Path, line: usize, key: &str, reason: &str) -> Error {
    Error::Bundle {
        file: file.to_path_buf(),
        line,
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn read(path: &Path) -> Result<String, Error> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.len() > MAX_FILE {
        return Err(bad(path, 0, "-", &format!("larger than {MAX_FILE} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|_| bad(path, 0, "-", "is not UTF-8"))
}

fn check_address(file: &Path, line: usize, key: &str, addr: &str) -> Result<(), Error> {
    split_host_port(addr)
        .map(|_| ())
        .map_err(|r| bad(file, line, key, &r))
}

/// `KEY='value'` lines as istioctl writes them (also `KEY=value`, `KEY="value"`, comments,
/// `export `); a key given twice is refused rather than guessing which one counts.
fn parse_env(path: &Path, text: &str) -> Result<HashMap<String, (usize, String)>, Error> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let l = l.strip_prefix("export ").unwrap_or(l);
        let Some((key, value)) = l.split_once('=') else {
            return Err(bad(path, line, l, "not KEY=value"));
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(path, line, key, "not a variable name"));
        }
        let value = unquote(value).map_err(|r| bad(path, line, key, r))?;
        if out.insert(key.to_string(), (line, value)).is_some() {
            return Err(bad(path, line, key, "given twice"));
        }
    }
    Ok(out)
}

fn unquote(v: &str) -> Result<String, &'static str> {
    for q in ['\'', '"'] {
        if let Some(rest) = v.strip_prefix(q) {
            return match rest.strip_suffix(q) {
                Some(inner) if !inner.contains(q) => Ok(inner.to_string()),
                _ => Err("unterminated or nested quote"),
            };
        }
    }
    if v.contains(['\'', '"', ' ']) {
        return Err("unquoted value with a quote or a space");
    }
    Ok(v.to_string())
}

fn labels(path: &Path, line: usize, json: &str) -> Result<BTreeMap<String, String>, Error> {
    if json.is_empty() {
        return Ok(BTreeMap::new());
    }
    serde_json::from_str(json).map_err(|e| {
        bad(
            path,
            line,
            "ISTIO_METAJSON_LABELS",
            &format!("not a JSON object of strings: {e}"),
        )
    })
}

/// `defaultConfig.discoveryAddress`, or Istio's default when mesh.yaml does not set it.
fn discovery_address(path: &Path, text: &str) -> Result<String, Error> {
    let (docs, err) = yaml::parse_documents(text);
    if let Some(e) = err {
        return Err(bad(path, e.pos.line, "-", &e.message));
    }
    let mut docs = docs.into_iter().filter(|d| d.value != Value::Null);
    let (Some(doc), None) = (docs.next(), docs.next()) else {
        return Err(bad(path, 0, "-", "not exactly one YAML document"));
    };
    let Some(default_config) = field(path, &doc, "defaultConfig")? else {
        return Ok(DEFAULT_ADDRESS.to_string());
    };
    match field(path, default_config, "discoveryAddress")? {
        None => Ok(DEFAULT_ADDRESS.to_string()),
        Some(n) => match &n.value {
            Value::Scalar { text, .. } if !text.is_empty() => Ok(text.clone()),
            _ => Err(bad(
                path,
                n.pos.line,
                "defaultConfig.discoveryAddress",
                &format!("{} instead of host:port", n.describe()),
            )),
        },
    }
}

fn field<'a>(
    path: &Path,
    node: &'a yaml::Node,
    key: &str,
) -> Result<Option<&'a yaml::Node>, Error> {
    match &node.value {
        Value::Map(entries) => Ok(entries
            .iter()
            .find(|(k, _)| k.as_key() == Some(key))
            .map(|(_, v)| v)),
        Value::Null => Ok(None),
        _ => Err(bad(
            path,
            node.pos.line,
            key,
            &format!("parent is {}, not a mapping", node.describe()),
        )),
    }
}

/// `ip name [name...]` lines; the first address given for a name wins, as in /etc/hosts.
fn parse_hosts(path: &Path, text: &str) -> Result<HashMap<String, IpAddr>, Error> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let mut words = l.split_whitespace();
        let ip_text = words.next().unwrap_or_default();
        let ip: IpAddr = ip_text
            .parse()
            .map_err(|_| bad(path, i + 1, ip_text, "not an IP address"))?;
        let mut any = false;
        for name in words {
            any = true;
            out.entry(name.to_string()).or_insert(ip);
        }
        if !any {
            return Err(bad(path, i + 1, ip_text, "an address without a host name"));
        }
    }
    Ok(out)
}

fn apply_hosts(s: &mut ControlPlaneSettings, hosts: &HashMap<String, IpAddr>) {
    let host_of = |a: &str| split_host_port(a).ok().map(|(h, _)| h);
    if let Some(ip) = host_of(&s.address).and_then(|h| hosts.get(&h)) {
        s.connect_to = Some(ip.to_string());
    }
    if let Some(ca) = s.ca_address.clone()
        && let Some(ip) = host_of(&ca).and_then(|h| hosts.get(&h))
    {
        s.ca_connect_to = Some(ip.to_string());
    }
}

/// The bundle's files, for callers that watch them.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    [CLUSTER_ENV, MESH_YAML, ROOT_CERT, TOKEN, HOSTS]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
