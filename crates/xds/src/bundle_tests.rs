//! istioctl's goldens (`istioctl/pkg/workload/testdata/vmconfig/ipv4`, Istio at the harness's
//! version) read as they are, and every rejection path.

use std::path::Path;

use super::*;

const GOLDEN_ENV: &str = "CANONICAL_REVISION='latest'
CANONICAL_SERVICE='foo'
CA_ADDR='istiod-rev-1.istio-system.svc:15012'
CLUSTER_MESH_CONFIG_VALUE='foo'
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
PROXY_CONFIG_ANNOT_VALUE='bar'
SERVICE_ACCOUNT='vm-serviceaccount'
TRUST_DOMAIN=''
";

const GOLDEN_MESH: &str = "defaultConfig:
  discoveryAddress: istiod-rev-1.istio-system.svc:15012
  proxyMetadata:
    CANONICAL_REVISION: latest
    ISTIO_META_DNS_CAPTURE: \"true\"
    SERVICE_ACCOUNT: vm-serviceaccount
    TRUST_DOMAIN: \"\"
  readinessProbe:
    httpGet:
      port: 8080
";

const GOLDEN_HOSTS: &str = "10.10.10.11 istiod-rev-1.istio-system.svc\n";

fn root_pem() -> String {
    let ca = meshd_identity::DevCa::generate("cluster.local").unwrap();
    ca.root_pem().to_string()
}

fn bundle(dir: &Path, env: &str, mesh: &str, hosts: Option<&str>) {
    std::fs::write(dir.join(CLUSTER_ENV), env).unwrap();
    std::fs::write(dir.join(MESH_YAML), mesh).unwrap();
    std::fs::write(dir.join(ROOT_CERT), root_pem()).unwrap();
    std::fs::write(dir.join(TOKEN), "").unwrap();
    if let Some(h) = hosts {
        std::fs::write(dir.join(HOSTS), h).unwrap();
    }
}

#[test]
fn istioctl_goldens_as_written() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), GOLDEN_ENV, GOLDEN_MESH, Some(GOLDEN_HOSTS));
    let s = load(dir.path()).unwrap();
    assert_eq!(s.address, "istiod-rev-1.istio-system.svc:15012");
    assert_eq!(s.ca_address, None, "CA_ADDR is the discovery address");
    assert_eq!(s.connect_to.as_deref(), Some("10.10.10.11"));
    let t = s.xds_target().unwrap();
    assert_eq!(t.server_name, "istiod-rev-1.istio-system.svc");
    assert_eq!(t.dial, "10.10.10.11:15012");
    assert_eq!(s.ca_target().unwrap(), t);
    assert_eq!(
        (s.namespace.as_str(), s.service_account.as_str()),
        ("bar", "vm-serviceaccount")
    );
    assert_eq!(
        s.trust_domain, "cluster.local",
        "TRUST_DOMAIN='' is Istio's default"
    );
    assert_eq!(s.cluster_id, "Kubernetes");
    assert_eq!(s.network, "");
    assert_eq!(s.mesh_id, None);
    assert_eq!(s.workload_name.as_deref(), Some("foo"));
    assert_eq!(s.labels["service.istio.io/canonical-name"], "foo");
    assert_eq!(s.labels["service.istio.io/canonical-revision"], "latest");
    assert_eq!(s.token_file, Some(dir.path().join(TOKEN)));
    assert_eq!(s.root_cert, dir.path().join(ROOT_CERT));
    assert_eq!(s.auto_register_group, None);
}

#[test]
fn ipv6_hosts_and_autoregistration() {
    let dir = tempfile::tempdir().unwrap();
    let env = format!("{GOLDEN_ENV}ISTIO_META_AUTO_REGISTER_GROUP='foo'\n")
        .replace("ISTIO_META_NETWORK=''", "ISTIO_META_NETWORK='vm-net'")
        .replace("TRUST_DOMAIN=''", "TRUST_DOMAIN='example.org'")
        .replace(
            "CA_ADDR='istiod-rev-1.istio-system.svc:15012'",
            "CA_ADDR='ca.example:15012'",
        );
    let hosts =
        "# istioctl\nfd00:10:96::2 istiod-rev-1.istio-system.svc\n\n10.0.0.9 ca.example other\n";
    bundle(dir.path(), &env, GOLDEN_MESH, Some(hosts));
    let s = load(dir.path()).unwrap();
    assert_eq!(s.xds_target().unwrap().dial, "[fd00:10:96::2]:15012");
    assert_eq!(s.ca_address.as_deref(), Some("ca.example:15012"));
    let ca = s.ca_target().unwrap();
    assert_eq!(
        (ca.server_name.as_str(), ca.dial.as_str()),
        ("ca.example", "10.0.0.9:15012")
    );
    assert_eq!(s.auto_register_group.as_deref(), Some("foo"));
    assert_eq!(s.network, "vm-net");
    assert_eq!(
        s.spiffe_id().unwrap().to_string(),
        "spiffe://example.org/ns/bar/sa/vm-serviceaccount"
    );
}

#[test]
fn mesh_yaml_without_discovery_address_means_istios_default() {
    let dir = tempfile::tempdir().unwrap();
    bundle(
        dir.path(),
        GOLDEN_ENV,
        "defaultConfig:\n  proxyMetadata: {}\n",
        None,
    );
    let s = load(dir.path()).unwrap();
    assert_eq!(s.address, "istiod.istio-system.svc:15012");
    assert_eq!(
        s.ca_address.as_deref(),
        Some("istiod-rev-1.istio-system.svc:15012")
    );
    assert_eq!(s.connect_to, None, "no hosts file: resolve the name");
}

/// Each malformed input names its file, line and key.
#[test]
fn every_rejection_names_file_line_and_key() {
    let replace = |from: &str, to: &str| GOLDEN_ENV.replace(from, to);
    /// (what, cluster.env, mesh.yaml, hosts, line, key)
    type Case<'a> = (&'a str, String, &'a str, Option<&'a str>, usize, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // (what, cluster.env, mesh.yaml, hosts, line, key)
        (
            "not KEY=value",
            format!("{GOLDEN_ENV}garbage\n"),
            GOLDEN_MESH,
            None,
            21,
            "garbage",
        ),
        (
            "bad variable name",
            format!("{GOLDEN_ENV}A-B='x'\n"),
            GOLDEN_MESH,
            None,
            21,
            "A-B",
        ),
        (
            "unterminated quote",
            replace("POD_NAMESPACE='bar'", "POD_NAMESPACE='bar"),
            GOLDEN_MESH,
            None,
            17,
            "POD_NAMESPACE",
        ),
        (
            "unquoted space",
            replace("POD_NAMESPACE='bar'", "POD_NAMESPACE=b ar"),
            GOLDEN_MESH,
            None,
            17,
            "POD_NAMESPACE",
        ),
        (
            "duplicate key",
            format!("{GOLDEN_ENV}SERVICE_ACCOUNT='x'\n"),
            GOLDEN_MESH,
            None,
            21,
            "SERVICE_ACCOUNT",
        ),
        (
            "missing namespace",
            replace("POD_NAMESPACE='bar'\n", ""),
            GOLDEN_MESH,
            None,
            0,
            "POD_NAMESPACE",
        ),
        (
            "empty service account",
            replace("SERVICE_ACCOUNT='vm-serviceaccount'", "SERVICE_ACCOUNT=''"),
            GOLDEN_MESH,
            None,
            19,
            "SERVICE_ACCOUNT",
        ),
        (
            "labels not JSON",
            replace("{\"service.istio.io/canonical-name\":\"foo\",", "{oops,"),
            GOLDEN_MESH,
            None,
            7,
            "ISTIO_METAJSON_LABELS",
        ),
        (
            "labels not strings",
            replace("\"foo\",\"service", "1,\"service"),
            GOLDEN_MESH,
            None,
            7,
            "ISTIO_METAJSON_LABELS",
        ),
        (
            "bad CA_ADDR",
            replace(
                "CA_ADDR='istiod-rev-1.istio-system.svc:15012'",
                "CA_ADDR='istiod:99999'",
            ),
            GOLDEN_MESH,
            None,
            3,
            "CA_ADDR",
        ),
        (
            "bad trust domain",
            replace("TRUST_DOMAIN=''", "TRUST_DOMAIN='bad/td'"),
            GOLDEN_MESH,
            None,
            0,
            "trustDomain",
        ),
        (
            "mesh.yaml syntax",
            GOLDEN_ENV.into(),
            "defaultConfig: [\n",
            None,
            1,
            "-",
        ),
        (
            "mesh.yaml two documents",
            GOLDEN_ENV.into(),
            "a: 1\n---\nb: 2\n",
            None,
            0,
            "-",
        ),
        (
            "defaultConfig not a map",
            GOLDEN_ENV.into(),
            "defaultConfig: 3\n",
            None,
            1,
            "discoveryAddress",
        ),
        (
            "discoveryAddress a list",
            GOLDEN_ENV.into(),
            "defaultConfig:\n  discoveryAddress: [a]\n",
            None,
            2,
            "defaultConfig.discoveryAddress",
        ),
        (
            "discoveryAddress bad",
            GOLDEN_ENV.into(),
            "defaultConfig:\n  discoveryAddress: http://x/y\n",
            None,
            0,
            "defaultConfig.discoveryAddress",
        ),
        (
            "hosts bad IP",
            GOLDEN_ENV.into(),
            GOLDEN_MESH,
            Some("# c\n10.10.10.300 istiod\n"),
            2,
            "10.10.10.300",
        ),
        (
            "hosts no name",
            GOLDEN_ENV.into(),
            GOLDEN_MESH,
            Some("10.10.10.11\n"),
            1,
            "10.10.10.11",
        ),
    ];
    for (what, env, mesh, hosts, line, key) in cases {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path(), &env, mesh, hosts);
        match load(dir.path()) {
            Err(Error::Bundle {
                file,
                line: l,
                key: k,
                reason,
            }) => {
                assert_eq!((l, k.as_str()), (line, key), "{what}: {reason}");
                assert!(file.starts_with(dir.path()), "{what}: {}", file.display());
                let shown = load(dir.path()).unwrap_err().to_string();
                assert!(
                    shown.contains(&format!("{}:{line}: {key}: ", file.display())),
                    "{what}: {shown}"
                );
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn missing_or_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), GOLDEN_ENV, GOLDEN_MESH, None);
    // istioctl's own golden root is a placeholder, not a certificate: refused, file named.
    std::fs::write(dir.path().join(ROOT_CERT), "fake-CA-cert").unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("root-cert.pem"), "{e}");
    for f in [CLUSTER_ENV, MESH_YAML, ROOT_CERT] {
        let dir = tempfile::tempdir().unwrap();
        bundle(dir.path(), GOLDEN_ENV, GOLDEN_MESH, None);
        std::fs::remove_file(dir.path().join(f)).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains(f), "{f}: {e}");
    }
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), GOLDEN_ENV, GOLDEN_MESH, None);
    std::fs::write(dir.path().join(CLUSTER_ENV), [0xff, 0xfe]).unwrap();
    assert!(matches!(
        load(dir.path()),
        Err(Error::Bundle { line: 0, .. })
    ));
    std::fs::write(
        dir.path().join(CLUSTER_ENV),
        vec![b'#'; (MAX_FILE + 1) as usize],
    )
    .unwrap();
    let e = load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("larger than"), "{e}");
    // No token file is not an error here (a persisted certificate may do).
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), GOLDEN_ENV, GOLDEN_MESH, None);
    std::fs::remove_file(dir.path().join(TOKEN)).unwrap();
    assert_eq!(load(dir.path()).unwrap().token_file, None);
}
