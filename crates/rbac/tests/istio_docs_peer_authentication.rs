//! Istio's own documentation YAML for PeerAuthentication (the reference page and the
//! authentication tasks), copied as the pages print it (integer `portLevelMtls` keys, quoting,
//! `v1beta1`, `---`), loaded and decided (issue 9, item B). Each test cites its page and asserts
//! the mode the page documents, or meshd's with its decision number
//! (`docs/istio-l4-authorization.md` §11). AuthorizationPolicy pages are in
//! `istio_docs_authorization.rs`; the networking kinds and general YAML forms in
//! `crates/manifests/tests/istio_docs.rs`.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use support::docs::{load, strict, warnings};
use support::{conn, outcome};

// ---- PeerAuthentication reference --------------------------------------------------------

#[test]
fn peer_authentication_reference_strict_with_port_8080_plaintext() {
    // https://istio.io/latest/docs/reference/config/security/peer_authentication/
    // "strict mTLS for all finance workloads, but leaves the port 8080 to plaintext":
    // the integer key `8080:` used to be rejected with "expected a string".
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
",
    );
    let finance = [("app", "finance")];
    assert!(!strict(&engine, "foo", &finance, 8080)); // DISABLE acts as PERMISSIVE (M3)
    assert!(strict(&engine, "foo", &finance, 9090));
    assert_eq!(
        outcome(
            &engine,
            &conn("", "10.0.0.9", "foo/app=finance@10.0.0.2:8080")
        ),
        "allow"
    );
    assert_eq!(
        outcome(
            &engine,
            &conn("", "10.0.0.9", "foo/app=finance@10.0.0.2:9090")
        ),
        "deny:foo/default"
    );
}

#[test]
fn peer_authentication_reference_unset_inherits_and_overrides_port_8080() {
    // https://istio.io/latest/docs/reference/config/security/peer_authentication/
    // "inherits mTLS mode from namespace (or mesh) settings, and disables mTLS for workload port
    // 8080", here under a mesh-wide STRICT policy (a second document) to show the inheritance.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: UNSET
  portLevelMtls:
    8080:
      mode: DISABLE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
",
    );
    let finance = [("app", "finance")];
    assert!(!strict(&engine, "foo", &finance, 8080)); // port exempt (M4)
    assert!(strict(&engine, "foo", &finance, 8443)); // inherited from the mesh
}

#[test]
fn peer_authentication_reference_permissive_namespace_strict_finance() {
    // https://istio.io/latest/docs/reference/config/security/peer_authentication/
    // "allow both mTLS and plaintext traffic for all workloads under namespace foo, but require
    // mTLS for workload finance": two documents separated by `---`.
    let (snapshot, engine) = load(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
",
    );
    assert_eq!(snapshot.peer_authentications.len(), 2);
    assert!(strict(&engine, "foo", &[("app", "finance")], 80));
    assert!(!strict(&engine, "foo", &[("app", "web")], 80));
}

#[test]
fn peer_authentication_reference_v1beta1_spelling() {
    // https://istio.io/v1.19/docs/reference/config/security/peer_authentication/ prints every
    // example as `security.istio.io/v1beta1`; same meaning as v1.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
",
    );
    assert!(!strict(&engine, "foo", &[("app", "finance")], 8080));
    assert!(strict(&engine, "foo", &[("app", "finance")], 80));
}

// ---- Authentication tasks ----------------------------------------------------------------

#[test]
fn authn_policy_task_mesh_namespace_workload_and_port_levels() {
    // https://istio.io/latest/docs/tasks/security/authentication/authn-policy/ : the mesh-wide
    // policy with quoted strings, the per-workload one in `bar` with `portLevelMtls: 8080:`,
    // and the workload "overwrite-example" DISABLE that beats the namespace STRICT in `foo`.
    let (snapshot, engine) = load(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: \"default\"
  namespace: \"istio-system\"
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: \"default\"
  namespace: \"foo\"
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: \"httpbin\"
  namespace: \"bar\"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: \"overwrite-example\"
  namespace: \"foo\"
spec:
  selector:
    matchLabels:
      app: httpbin
  mtls:
    mode: DISABLE
",
    );
    let httpbin = [("app", "httpbin")];
    assert!(!strict(&engine, "bar", &httpbin, 8080));
    assert!(strict(&engine, "bar", &httpbin, 8000));
    assert!(!strict(&engine, "foo", &httpbin, 8000)); // workload beats namespace
    assert!(strict(&engine, "foo", &[("app", "curl")], 8000));
    assert!(strict(&engine, "legacy", &httpbin, 8000)); // the mesh-wide STRICT
    // DISABLE is accepted with meshd's warning (M3).
    assert_eq!(
        warnings(&snapshot)
            .iter()
            .filter(|w| w.contains("DISABLE acts as PERMISSIVE"))
            .count(),
        2
    );
}

#[test]
fn mtls_migration_task_quoted_api_version_and_kind() {
    // https://istio.io/latest/docs/tasks/security/authentication/mtls-migration/ quotes
    // `apiVersion`, `kind` and `name`, and omits the namespace (it applies with `-n foo`): in a
    // directory the resource lands in `default`, as `kubectl apply` without `-n`.
    let (snapshot, engine) = load(
        "apiVersion: \"security.istio.io/v1beta1\"
kind: \"PeerAuthentication\"
metadata:
  name: \"default\"
spec:
  mtls:
    mode: STRICT
",
    );
    assert_eq!(
        snapshot.peer_authentications[0]
            .resource
            .metadata
            .namespace(),
        "default"
    );
    assert!(strict(&engine, "default", &[], 8000));
    assert!(!strict(&engine, "foo", &[], 8000));
}
