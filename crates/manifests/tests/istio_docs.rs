//! Istio's documentation YAML for WorkloadEntry and ServiceEntry, and the YAML forms found across
//! Istio's pages and `kubectl` output (multi-document files, comments, anchors, block scalars,
//! flow style, JSON), loaded as written (issue 9, item B). Each test cites its page and asserts
//! what was loaded, or, for forms meshd deliberately refuses (host names as workload addresses),
//! the exact error. AuthorizationPolicy and PeerAuthentication pages, decided by the engine, are
//! in `crates/rbac/tests/istio_docs.rs`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_manifests::{LoadOptions, Snapshot, load_str};

fn load(yaml: &str) -> Snapshot {
    match load_str("page.yaml", yaml, &LoadOptions::default()) {
        Ok(s) => s,
        Err(e) => panic!("documentation YAML does not load:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match load_str("page.yaml", yaml, &LoadOptions::default()) {
        Ok(s) => panic!("expected errors, loaded {}", s.summary()),
        Err(e) => e.errors().map(ToString::to_string).collect(),
    }
}

// ---- WorkloadEntry and ServiceEntry reference ---------------------------------------------

#[test]
fn workload_entry_reference_vm_with_its_service_entry() {
    // https://istio.io/latest/docs/reference/config/networking/workload-entry/ : comment lines
    // inside `spec`, no namespace, and a ServiceEntry of the same name (another kind) selecting
    // it, with `targetPort: 8080`.
    let snapshot = load(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
spec:
  # use of the service account indicates that the workload has a
  # sidecar proxy bootstrapped with this service account. Pods with
  # sidecars will automatically communicate with the workload using
  # istio mutual TLS.
  serviceAccount: details-legacy
  address: 2.2.2.2
  labels:
    app: details-legacy
    instance-id: vm1
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details-svc
spec:
  hosts:
  - details.bookinfo.com
  location: MESH_INTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
    targetPort: 8080
  resolution: STATIC
  workloadSelector:
    labels:
      app: details-legacy
",
    );
    let we = &snapshot.workload_entries[0].resource.spec;
    assert_eq!(we.address.as_deref(), Some("2.2.2.2"));
    assert_eq!(we.service_account.as_deref(), Some("details-legacy"));
    let se = &snapshot.service_entries[0].resource.spec;
    assert_eq!(
        (se.ports[0].number, se.ports[0].target_port),
        (Some(80), Some(8080))
    );
    let selector = &se.workload_selector.as_ref().unwrap().labels;
    assert!(selector.iter().all(|(k, v)| we.labels.get(k) == Some(v)));
}

#[test]
fn workload_entry_reference_dns_address_is_rejected() {
    // https://istio.io/latest/docs/reference/config/networking/workload-entry/ declares the VM
    // by DNS name; meshd resolves no names (a documented meshd restriction), and says so.
    assert_eq!(
        errors(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-svc
spec:
  serviceAccount: details-legacy
  address: vm1.vpc01.corp.net
  labels:
    app: details-legacy
    instance-id: vm1
"
        ),
        [
            "page.yaml:7:3: WorkloadEntry/default/details-svc: spec.address: \"vm1.vpc01.corp.net\" is not an IP address (meshd does not resolve workload hostnames)"
        ]
    );
}

#[test]
fn workload_entry_reference_network_without_address_is_rejected() {
    // https://istio.io/latest/docs/reference/config/networking/workload-entry/ : a remote
    // network's workloads without an address; meshd needs the address it serves.
    assert_eq!(
        errors(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: foo-workloads-cluster-2
spec:
  serviceAccount: foo
  network: cluster-2-network
  labels:
    app: foo
"
        ),
        [
            "page.yaml:5:1: WorkloadEntry/default/foo-workloads-cluster-2: spec.address: `address` is required: the workload's IP address"
        ]
    );
}

#[test]
fn service_entry_reference_mongo_cluster_with_trailing_comments() {
    // https://istio.io/latest/docs/reference/config/networking/service-entry/ : comments after
    // values (`# not used`, `# VIPs`), a VIP CIDR with host bits, inline endpoints.
    let snapshot = load(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-mongocluster
spec:
  hosts:
  - mymongodb.somedomain # not used
  addresses:
  - 192.192.192.192/24 # VIPs
  ports:
  - number: 27018
    name: mongodb
    protocol: MONGO
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
",
    );
    let se = &snapshot.service_entries[0].resource.spec;
    assert_eq!(se.hosts, ["mymongodb.somedomain"]);
    assert_eq!(se.addresses, ["192.192.192.192/24"]);
    let endpoints: Vec<_> = se
        .endpoints
        .iter()
        .flatten()
        .map(|e| e.address.as_deref().unwrap())
        .collect();
    assert_eq!(endpoints, ["2.2.2.2", "3.3.3.3"]);
}

/// The page's examples in one file: two of them give `example.com` to different ServiceEntries.
const SERVICE_ENTRY_EXTERNAL_PAGE: &str = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  - api.facebook.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-redirect
spec:
  hosts:
  - wikipedia.org
  - \"*.wikipedia.org\"
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-httpbin
  namespace: egress
spec:
  hosts:
  - example.com
  exportTo:
  - \".\"
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin
  namespace: httpbin-ns
spec:
  hosts:
  - example.com
  location: MESH_INTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 2.2.2.2
  - address: 3.3.3.3
  subjectAltNames:
  - \"spiffe://cluster.local/ns/httpbin-ns/sa/httpbin-service-account\"
";

#[test]
fn service_entry_reference_external_hosts_wildcards_export_to_and_sans() {
    // https://istio.io/latest/docs/reference/config/networking/service-entry/ : several external
    // hosts over TLS, quoted wildcard hosts, `exportTo: ["."]` and a SPIFFE subjectAltName. The
    // last example reuses `example.com` (renamed here): see the next test.
    let snapshot = load(&SERVICE_ENTRY_EXTERNAL_PAGE.replace(
        "  - example.com\n  location: MESH_INTERNAL",
        "  - httpbin.example.com\n  location: MESH_INTERNAL",
    ));
    assert_eq!(snapshot.service_entries.len(), 4);
    assert_eq!(
        snapshot.service_entries[1].resource.spec.hosts,
        ["wikipedia.org", "*.wikipedia.org"]
    );
}

#[test]
fn service_entry_reference_same_host_in_two_namespaces_is_refused() {
    // The same page, as written: Istio keeps `egress/external-svc-httpbin` to its own namespace
    // with `exportTo: ["."]`; meshd ignores `exportTo` (one directory, one scope), so its
    // registry would send every client's `example.com` to the first ServiceEntry only.
    assert_eq!(
        errors(SERVICE_ENTRY_EXTERNAL_PAGE),
        [
            "page.yaml:56:5: ServiceEntry/httpbin-ns/httpbin: spec.hosts[0]: host \"example.com\" is also a host of ServiceEntry/egress/external-svc-httpbin at page.yaml:39:5 (spec.hosts[0]): meshd resolves a host name to the first ServiceEntry carrying it as a host or as its name.namespace (case-insensitively), so this one would never be reached by that name; give each host name to one ServiceEntry"
        ]
    );
}

#[test]
fn service_entry_reference_dns_endpoints_are_rejected() {
    // https://istio.io/latest/docs/reference/config/networking/service-entry/ "external-svc-dns"
    // names its endpoints by host name: each is reported, with the same meshd restriction.
    let found = errors(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - foo.bar.com
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports:
      http: 8080
  - address: uk.foo.bar.com
    ports:
      http: 9080
  - address: in.foo.bar.com
    ports:
      http: 7080
",
    );
    assert_eq!(
        found,
        [
            "page.yaml:15:5: ServiceEntry/default/external-svc-dns: spec.endpoints[0].address: \"us.foo.bar.com\" is not an IP address (meshd does not resolve workload hostnames)",
            "page.yaml:18:5: ServiceEntry/default/external-svc-dns: spec.endpoints[1].address: \"uk.foo.bar.com\" is not an IP address (meshd does not resolve workload hostnames)",
            "page.yaml:21:5: ServiceEntry/default/external-svc-dns: spec.endpoints[2].address: \"in.foo.bar.com\" is not an IP address (meshd does not resolve workload hostnames)",
        ]
    );
}

#[test]
fn service_entry_endpoint_ports_are_integers() {
    // The same page's endpoint form, `ports: {http: 8080}` with integer values, with addresses
    // meshd can serve (IPs in place of the page's host names).
    let snapshot = load(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-svc-dns
spec:
  hosts:
  - foo.bar.com
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 192.0.2.1
    ports:
      http: 8080
  - address: 192.0.2.2
    ports: {http: 9080}
",
    );
    let ports: Vec<u32> = snapshot.service_entries[0]
        .resource
        .spec
        .endpoints
        .iter()
        .flatten()
        .map(|e| e.ports["http"])
        .collect();
    assert_eq!(ports, [8080, 9080]);
}

#[test]
fn service_entry_reference_unix_socket_endpoint_is_rejected() {
    // https://istio.io/latest/docs/reference/config/networking/service-entry/ : a Unix domain
    // socket endpoint, which meshd (an L4 proxy between machines) does not serve.
    assert_eq!(
        errors(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: unix-domain-socket-example
spec:
  hosts:
  - \"example.unix.local\"
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: unix:///var/run/example/socket
"
        ),
        [
            "page.yaml:15:5: ServiceEntry/default/unix-domain-socket-example: spec.endpoints[0].address: \"unix:///var/run/example/socket\" is a Unix domain socket: meshd serves workloads at IP addresses only"
        ]
    );
}

#[test]
fn service_entry_reference_vms_selected_by_labels() {
    // https://istio.io/latest/docs/reference/config/networking/service-entry/ : two
    // WorkloadEntries in one `---` stream, then the ServiceEntry selecting them by `app`.
    let snapshot = load(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-vm-1
spec:
  serviceAccount: details
  address: 2.2.2.2
  labels:
    app: details
    instance-id: vm1
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: details-vm-2
spec:
  serviceAccount: details
  address: 3.3.3.3
  labels:
    app: details
    instance-id: vm2
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details-svc
spec:
  hosts:
  - details.bookinfo.com
  location: MESH_INTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: STATIC
  workloadSelector:
    labels:
      app: details
",
    );
    assert_eq!(snapshot.workload_entries.len(), 2);
    assert_eq!(snapshot.service_entries.len(), 1);
}

// ---- YAML forms --------------------------------------------------------------------------

const PA: &str = "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: STRICT
";

#[test]
fn leading_trailing_and_empty_documents() {
    // `kubectl` output and hand-written files start with `---`, end with one, hold empty
    // documents, comment-only documents and `...` end markers: all are nothing, not errors.
    let text = format!(
        "---\n# generated\n---\n{PA}...\n---\n---\n# nothing here\n---\n{}---\n",
        PA.replace("namespace: foo", "namespace: bar")
    );
    let snapshot = load(&text);
    assert_eq!(snapshot.peer_authentications.len(), 2);
}

#[test]
fn anchors_and_aliases() {
    // YAML anchors reuse one list or mapping in several places; Kubernetes expands them.
    let snapshot = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: shared
  namespace: foo
  labels: &labels {app: web}
spec:
  selector:
    matchLabels: *labels
  rules:
  - from:
    - source:
        principals: &callers [cluster.local/ns/foo/sa/a, cluster.local/ns/foo/sa/b]
    to:
    - operation: {ports: ['80']}
  - from:
    - source:
        principals: *callers
    to:
    - operation: {ports: ['443']}
",
    );
    let policy = &snapshot.authorization_policies[0].resource;
    let rules = policy.spec.rules.as_ref().unwrap();
    let principals = |i: usize| {
        rules[i].from.as_ref().unwrap()[0]
            .source
            .as_ref()
            .unwrap()
            .principals
            .clone()
    };
    assert_eq!(principals(0), principals(1));
    assert_eq!(
        policy.spec.selector.as_ref().unwrap().match_labels["app"],
        "web"
    );
}

#[test]
fn kubectl_export_with_block_scalar_annotation() {
    // `kubectl get -o yaml` output: server fields, `status: {}`, and the last-applied JSON in a
    // literal block scalar (`|`).
    let snapshot = load(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {\"apiVersion\":\"security.istio.io/v1\",\"kind\":\"PeerAuthentication\",\"metadata\":{\"annotations\":{},\"name\":\"default\",\"namespace\":\"foo\"},\"spec\":{\"mtls\":{\"mode\":\"STRICT\"}}}
  creationTimestamp: \"2024-05-01T10:00:00Z\"
  generation: 1
  name: default
  namespace: foo
  resourceVersion: \"123456\"
  uid: 6f1c2a8e-8d6b-4c1e-9d1e-0a1b2c3d4e5f
spec:
  mtls:
    mode: STRICT
status: {}
",
    );
    let meta = &snapshot.peer_authentications[0].resource.metadata;
    assert!(
        meta.annotations["kubectl.kubernetes.io/last-applied-configuration"].ends_with("}}}\n")
    );
}

#[test]
fn flow_style_document_and_json() {
    // One-line flow mappings, and JSON (which `kubectl apply -f` takes as well).
    let snapshot = load(
        "{apiVersion: security.istio.io/v1, kind: PeerAuthentication, metadata: {name: a, namespace: foo}, spec: {mtls: {mode: STRICT}}}
---
{\"apiVersion\": \"security.istio.io/v1\", \"kind\": \"AuthorizationPolicy\", \"metadata\": {\"name\": \"b\", \"namespace\": \"foo\"}, \"spec\": {\"rules\": [{\"to\": [{\"operation\": {\"ports\": [\"8080\"]}}]}]}}
",
    );
    assert_eq!(snapshot.peer_authentications.len(), 1);
    assert_eq!(snapshot.authorization_policies.len(), 1);
}

#[test]
fn crlf_line_endings() {
    // Files saved on Windows.
    let snapshot = load(&PA.replace('\n', "\r\n"));
    assert_eq!(snapshot.peer_authentications.len(), 1);
}

#[test]
fn authorization_policy_ports_as_integers_are_rejected_clearly() {
    // Istio's `ports` are strings; the Kubernetes API server rejects `ports: [8080]` ("must be of
    // type string"), so meshd does too, saying how to fix it.
    assert_eq!(
        errors(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: tcp-policy, namespace: foo}
spec:
  rules:
  - to:
    - operation:
        ports: [8080, \"9001\"]
"
        ),
        [
            "page.yaml:8:17: AuthorizationPolicy/foo/tcp-policy: spec.rules[0].to[0].operation.ports[0]: expected a string, found an integer; quote it (\"8080\") if a string is meant"
        ]
    );
}

#[test]
fn service_entry_port_number_as_string_is_rejected_clearly() {
    // The reverse: `number` is an integer field, and Kubernetes rejects a string there.
    assert_eq!(
        errors(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: s, namespace: foo}
spec:
  hosts: [a.example.com]
  ports:
  - number: \"80\"
    name: http
"
        ),
        [
            "page.yaml:7:13: ServiceEntry/foo/s: spec.ports[0].number: expected an integer, found a string"
        ]
    );
}
