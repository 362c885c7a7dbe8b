//! Shared helpers for the criterion benchmarks in this folder.

use std::fmt::Write;

/// The namespace benchmark connections go to.
pub const DESTINATION_NAMESPACE: &str = "app";

/// YAML for `applying` policies that apply to the destination (namespace `app`, workload
/// `app=web`) and `elsewhere` policies in other namespaces, in a mix modelled on real sets:
/// mostly ALLOW rules on exact principals or namespaces (often with ports), some wildcard
/// principals, CIDR conditions, and a share of DENY rules on CIDRs and principals.
pub fn policy_yaml(applying: usize, elsewhere: usize) -> String {
    let mut out = String::new();
    for i in 0..applying {
        push_policy(&mut out, i, DESTINATION_NAMESPACE);
    }
    for i in 0..elsewhere {
        push_policy(&mut out, applying + i, &format!("ns{}", i % 500));
    }
    out
}

fn push_policy(out: &mut String, i: usize, namespace: &str) {
    let port = 8000 + i % 50;
    let selector = if i.is_multiple_of(3) {
        "  selector: {matchLabels: {app: web}}\n"
    } else {
        ""
    };
    let (action, rules) = match i % 20 {
        // 15%: DENY a CIDR on a port.
        0..=2 => (
            "DENY",
            format!(
                "  - from: [{{source: {{ipBlocks: ['198.51.{}.0/24']}}}}]\n    to: [{{operation: {{ports: ['{port}']}}}}]\n",
                i % 256
            ),
        ),
        // 5%: DENY exact principals.
        3 => (
            "DENY",
            format!(
                "  - from: [{{source: {{principals: ['cluster.local/ns/blocked{i}/sa/x']}}}}]\n"
            ),
        ),
        // 40%: ALLOW exact principals on a port.
        4..=11 => (
            "ALLOW",
            format!(
                "  - from: [{{source: {{principals: ['cluster.local/ns/team{}/sa/sa{i}', 'cluster.local/ns/team{}/sa/reader']}}}}]\n    to: [{{operation: {{ports: ['{port}']}}}}]\n",
                i % 100,
                (i + 7) % 100
            ),
        ),
        // 20%: ALLOW exact namespaces.
        12..=15 => (
            "ALLOW",
            format!(
                "  - from: [{{source: {{namespaces: [team{}, team{}]}}}}]\n",
                i % 100,
                (i + 1) % 100
            ),
        ),
        // 10%: ALLOW wildcard principals on a port.
        16 | 17 => (
            "ALLOW",
            format!(
                "  - from: [{{source: {{principals: ['cluster.local/ns/team{}/*', '*/sa/batch{i}']}}}}]\n    to: [{{operation: {{ports: ['{port}']}}}}]\n",
                i % 100
            ),
        ),
        // 10%: ALLOW a source CIDR condition on a port.
        _ => (
            "ALLOW",
            format!(
                "  - to: [{{operation: {{ports: ['{port}']}}}}]\n    when: [{{key: source.ip, values: ['10.{}.0.0/16']}}]\n",
                i % 256
            ),
        ),
    };
    let _ = write!(
        out,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: {namespace}}}\nspec:\n{selector}  action: {action}\n  rules:\n{rules}---\n"
    );
}
