//! Table-driven semantics: each case is policy YAML, connections, and the expected decision with
//! the deciding policy, citing where the rule comes from. Sources are the ids of
//! `docs/istio-l4-authorization.md` (S-API: Istio's API reference; S-L4DOC: "Use Layer 4 security
//! policy"; S-RBAC/S-ZST: ztunnel's matcher and decision order; S-CONV: istiod's conversion;
//! M1..M12: meshd's own decisions in its §11).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use support::{conn, engine, outcome};

const WEB: &str = "cluster.local/ns/frontend/sa/web";
const API: &str = "cluster.local/ns/backend/sa/api";
const FOREIGN: &str = "example.org/ns/frontend/sa/web";
const PLAIN: &str = "";
const DST: &str = "app/app=web@10.0.0.2:8080";

macro_rules! cases {
    ($(
        $(#[$meta:meta])*
        $name:ident {
            cite: $cite:expr,
            $(root: $root:expr,)?
            yaml: $yaml:expr,
            checks: [ $( ($from:expr, $src:expr, $to:expr) => $expect:expr ),* $(,)? ] $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[test]
        fn $name() {
            let _cite: &str = $cite;
            #[allow(unused_mut, unused_assignments)]
            let mut root = "istio-system";
            $( root = $root; )?
            let engine = engine($yaml, root);
            $(
                let c = conn($from, $src, $to);
                assert_eq!(outcome(&engine, &c), $expect, "case {} ({}): {:?}", stringify!($name), $cite, c);
            )*
        }
    )*};
}

cases! {
    // ---- scope -------------------------------------------------------------------------------
    no_policy_allows {
        cite: "S-L4DOC: when there is no authorization policy provisioned the default action is ALLOW",
        yaml: "",
        checks: [(WEB, "10.0.0.1", DST) => "allow", (PLAIN, "10.0.0.1", DST) => "allow"],
    }
    namespace_policy_applies_to_its_namespace_only {
        cite: "S-API: a policy in a namespace other than the root applies to that namespace",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-web, namespace: app}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/only-web",
            (API, "10.0.0.1", DST) => "deny",
            (API, "10.0.0.1", "other/app=web@10.0.0.3:8080") => "allow",
        ],
    }
    root_namespace_policy_is_mesh_wide {
        cite: "S-API: if set to the root namespace, the policy applies to all namespaces in a mesh",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/backend/sa/api]}}]
",
        checks: [
            (API, "10.0.0.1", DST) => "deny:istio-system/deny-api",
            (API, "10.0.0.1", "other/x=y@10.0.0.3:80") => "deny:istio-system/deny-api",
            (API, "10.0.0.1", "istio-system/x=y@10.0.0.4:80") => "deny:istio-system/deny-api",
            (WEB, "10.0.0.1", DST) => "allow",
        ],
    }
    selector_narrows_to_matching_workloads {
        cite: "S-API selector: workloads whose labels are a superset of matchLabels",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: app}
spec:
  selector: {matchLabels: {app: web, tier: front}}
  rules:
  - from: [{source: {namespaces: [frontend]}}]
",
        checks: [
            (API, "10.0.0.1", "app/app=web,tier=front,v=1@10.0.0.2:8080") => "deny",
            (WEB, "10.0.0.1", "app/app=web,tier=front@10.0.0.2:8080") => "allow:app/web-only",
            (API, "10.0.0.1", "app/app=web@10.0.0.2:8080") => "allow",
            (API, "10.0.0.1", "app/app=web,tier=back@10.0.0.2:8080") => "allow",
        ],
    }
    root_namespace_selector_matches_in_every_namespace {
        cite: "S-API selector field comment; S-IDX global-selector attached to a pod in ns1",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: v1-deny, namespace: istio-system}
spec:
  selector: {matchLabels: {version: v1}}
  action: DENY
  rules: [{}]
",
        checks: [
            (WEB, "10.0.0.1", "app/version=v1@10.0.0.2:80") => "deny:istio-system/v1-deny",
            (WEB, "10.0.0.1", "other/version=v1@10.0.0.3:80") => "deny:istio-system/v1-deny",
            (WEB, "10.0.0.1", "other/version=v2@10.0.0.3:80") => "allow",
        ],
    }
    configured_root_namespace_is_honoured {
        cite: "S-API: the root namespace is the mesh config rootNamespace; istio-system is then ordinary",
        root: "mesh-root",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: istio-system}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api, namespace: mesh-root}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [backend]}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow",
            (API, "10.0.0.1", DST) => "deny:mesh-root/deny-api",
            (WEB, "10.0.0.1", "istio-system/a=b@10.0.0.9:80") => "deny:istio-system/deny-all",
        ],
    }
    target_ref_policies_are_not_enforced {
        cite: "M10; S-CONV 'TargetRef is not intended for ztunnel'",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: app}
spec:
  targetRefs: [{kind: Service, group: '', name: web}]
  action: DENY
  rules: [{}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow"],
    }
    empty_selector_applies_to_the_whole_namespace {
        cite: "M5 (sidecar meaning of selector without labels; ztunnel applies it to none)",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: empty-selector, namespace: app}
spec:
  selector: {}
  action: DENY
  rules: [{}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "deny:app/empty-selector",
            (WEB, "10.0.0.1", "other/app=web@10.0.0.3:80") => "allow",
        ],
    }

    // ---- action order ------------------------------------------------------------------------
    deny_wins_over_allow {
        cite: "S-API: DENY policies are evaluated before ALLOW; S-ZST assert_rbac",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec:
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-web, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "deny:app/deny-web",
            (API, "10.0.0.1", DST) => "allow:app/allow-all",
        ],
    }
    unmatched_allow_denies {
        cite: "S-API: if any ALLOW policy applies, at least one must match; S-ZST NotAllowed",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-web, namespace: app}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-8443, namespace: app}
spec:
  rules: [{to: [{operation: {ports: ['8443']}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/allow-web",
            (API, "10.0.0.1", DST) => "deny",
            (API, "10.0.0.1", "app/app=web@10.0.0.2:8443") => "allow:app/allow-8443",
        ],
    }
    audit_never_changes_a_decision {
        cite: "M8; S-API 'AUDIT policies do not affect whether requests are allowed or denied'",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: app}
spec:
  action: AUDIT
  rules: [{}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow", (PLAIN, "10.0.0.1", DST) => "allow"],
    }
    custom_fails_closed {
        cite: "M7 (ztunnel ignores CUSTOM: fail open)",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: app}
spec:
  action: CUSTOM
  provider: {name: my-authz}
  rules: [{to: [{operation: {ports: ['8080']}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "deny:app/ext-authz",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "allow",
        ],
    }
    dry_run_policies_are_not_enforced {
        cite: "S-CONV istio.io/dry-run; S-ZST dry-run matches are only logged",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-deny
  namespace: app
  annotations: {istio.io/dry-run: 'true'}
spec:
  action: DENY
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: dry-allow-nothing
  namespace: app
  annotations: {istio.io/dry-run: 'true'}
spec: {}
",
        checks: [(WEB, "10.0.0.1", DST) => "allow"],
    }

    // ---- rule structure ----------------------------------------------------------------------
    rules_are_ored {
        cite: "S-API: a match occurs when at least one rule matches",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: two-rules, namespace: app}
spec:
  rules:
  - from: [{source: {namespaces: [frontend]}}]
  - to: [{operation: {ports: ['9090']}}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/two-rules",
            (API, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "allow:app/two-rules",
            (API, "10.0.0.1", DST) => "deny",
        ],
    }
    from_to_and_when_are_anded {
        cite: "S-API Rule: from, to and when must all match",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: and, namespace: app}
spec:
  rules:
  - from: [{source: {namespaces: [frontend]}}]
    to: [{operation: {ports: ['8080']}}]
    when:
    - {key: source.ip, values: [10.0.0.0/24]}
    - {key: destination.ip, values: [10.0.0.2]}
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/and",
            (WEB, "10.0.1.1", DST) => "deny",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.3:8080") => "deny",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:8081") => "deny",
            (API, "10.0.0.1", DST) => "deny",
        ],
    }
    entries_or_fields_and_values_or {
        cite: "S-API Source/Operation comments: sources OR, fields AND, values OR",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: shape, namespace: app}
spec:
  rules:
  - from:
    - source: {namespaces: [frontend], ipBlocks: [10.1.0.0/16]}
    - source: {principals: [cluster.local/ns/backend/sa/api, cluster.local/ns/x/sa/y]}
",
        checks: [
            (WEB, "10.1.2.3", DST) => "allow:app/shape",
            (WEB, "10.2.2.3", DST) => "deny",
            (API, "10.2.2.3", DST) => "allow:app/shape",
            ("cluster.local/ns/x/sa/y", "10.2.2.3", DST) => "allow:app/shape",
        ],
    }
    not_fields_are_complements_and_combine_with_positives {
        cite: "S-API: notX matches when the attribute equals none of the values; X and notX both must hold",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: nots, namespace: app}
spec:
  rules:
  - from: [{source: {namespaces: [frontend, backend], notPrincipals: [cluster.local/ns/backend/sa/api]}}]
    to: [{operation: {notPorts: ['9090']}}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/nots",
            (API, "10.0.0.1", DST) => "deny",
            ("cluster.local/ns/backend/sa/other", "10.0.0.1", DST) => "allow:app/nots",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "deny",
        ],
    }
    empty_spec_allows_nothing {
        cite: "S-API allow-nothing example (spec: {}); S-RBAC rbac_empty_policy",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: app}
spec: {}
",
        checks: [(WEB, "10.0.0.1", DST) => "deny", (PLAIN, "10.0.0.1", DST) => "deny"],
    }
    empty_rule_allows_all {
        cite: "S-API allow-all example (rules: [{}]); S-RBAC a rule with no clauses matches",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec:
  rules: [{}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow:app/allow-all", (PLAIN, "10.0.0.1", DST) => "allow:app/allow-all"],
    }
    deny_empty_rule_denies_all {
        cite: "S-API deny-all example",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: app}
spec:
  action: DENY
  rules: [{}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny:app/deny-all", (PLAIN, "10.0.0.1", DST) => "deny:app/deny-all"],
    }
    when_values_and_not_values_both_hold {
        cite: "S-CONV: one Match per condition, values and notValues AND'ed",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cond, namespace: app}
spec:
  rules:
  - when: [{key: source.ip, values: [10.0.0.0/8], notValues: [10.9.0.0/16]}]
",
        checks: [
            (WEB, "10.1.0.1", DST) => "allow:app/cond",
            (WEB, "10.9.0.1", DST) => "deny",
            (WEB, "192.0.2.1", DST) => "deny",
        ],
    }

    // ---- strings -----------------------------------------------------------------------------
    principal_wildcards {
        cite: "S-API Rule comment; S-RBAC StringMatch: exact, prefix x*, suffix *x, presence *",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wild, namespace: app}
spec:
  rules:
  - from: [{source: {principals: ['cluster.local/ns/frontend/*', '*/sa/api', 'td/ns/*/sa/x']}}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/wild",
            ("other.td/ns/backend/sa/api", "10.0.0.1", DST) => "allow:app/wild",
            ("td/ns/*/sa/x", "10.0.0.1", DST) => "allow:app/wild",
            ("td/ns/q/sa/x", "10.0.0.1", DST) => "deny",
            ("cluster.local/ns/backend/sa/web", "10.0.0.1", DST) => "deny",
        ],
    }
    namespaces_compare_the_identity_namespace {
        cite: "S-RBAC: namespaces compare against the ns segment of the peer identity",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns, namespace: app}
spec:
  rules: [{from: [{source: {namespaces: ['front*']}}]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow:app/ns", (API, "10.0.0.1", DST) => "deny"],
    }
    spiffe_scheme_in_policy_never_matches {
        cite: "S-RBAC matches_principal: principals compare without spiffe://",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: scheme, namespace: app}
spec:
  rules: [{from: [{source: {principals: ['spiffe://cluster.local/ns/frontend/sa/web']}}]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny"],
    }
    no_trust_domain_aliases {
        cite: "M11; S-CONV/S-RBAC compare literally",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: td, namespace: app}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow:app/td", (FOREIGN, "10.0.0.1", DST) => "deny"],
    }

    // ---- IPs and ports -----------------------------------------------------------------------
    ip_blocks_v4_v6_and_host_bits {
        cite: "S-API ipBlocks; §5.3: single address is a host route, host bits ignored, families apart",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ips, namespace: app}
spec:
  rules:
  - from: [{source: {ipBlocks: [192.0.2.7, 10.0.0.1/24, '2001:db8::/32']}}]
",
        checks: [
            (WEB, "192.0.2.7", DST) => "allow:app/ips",
            (WEB, "192.0.2.8", DST) => "deny",
            (WEB, "10.0.0.200", DST) => "allow:app/ips",
            (WEB, "2001:db8::1", DST) => "allow:app/ips",
            (WEB, "::ffff:10.0.0.9", DST) => "allow:app/ips",
            (WEB, "2001:db9::1", DST) => "deny",
        ],
    }
    not_ip_blocks {
        cite: "S-RBAC not_source_ips",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: notips, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {notIpBlocks: [10.0.0.0/8]}}]}]
",
        checks: [(WEB, "10.3.3.3", DST) => "allow", (WEB, "192.0.2.1", DST) => "deny:app/notips"],
    }
    ports_and_destination_conditions {
        cite: "S-API ports/notPorts; conditions destination.ip, destination.port (S-L4DOC table)",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dst, namespace: app}
spec:
  rules:
  - to: [{operation: {ports: ['8080', '9090']}}]
    when:
    - {key: destination.port, notValues: ['9090']}
    - {key: destination.ip, values: [10.0.0.0/24], notValues: [10.0.0.3]}
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/dst",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "deny",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.3:8080") => "deny",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:7070") => "deny",
        ],
    }
    source_conditions {
        cite: "S-L4DOC conditions source.ip, source.namespace, source.principal",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: src, namespace: app}
spec:
  rules:
  - when:
    - {key: source.namespace, values: [frontend, backend]}
    - {key: source.principal, notValues: ['*/sa/api']}
    - {key: source.ip, values: [10.0.0.0/8]}
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/src",
            (API, "10.0.0.1", DST) => "deny",
            (WEB, "192.0.2.1", DST) => "deny",
            (PLAIN, "10.0.0.1", DST) => "deny",
        ],
    }

    // ---- plaintext, service accounts, trust domains ------------------------------------------
    plaintext_has_no_principal_or_namespace {
        cite: "§7; S-RBAC plaintext_conn cases: principals/namespaces (even *) never match, negations always do",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: any-mtls, namespace: app}
spec:
  rules: [{from: [{source: {principals: ['*']}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext-to-9090, namespace: app}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ['*']}}]
    to: [{operation: {ports: ['9090']}}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/any-mtls",
            (PLAIN, "10.0.0.1", DST) => "deny",
            (PLAIN, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "deny:app/deny-plaintext-to-9090",
        ],
    }
    not_principals_star_selects_plaintext {
        cite: "§7: DENY notPrincipals ['*'] denies exactly the plaintext connections",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mtls-only, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {notPrincipals: ['*']}}]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "allow", (PLAIN, "10.0.0.1", DST) => "deny:app/mtls-only"],
    }
    service_accounts_ignore_trust_domain_and_default_namespace {
        cite: "§5.2; S-RBAC ServiceAccountMatch: ns/sa or sa (policy namespace), trust domain ignored",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: frontend}
spec:
  rules: [{from: [{source: {serviceAccounts: [web, backend/api]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-sa, namespace: other}
spec:
  action: DENY
  rules: [{from: [{source: {notServiceAccounts: [frontend/web]}}]}]
",
        checks: [
            (WEB, "10.0.0.1", "frontend/app=x@10.0.0.5:80") => "allow:frontend/sa",
            (FOREIGN, "10.0.0.1", "frontend/app=x@10.0.0.5:80") => "allow:frontend/sa",
            (API, "10.0.0.1", "frontend/app=x@10.0.0.5:80") => "allow:frontend/sa",
            ("cluster.local/ns/backend/sa/web", "10.0.0.1", "frontend/app=x@10.0.0.5:80") => "deny",
            (PLAIN, "10.0.0.1", "frontend/app=x@10.0.0.5:80") => "deny",
            (PLAIN, "10.0.0.1", "other/app=x@10.0.0.6:80") => "deny:other/not-sa",
            (WEB, "10.0.0.1", "other/app=x@10.0.0.6:80") => "allow",
        ],
    }
    trust_domains_are_enforced {
        cite: "M6 (ztunnel drops trustDomains silently)",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: td, namespace: app}
spec:
  rules: [{from: [{source: {trustDomains: ['cluster.*'], notTrustDomains: [cluster.evil]}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "allow:app/td",
            (FOREIGN, "10.0.0.1", DST) => "deny",
            ("cluster.evil/ns/a/sa/b", "10.0.0.1", DST) => "deny",
            (PLAIN, "10.0.0.1", DST) => "deny",
        ],
    }

    // ---- layer 7 -----------------------------------------------------------------------------
    allow_rule_with_l7_is_dropped_and_policy_still_applies {
        cite: "seed doc (methods: [GET] makes ztunnel deny); M2; S-GOLD allow-groups",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep-to-httpbin, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {methods: [GET]}}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny", (API, "10.0.0.1", DST) => "deny"],
    }
    allow_l4_rules_survive_beside_l7_rules {
        cite: "S-CONV: only the rules with L7 attributes are removed; M2",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mixed, namespace: app}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {paths: [/admin]}}]
  - from: [{source: {principals: [cluster.local/ns/backend/sa/api]}}]
  - when: [{key: connection.sni, values: [x.example]}]
  - when: [{key: remote.ip, values: [10.0.0.1]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny", (API, "10.0.0.1", DST) => "allow:app/mixed"],
    }
    deny_with_only_l7_denies_everything {
        cite: "M1 (fail closed; ztunnel makes it a no-op, istio/istio#61126); S-API DENY example",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: app}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny:app/deny-get", (PLAIN, "10.0.0.1", DST) => "deny:app/deny-get"],
    }
    deny_l4_from_with_l7_to_denies_the_source {
        cite: "M1: the L7-only operation matches everything, so the rule denies on its from part",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-web-admin, namespace: app}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/frontend/sa/web]}}]
    to: [{operation: {paths: [/admin]}}]
",
        checks: [(WEB, "10.0.0.1", DST) => "deny:app/deny-web-admin", (API, "10.0.0.1", DST) => "allow"],
    }
    deny_port_with_method_denies_the_port {
        cite: "S-GOLD deny-groups; S-API DENY example 'all TCP traffic on port 8080 would be denied'",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-8080-get, namespace: app}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ['8080'], methods: [GET]}}]}]
",
        checks: [
            (WEB, "10.0.0.1", DST) => "deny:app/deny-8080-get",
            (WEB, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "allow",
        ],
    }
    deny_with_l7_condition_enforces_the_rest {
        cite: "M1 (ztunnel: 'L4 From and L7 When is a no-op')",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-header, namespace: app}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [backend]}}]
    when: [{key: 'request.headers[x-user]', values: [bob]}]
",
        checks: [(API, "10.0.0.1", DST) => "deny:app/deny-header", (WEB, "10.0.0.1", DST) => "allow"],
    }
    deny_l7_only_source_beside_l4_source_fails_closed {
        cite: "M1: an L7-only source matches everything (ztunnel skips it and denies X only)",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jwt, namespace: app}
spec:
  action: DENY
  rules:
  - from:
    - source: {requestPrincipals: ['*']}
    - source: {principals: [cluster.local/ns/backend/sa/api]}
",
        checks: [(API, "10.0.0.1", DST) => "deny:app/deny-jwt", (WEB, "10.0.0.1", DST) => "deny:app/deny-jwt"],
    }
    deny_mixed_source_is_enforced_on_its_l4_fields {
        cite: "S-STAT 'mixed L4 and L7 … enforced without HTTP rules'; M1",
        yaml: "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-api, namespace: app}
spec:
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/backend/sa/api], requestPrincipals: [issuer/sub]}}]
",
        checks: [(API, "10.0.0.1", DST) => "deny:app/deny-api", (WEB, "10.0.0.1", DST) => "allow"],
    }

    // ---- PeerAuthentication ------------------------------------------------------------------
    default_is_permissive {
        cite: "S-L4DOC: the default policy for ambient mode is PERMISSIVE",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-unset, namespace: app}
spec: {}
",
        checks: [(PLAIN, "10.0.0.1", DST) => "allow", (WEB, "10.0.0.1", DST) => "allow"],
    }
    mesh_strict_refuses_plaintext_only {
        cite: "S-API PeerAuthentication STRICT; §8.2 (STRICT ⇒ plaintext denied)",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
",
        checks: [
            (PLAIN, "10.0.0.1", DST) => "deny:istio-system/default",
            (WEB, "10.0.0.1", DST) => "allow",
        ],
    }
    strict_cannot_be_overridden_by_allow {
        cite: "§8.3: PeerAuthentication-derived policies are DENY policies no ALLOW can override",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: app}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec: {rules: [{}]}
",
        checks: [(PLAIN, "10.0.0.1", DST) => "deny:app/strict", (WEB, "10.0.0.1", DST) => "allow:app/allow-all"],
    }
    namespace_and_workload_levels_override_parents {
        cite: "S-API PeerAuthentication examples; §8.2 steps 2-4",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-permissive, namespace: app}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db-strict, namespace: app}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ns-unset, namespace: other}
spec: {mtls: {mode: UNSET}}
",
        checks: [
            (PLAIN, "10.0.0.1", DST) => "allow",
            (PLAIN, "10.0.0.1", "app/app=db@10.0.0.7:5432") => "deny:app/db-strict",
            (PLAIN, "10.0.0.1", "other/app=x@10.0.0.8:80") => "deny:istio-system/default",
        ],
    }
    disable_acts_as_permissive {
        cite: "M3; I-45593 'equal to PERMISSIVE'; S-IDX DISABLE removes the static STRICT policy",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: off, namespace: app}
spec: {mtls: {mode: DISABLE}}
",
        checks: [(PLAIN, "10.0.0.1", DST) => "allow", (WEB, "10.0.0.1", DST) => "allow"],
    }
    port_level_exemption_and_tightening {
        cite: "S-GOLD peer-authn-strict-and-permissive-port-mtls, peer-authn-permissive-port-mtls-strict",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls: {'9090': {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: db, namespace: app}
spec:
  selector: {matchLabels: {app: db}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {'5432': {mode: STRICT}}
",
        checks: [
            (PLAIN, "10.0.0.1", DST) => "deny:app/web",
            (PLAIN, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "allow",
            (PLAIN, "10.0.0.1", "app/app=db@10.0.0.7:5432") => "deny:app/db",
            (PLAIN, "10.0.0.1", "app/app=db@10.0.0.7:9000") => "allow",
        ],
    }
    unset_workload_disable_port_under_strict_parent_is_exempt {
        cite: "M4 / Q-PA1: §8.2 exempts the port (istiod does not)",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-port, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {'8080': {mode: DISABLE}}
",
        checks: [
            (PLAIN, "10.0.0.1", DST) => "allow",
            (PLAIN, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "deny:istio-system/default",
        ],
    }
    permissive_workload_strict_port_under_strict_mesh_is_strict {
        cite: "M4 / Q-PA2: §8.2 enforces the STRICT port (istiod publishes nothing)",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web, namespace: app}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: PERMISSIVE}
  portLevelMtls: {'8080': {mode: STRICT}}
",
        checks: [
            (PLAIN, "10.0.0.1", DST) => "deny:app/web",
            (PLAIN, "10.0.0.1", "app/app=web@10.0.0.2:9090") => "allow",
        ],
    }
    root_namespace_peer_authentication_with_selector_is_ignored {
        cite: "S-API 'PeerAuthentication policies with workload selectors are ignored when deployed in the root namespace'",
        yaml: "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: ignored, namespace: istio-system}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
",
        checks: [(PLAIN, "10.0.0.1", DST) => "allow"],
    }
}
