//! Istio's own documentation YAML for AuthorizationPolicy (the reference page, the
//! authorization tasks and the ambient L4-policy page), copied as the pages print it
//! (indentation, quoting, flow lists, `v1beta1`, `---`), loaded and decided (issue 9, item B).
//! Each test cites its page and asserts the decision the page documents, or, where meshd
//! deliberately differs (`docs/istio-l4-authorization.md` §11), meshd's with its decision number.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use meshd_rbac::Engine;
use support::docs::{load, warnings};
use support::{conn, outcome};

// ---- AuthorizationPolicy reference ---------------------------------------------------------

#[test]
fn authorization_policy_reference_allow_with_http_attributes_allows_nothing_at_l4() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ first
    // example (both the v1beta1 and v1 tabs): its only rule uses methods, paths and a JWT
    // claim, which L4 cannot see, so the rule is ignored and the policy allows nothing (M2).
    for api in ["v1beta1", "v1"] {
        let (snapshot, engine) = load(&format!(
            "apiVersion: security.istio.io/{api}
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/default/sa/sleep\"]
    - source:
        namespaces: [\"test\"]
    to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/info*\"]
    - operation:
        methods: [\"POST\"]
        paths: [\"/data\"]
    when:
    - key: request.auth.claims[iss]
      values: [\"https://accounts.google.com\"]
"
        ));
        let sleep = "cluster.local/ns/default/sa/sleep";
        assert_eq!(
            outcome(
                &engine,
                &conn(sleep, "10.0.0.9", "foo/app=httpbin@10.0.0.2:80")
            ),
            "deny"
        );
        assert_eq!(
            warnings(&snapshot),
            [
                "page.yaml:8:3: warning: AuthorizationPolicy/foo/httpbin: spec.rules: no rule of this ALLOW policy is enforceable at L4: it allows nothing for the workloads it applies to",
                "page.yaml:9:5: warning: AuthorizationPolicy/foo/httpbin: spec.rules[0]: rule ignored: it uses L7 attributes (methods, paths, when request.auth.claims[iss]) that meshd cannot evaluate at L4 without a waypoint; the policy allows less than written",
            ]
        );
    }
}

#[test]
fn authorization_policy_reference_deny_post_from_dev() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/
    // "denies requests from the dev namespace to the POST method": at L4 the method cannot be
    // seen, so meshd denies everything from `dev` (fail closed, M1); others are untouched.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: [\"dev\"]
    to:
    - operation:
        methods: [\"POST\"]
",
    );
    let dst = "foo/app=httpbin@10.0.0.2:80";
    assert_eq!(
        outcome(&engine, &conn("cluster.local/ns/dev/sa/x", "10.0.0.9", dst)),
        "deny:foo/httpbin"
    );
    assert_eq!(
        outcome(
            &engine,
            &conn("cluster.local/ns/prod/sa/x", "10.0.0.9", dst)
        ),
        "allow"
    );
}

#[test]
fn authorization_policy_reference_deny_post_on_port_8080() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/
    // "all TCP traffic on port 8080 would be denied in the example above": exactly so.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin
  namespace: foo
spec:
  action: DENY
  rules:
  - to:
    - operation:
        methods: [\"POST\"]
        ports: [\"8080\"]
",
    );
    let peer = "cluster.local/ns/prod/sa/x";
    assert_eq!(
        outcome(&engine, &conn(peer, "10.0.0.9", "foo/app=a@10.0.0.2:8080")),
        "deny:foo/httpbin"
    );
    assert_eq!(
        outcome(&engine, &conn(peer, "10.0.0.9", "foo/app=a@10.0.0.2:9090")),
        "allow"
    );
}

#[test]
fn authorization_policy_reference_audit_never_decides() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ AUDIT
    // example, `namespace` written before `name`: AUDIT never changes a decision (M8).
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  namespace: ns1
  name: anyname
spec:
  selector:
    matchLabels:
      app: myapi
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: [\"GET\"]
        paths: [\"/user/profile/*\"]
",
    );
    assert_eq!(
        outcome(&engine, &conn("", "10.0.0.9", "ns1/app=myapi@10.0.0.2:80")),
        "allow"
    );
}

#[test]
fn authorization_policy_reference_allow_nothing_and_allow_all() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ : the
    // allow-nothing policy (one-space `metadata`, `spec:` then `{}` on its own line) denies all of
    // `foo`; the allow-all one (`rules:` then ` - {}`) allows all of `bar`.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-nothing
 namespace: foo
spec:
  {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-all
 namespace: bar
spec:
 rules:
 - {}
",
    );
    let peer = "cluster.local/ns/prod/sa/x";
    assert_eq!(
        outcome(&engine, &conn(peer, "10.0.0.9", "foo/app=a@10.0.0.2:80")),
        "deny"
    );
    assert_eq!(
        outcome(&engine, &conn("", "10.0.0.9", "bar/app=a@10.0.0.2:80")),
        "allow:bar/allow-all"
    );
}

#[test]
fn authorization_policy_reference_selector_scopes() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ : an
    // allow-nothing policy for `app: httpbin` in `bar`, and one in the root namespace for
    // `version: v1` in every namespace.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: bar
spec:
  selector:
    matchLabels:
      app: httpbin
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-nothing
 namespace: istio-system
spec:
 selector:
   matchLabels:
     version: v1
",
    );
    let peer = "cluster.local/ns/prod/sa/x";
    let decide = |to: &str| outcome(&engine, &conn(peer, "10.0.0.9", to));
    assert_eq!(decide("bar/app=httpbin@10.0.0.2:80"), "deny");
    assert_eq!(decide("bar/app=web@10.0.0.3:80"), "allow");
    assert_eq!(decide("baz/app=web,version=v1@10.0.0.4:80"), "deny");
    assert_eq!(decide("baz/app=web,version=v2@10.0.0.5:80"), "allow");
}

#[test]
fn authorization_policy_reference_dry_run_annotation() {
    // https://istio.io/latest/docs/reference/config/security/authorization-policy/ and
    // https://istio.io/latest/docs/tasks/security/authorization/authz-dry-run/ : a quoted
    // annotation key, no namespace (applied with `-n foo`, so `default` here); evaluated and
    // reported, never enforced.
    let (snapshot, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-run-example
  annotations:
    \"istio.io/dry-run\": \"true\"
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        paths: [\"/headers\"]
",
    );
    let decision = engine.decide(&conn("", "10.0.0.9", "default/app=httpbin@10.0.0.2:80"));
    assert!(decision.allowed(), "{decision}");
    assert_eq!(decision.dry_run.len(), 1, "{decision}");
    assert!(
        warnings(&snapshot)
            .iter()
            .any(|w| w.ends_with("metadata.annotations.istio.io/dry-run: dry-run policy: meshd evaluates and logs it but never enforces it")),
        "{:?}",
        warnings(&snapshot)
    );
}

// ---- Authorization tasks -------------------------------------------------------------------

#[test]
fn authz_tcp_task_allow_ports_9000_and_9001() {
    // https://istio.io/latest/docs/tasks/security/authorization/authz-tcp/ : ports 9000 and
    // 9001 allowed, 9002 (not in the service, same workload) rejected.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: ALLOW
  rules:
  - to:
    - operation:
        ports: [\"9000\", \"9001\"]
",
    );
    let sleep = "cluster.local/ns/foo/sa/sleep";
    let decide = |port: u16| {
        outcome(
            &engine,
            &conn(
                sleep,
                "10.0.0.9",
                &format!("foo/app=tcp-echo@10.0.0.2:{port}"),
            ),
        )
    };
    assert_eq!(decide(9000), "allow:foo/tcp-policy");
    assert_eq!(decide(9001), "allow:foo/tcp-policy");
    assert_eq!(decide(9002), "deny");
}

#[test]
fn authz_tcp_task_http_fields() {
    // https://istio.io/latest/docs/tasks/security/authorization/authz-tcp/ : an ALLOW rule
    // with `methods` is ignored (9000 and 9001 rejected); a DENY with only `methods` denies
    // everything; a DENY with `methods` and port 9000 denies 9000 only.
    let policy = |action: &str, operation: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: tcp-policy
  namespace: foo
spec:
  selector:
    matchLabels:
      app: tcp-echo
  action: {action}
  rules:
  - to:
    - operation:
{operation}"
        )
    };
    let sleep = "cluster.local/ns/foo/sa/sleep";
    let decide = |engine: &Engine, port: u16| {
        outcome(
            engine,
            &conn(
                sleep,
                "10.0.0.9",
                &format!("foo/app=tcp-echo@10.0.0.2:{port}"),
            ),
        )
    };
    let get_9000 = "        methods: [\"GET\"]\n        ports: [\"9000\"]\n";
    let (_, allow) = load(&policy("ALLOW", get_9000));
    assert_eq!(
        [decide(&allow, 9000), decide(&allow, 9001)],
        ["deny", "deny"]
    );
    let (_, deny_get) = load(&policy("DENY", "        methods: [\"GET\"]\n"));
    assert_eq!(
        [decide(&deny_get, 9000), decide(&deny_get, 9001)],
        ["deny:foo/tcp-policy", "deny:foo/tcp-policy"]
    );
    let (_, deny_9000) = load(&policy("DENY", get_9000));
    assert_eq!(
        [decide(&deny_9000, 9000), decide(&deny_9000, 9001)],
        ["deny:foo/tcp-policy", "allow"]
    );
}

#[test]
fn authz_deny_task_header_condition_and_path_allow() {
    // https://istio.io/latest/docs/tasks/security/authorization/authz-deny/ : DENY GET unless
    // `x-token: admin`, plus ALLOW `/ip`. Neither is visible at L4: the DENY matches everything
    // (M1), so every connection to httpbin is denied.
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: [\"GET\"]
    when:
    - key: request.headers[x-token]
      notValues: [\"admin\"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: allow-path-ip
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - to:
    - operation:
        paths: [\"/ip\"]
",
    );
    assert_eq!(
        outcome(
            &engine,
            &conn(
                "cluster.local/ns/foo/sa/sleep",
                "10.0.0.9",
                "foo/app=httpbin@10.0.0.2:8000"
            )
        ),
        "deny:foo/deny-method-get"
    );
}

#[test]
fn authz_ingress_task_ip_blocks() {
    // https://istio.io/latest/docs/tasks/security/authorization/authz-ingress/ : `ipBlocks`
    // with an address and a CIDR allow those sources only; `remoteIpBlocks` (an HTTP attribute,
    // M12) leaves the rule unenforceable, so it allows nothing.
    let policy = |field: &str| {
        format!(
            "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: ingress-policy
  namespace: istio-system
spec:
  selector:
    matchLabels:
      app: istio-ingressgateway
  action: ALLOW
  rules:
  - from:
    - source:
        {field}: [\"1.2.3.4\", \"5.6.7.0/24\"]
"
        )
    };
    let gateway = "istio-system/app=istio-ingressgateway@10.0.0.2:80";
    let (_, engine) = load(&policy("ipBlocks"));
    assert_eq!(
        outcome(&engine, &conn("", "5.6.7.9", gateway)),
        "allow:istio-system/ingress-policy"
    );
    assert_eq!(
        outcome(&engine, &conn("", "1.2.3.4", gateway)),
        "allow:istio-system/ingress-policy"
    );
    assert_eq!(outcome(&engine, &conn("", "9.9.9.9", gateway)), "deny");
    let (_, remote) = load(&policy("remoteIpBlocks"));
    assert_eq!(outcome(&remote, &conn("", "5.6.7.9", gateway)), "deny");
}

#[test]
fn authz_trust_domain_migration_task_block_lists_and_trailing_separator() {
    // https://istio.io/latest/docs/tasks/security/authorization/authz-td-migration/ : block
    // lists, `selector` after `rules`, a dotted name and a trailing `---`. The rule needs
    // `methods: GET`, which L4 cannot see: allow-nothing for httpbin (M2), and no aliasing of
    // `old-td` (M11).
    let (snapshot, engine) = load(
        "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: service-httpbin.default.svc.cluster.local
  namespace: default
spec:
  rules:
  - from:
    - source:
        principals:
        - old-td/ns/sleep-allow/sa/sleep
    to:
    - operation:
        methods:
        - GET
  selector:
    matchLabels:
      app: httpbin
---
",
    );
    assert_eq!(snapshot.authorization_policies.len(), 1);
    assert_eq!(
        outcome(
            &engine,
            &conn(
                "old-td/ns/sleep-allow/sa/sleep",
                "10.0.0.9",
                "default/app=httpbin@10.0.0.2:8000"
            )
        ),
        "deny"
    );
}

#[test]
fn ambient_l4_policy_page_one_space_indentation() {
    // https://istio.io/latest/docs/ambient/usage/l4-policy/ (S-L4DOC): one-space indentation,
    // no namespace; only `sleep` may reach httpbin, plaintext included in "all other sources".
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
",
    );
    let dst = "default/app=httpbin@10.0.0.2:8000";
    assert_eq!(
        outcome(
            &engine,
            &conn("cluster.local/ns/ambient-demo/sa/sleep", "10.0.0.9", dst)
        ),
        "allow:default/allow-sleep-to-httpbin"
    );
    assert_eq!(
        outcome(
            &engine,
            &conn("cluster.local/ns/ambient-demo/sa/curl", "10.0.0.9", dst)
        ),
        "deny"
    );
    assert_eq!(outcome(&engine, &conn("", "10.0.0.9", dst)), "deny");
}

#[test]
fn ambient_l4_policy_page_get_method_denies_the_connection() {
    // https://istio.io/latest/docs/ambient/usage/l4-policy/ : adding `methods: ["GET"]` makes
    // ztunnel "deny the connection" even for sleep; meshd likewise (the rule is ignored, M2).
    let (_, engine) = load(
        "apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
 name: allow-sleep-to-httpbin
spec:
 selector:
   matchLabels:
     app: httpbin
 action: ALLOW
 rules:
 - from:
   - source:
       principals:
       - cluster.local/ns/ambient-demo/sa/sleep
   to:
   - operation:
       methods: [\"GET\"]
",
    );
    assert_eq!(
        outcome(
            &engine,
            &conn(
                "cluster.local/ns/ambient-demo/sa/sleep",
                "10.0.0.9",
                "default/app=httpbin@10.0.0.2:8000"
            )
        ),
        "deny"
    );
}
