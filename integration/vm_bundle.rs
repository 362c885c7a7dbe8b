//! The directory `istioctl x workload entry configure` writes for a VM (`cluster.env`,
//! `mesh.yaml`, `root-cert.pem`, `istio-token`, `hosts`), written by the tests for a VM
//! joining the harness's istiod ([`crate::istiod::Istiod`]).
//!
//! The format follows istioctl's source (`istioctl/pkg/workload/workload.go`:
//! `createClusterEnv`, `createMeshConfig`, `createCertsTokens`, `createHosts`) and its goldens
//! (`istioctl/pkg/workload/testdata/vmconfig/ipv4/*.golden`) for an unrevisioned istiod: no
//! `CA_ADDR` (the VM uses `discoveryAddress`), keys sorted, values quoted as istio's
//! `shellescape.Quote` does.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use crate::istiod::{ISTIOD_HOST, Istiod};

/// What a bundle is made from: the WorkloadGroup's name, namespace and template service
/// account, and the command's flags.
#[derive(Debug, Clone)]
pub struct VmBundle {
    /// The WorkloadGroup's name (`ISTIO_META_WORKLOAD_NAME`, the canonical service).
    pub workload_group: String,
    /// The WorkloadGroup's namespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// `spec.template.serviceAccount` (`SERVICE_ACCOUNT`).
    pub service_account: String,
    /// `spec.metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `spec.template.network` (`ISTIO_META_NETWORK`).
    pub network: String,
    /// `--internalIP`: the VM's address (`ISTIO_SVC_IP`).
    pub vm_ip: IpAddr,
    /// `--autoregister` (`ISTIO_META_AUTO_REGISTER_GROUP`).
    pub auto_register: bool,
    /// The token written to `istio-token`.
    pub token: String,
    /// The mesh root written to `root-cert.pem`.
    pub root_cert_pem: String,
    /// `--clusterID` (`ISTIO_META_CLUSTER_ID`).
    pub cluster_id: String,
    /// The mesh config's `trustDomain` (`TRUST_DOMAIN`).
    pub trust_domain: String,
    /// `--ingressIP`: where the `hosts` file sends istiod's name.
    pub istiod_ip: IpAddr,
    /// istiod's port in `discoveryAddress`.
    pub istiod_port: u16,
}

impl VmBundle {
    /// A bundle for a VM at `vm_ip` in `namespace` as `service_account`, from WorkloadGroup
    /// `workload_group`, joining `istiod`: a fresh one-hour token, istiod's root, cluster ID,
    /// trust domain and address.
    pub fn for_istiod(
        istiod: &Istiod,
        namespace: &str,
        service_account: &str,
        workload_group: &str,
        vm_ip: IpAddr,
    ) -> VmBundle {
        VmBundle {
            workload_group: workload_group.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            labels: BTreeMap::new(),
            network: String::new(),
            vm_ip,
            auto_register: false,
            token: istiod.mint_token(namespace, service_account),
            root_cert_pem: istiod.root_cert_pem(),
            cluster_id: istiod.cluster_id().into(),
            trust_domain: istiod.trust_domain().into(),
            istiod_ip: istiod.address().ip(),
            istiod_port: istiod.address().port(),
        }
    }

    /// Writes the five files into `dir` (created if needed).
    ///
    /// # Panics
    /// When a file cannot be written.
    pub fn write(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        };
        let metadata = self.proxy_metadata();
        write("cluster.env", &self.cluster_env(&metadata));
        write("mesh.yaml", &self.mesh_yaml(&metadata));
        write("root-cert.pem", &self.root_cert_pem);
        // istioctl writes the TokenRequest's token as is, without a newline.
        write("istio-token", &self.token);
        write("hosts", &format!("{} {ISTIOD_HOST}\n", self.istiod_ip));
    }

    /// `defaultConfig.proxyMetadata` as `createMeshConfig` fills it.
    fn proxy_metadata(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        let (service, revision) = canonical(&labels, &self.workload_group);
        labels.insert("service.istio.io/canonical-name".into(), service.clone());
        labels.insert(
            "service.istio.io/canonical-revision".into(),
            revision.clone(),
        );
        let mut md = BTreeMap::new();
        let mut set = |k: &str, v: String| md.insert(k.to_string(), v);
        set("CANONICAL_SERVICE", service);
        set("CANONICAL_REVISION", revision);
        set("POD_NAMESPACE", self.namespace.clone());
        set("SERVICE_ACCOUNT", self.service_account.clone());
        set("TRUST_DOMAIN", self.trust_domain.clone());
        set("ISTIO_META_CLUSTER_ID", self.cluster_id.clone());
        set("ISTIO_META_MESH_ID", String::new());
        set("ISTIO_META_NETWORK", self.network.clone());
        set("ISTIO_META_WORKLOAD_NAME", self.workload_group.clone());
        // A Go map marshals with sorted keys and no spaces, as serde_json does a BTreeMap.
        set(
            "ISTIO_METAJSON_LABELS",
            serde_json::to_string(&labels).expect("labels as JSON"),
        );
        // --capture-dns defaults to true.
        set("ISTIO_META_DNS_CAPTURE", "true".into());
        if self.auto_register {
            set(
                "ISTIO_META_AUTO_REGISTER_GROUP",
                self.workload_group.clone(),
            );
        }
        md
    }

    /// `cluster.env`: the proxy metadata plus `createClusterEnv`'s overrides, one
    /// `KEY=value` line each, sorted.
    fn cluster_env(&self, metadata: &BTreeMap<String, String>) -> String {
        let mut env = metadata.clone();
        let overrides = [
            ("ISTIO_INBOUND_PORTS", "*".to_string()),
            ("ISTIO_NAMESPACE", self.namespace.clone()),
            (
                "ISTIO_SERVICE",
                format!("{}.{}", self.workload_group, self.namespace),
            ),
            ("ISTIO_SERVICE_CIDR", "*".into()),
            // 22 (ssh), 15090 (prometheus), 15021 and the default status port 15020.
            ("ISTIO_LOCAL_EXCLUDE_PORTS", "22,15090,15021,15020".into()),
            ("SERVICE_ACCOUNT", self.service_account.clone()),
            ("ISTIO_SVC_IP", self.vm_ip.to_string()),
        ];
        for (k, v) in overrides {
            env.insert(k.into(), v);
        }
        env.iter()
            .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
            .collect()
    }

    /// `mesh.yaml`: `defaultConfig` with the discovery address and the proxy metadata.
    fn mesh_yaml(&self, metadata: &BTreeMap<String, String>) -> String {
        let mut out = format!(
            "defaultConfig:\n  discoveryAddress: {ISTIOD_HOST}:{}\n  proxyMetadata:\n",
            self.istiod_port
        );
        let mut keys: Vec<&String> = metadata.keys().collect();
        keys.sort_by(|a, b| yaml_key_order(a, b));
        for k in keys {
            out.push_str(&format!("    {k}: {}\n", yaml_scalar(&metadata[k])));
        }
        out
    }
}

/// Writes `bundle` into `dir` (what `istioctl x workload entry configure -o dir` does).
pub fn vm_bundle(dir: &Path, bundle: &VmBundle) {
    bundle.write(dir);
}

/// The canonical service and revision of a workload's labels (istio's
/// `labels.CanonicalService`): the canonical label, then `app.kubernetes.io/*`, then
/// `app`/`version`; else the workload name and `latest`.
fn canonical(labels: &BTreeMap<String, String>, name: &str) -> (String, String) {
    let first = |keys: &[&str]| keys.iter().find_map(|k| labels.get(*k).cloned());
    let service = first(&[
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ])
    .unwrap_or_else(|| name.to_string());
    let revision = first(&[
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ])
    .unwrap_or_else(|| "latest".to_string());
    (service, revision)
}

/// istio's `shellescape.Quote`: its character class (`[^\\w@%+=:,./-]` in a raw string)
/// lists a backslash and the letter `w`, not word characters, so nearly every value is
/// single-quoted (the goldens show `CANONICAL_REVISION='latest'`).
fn shell_quote(value: &str) -> String {
    if value.is_empty() {
        return "''".into();
    }
    let safe = |c: char| "\\w@%+=:,./-".contains(c);
    if value.chars().all(safe) {
        return value.into();
    }
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

/// The order go-yaml writes map keys in: at the first differing character, two letters
/// compare as characters, otherwise a non-letter comes before a letter (so
/// `ISTIO_META_NETWORK` precedes `ISTIO_METAJSON_LABELS`, as in the golden mesh.yaml).
fn yaml_key_order(a: &str, b: &str) -> std::cmp::Ordering {
    for (x, y) in a.chars().zip(b.chars()) {
        if x == y {
            continue;
        }
        return match (x.is_alphabetic(), y.is_alphabetic()) {
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => x.cmp(&y),
        };
    }
    a.len().cmp(&b.len())
}

/// A YAML scalar as sigs.k8s.io/yaml writes a string: plain when that reads back as the
/// same string, double quotes for empty, boolean or numeric text, single quotes for text
/// with YAML syntax in it (the goldens' `ISTIO_METAJSON_LABELS: '{...}'`).
fn yaml_scalar(value: &str) -> String {
    let ambiguous = value.is_empty()
        || matches!(value, "true" | "false" | "null" | "~" | "yes" | "no")
        || value.parse::<f64>().is_ok();
    if ambiguous {
        return format!("\"{value}\"");
    }
    let special = value.starts_with(|c: char| "{[*&!|>'\"%@`#-?:,".contains(c))
        || value.contains(": ")
        || value.contains(" #")
        || value.ends_with(' ');
    if special {
        return format!("'{}'", value.replace('\'', "''"));
    }
    value.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inputs of istioctl's ipv4 golden (WorkloadGroup bar/foo, service account
    /// vm-serviceaccount, --internalIP 10.10.10.10, no trust domain in the mesh config).
    fn golden_inputs() -> VmBundle {
        VmBundle {
            workload_group: "foo".into(),
            namespace: "bar".into(),
            service_account: "vm-serviceaccount".into(),
            labels: BTreeMap::new(),
            network: String::new(),
            vm_ip: "10.10.10.10".parse().expect("ip"),
            auto_register: false,
            token: String::new(),
            root_cert_pem: "fake-CA-cert".into(),
            cluster_id: "Kubernetes".into(),
            trust_domain: String::new(),
            istiod_ip: "10.10.10.11".parse().expect("ip"),
            istiod_port: 15012,
        }
    }

    #[test]
    fn cluster_env_is_istioctls_golden() {
        // istioctl/pkg/workload/testdata/vmconfig/ipv4/cluster.env.golden without the lines
        // that come from that test's revision (CA_ADDR) and its mesh config and annotation
        // (CLUSTER_MESH_CONFIG_VALUE, PROXY_CONFIG_ANNOT_VALUE).
        let golden = "\
CANONICAL_REVISION='latest'
CANONICAL_SERVICE='foo'
ISTIO_INBOUND_PORTS='*'
ISTIO_LOCAL_EXCLUDE_PORTS='22,15090,15021,15020'
ISTIO_METAJSON_LABELS='{\"service.istio.io/canonical-name\":\"foo\",\"service.istio.io/canonical-revision\":\"latest\"}'
ISTIO_META_CLUSTER_ID='Kubernetes'
ISTIO_META_DNS_CAPTURE='true'
ISTIO_META_MESH_ID=''
ISTIO_META_NETWORK=''
ISTIO_META_WORKLOAD_NAME='foo'
ISTIO_NAMESPACE='bar'
ISTIO_SERVICE='foo.bar'
ISTIO_SERVICE_CIDR='*'
ISTIO_SVC_IP='10.10.10.10'
POD_NAMESPACE='bar'
SERVICE_ACCOUNT='vm-serviceaccount'
TRUST_DOMAIN=''
";
        let bundle = golden_inputs();
        assert_eq!(bundle.cluster_env(&bundle.proxy_metadata()), golden);
    }

    #[test]
    fn mesh_yaml_is_istioctls_golden() {
        // ipv4/mesh.yaml.golden for an unrevisioned istiod, without the same two test-only
        // keys and the WorkloadGroup's readiness probe.
        let golden = "\
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    CANONICAL_REVISION: latest
    CANONICAL_SERVICE: foo
    ISTIO_META_CLUSTER_ID: Kubernetes
    ISTIO_META_DNS_CAPTURE: \"true\"
    ISTIO_META_MESH_ID: \"\"
    ISTIO_META_NETWORK: \"\"
    ISTIO_META_WORKLOAD_NAME: foo
    ISTIO_METAJSON_LABELS: '{\"service.istio.io/canonical-name\":\"foo\",\"service.istio.io/canonical-revision\":\"latest\"}'
    POD_NAMESPACE: bar
    SERVICE_ACCOUNT: vm-serviceaccount
    TRUST_DOMAIN: \"\"
";
        let bundle = golden_inputs();
        assert_eq!(bundle.mesh_yaml(&bundle.proxy_metadata()), golden);
    }

    #[test]
    fn hosts_and_token_files_are_istioctls() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let mut bundle = golden_inputs();
        bundle.token = "a.b.c".into();
        bundle.write(dir.path());
        let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).expect("read");
        assert_eq!(read("hosts"), "10.10.10.11 istiod.istio-system.svc\n");
        assert_eq!(read("istio-token"), "a.b.c");
        assert_eq!(read("root-cert.pem"), "fake-CA-cert");
    }
}
