//! AuthorizationPolicy validation (Istio's `ValidateAuthorizationPolicy`, CRD schema and CEL
//! rules), plus meshd's warnings where it enforces something other than what was written.

use crate::authz::{
    Action, AuthorizationPolicy, Condition, Operation, PolicyTargetReference, Rule, Source,
};
use crate::meta::{DRY_RUN_ANNOTATION, parse_go_bool};
use crate::path::FieldPath;
use crate::validate::{Sink, ValidationContext, checks};

/// Istio's CRD `maxItems` for `rules` and `from`/`to` lists.
const MAX_ITEMS: usize = 512;
/// Istio's CRD `maxItems` for `targetRefs`.
const MAX_TARGET_REFS: usize = 16;

/// Source fields a CUSTOM policy may not use (the external authorizer cannot see them).
const CUSTOM_FORBIDDEN_SOURCE: [&str; 10] = [
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "trustDomains",
    "notTrustDomains",
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
];

pub(super) fn validate(
    policy: &AuthorizationPolicy,
    spec_path: &FieldPath,
    ctx: &ValidationContext,
    sink: &mut Sink,
) {
    let spec = &policy.spec;
    let action = spec.action();
    let namespace = policy.metadata.namespace();

    // Scope.
    // An empty `targetRefs` is unset for Istio (and an error below), not a second scope.
    let scopes = [
        spec.selector.is_some(),
        spec.target_ref.is_some(),
        spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()),
    ];
    if scopes.iter().filter(|set| **set).count() > 1 {
        sink.error(
            spec_path.clone(),
            "only one of targetRefs, targetRef or selector can be set",
        );
    }
    if let Some(selector) = &spec.selector {
        let path = spec_path.field("selector");
        checks::labels(&selector.match_labels, &path.field("matchLabels"), sink);
        if selector.match_labels.is_empty() {
            let scope = if namespace == ctx.root_namespace {
                "every workload in the mesh".to_string()
            } else {
                format!("every workload in namespace {namespace:?}")
            };
            sink.warning(
                path,
                format!(
                    "workload selector specified without labels: meshd applies this policy to {scope} (Istio's sidecar meaning; ztunnel would apply it to none)"
                ),
            );
        }
    }
    if let Some(target) = &spec.target_ref {
        validate_target_ref(target, &spec_path.field("targetRef"), sink);
    }
    if let Some(targets) = &spec.target_refs {
        let path = spec_path.field("targetRefs");
        if targets.is_empty() {
            // meshd's own rule: Istio reads it as unset, so the policy would apply to the whole
            // namespace while a reader sees a waypoint policy.
            sink.error(
                path.clone(),
                "`targetRefs: []` is an empty list, which Istio reads as unset: list the targets, or remove the field to apply the policy to its namespace",
            );
        }
        if targets.len() > MAX_TARGET_REFS {
            sink.error(
                path.clone(),
                format!("at most {MAX_TARGET_REFS} targetRefs are allowed"),
            );
        }
        for (i, target) in targets.iter().enumerate() {
            validate_target_ref(target, &path.index(i), sink);
        }
    }
    if spec.has_target_refs() {
        let path = if spec.target_refs.as_ref().is_some_and(|t| !t.is_empty()) {
            spec_path.field("targetRefs")
        } else {
            spec_path.field("targetRef")
        };
        sink.warning(
            path,
            "targetRef(s) policies are enforced by waypoint proxies: meshd loads this policy but does not enforce it",
        );
    }

    // Action and provider.
    let rules = spec.rules.as_deref().unwrap_or_default();
    match action {
        Action::Deny if rules.is_empty() => sink.error(
            spec_path.clone(),
            "DENY action without `rules` is meaningless: add an empty rule `{}` if it should deny every connection",
        ),
        Action::Custom => {
            if rules.is_empty() {
                sink.error(spec_path.clone(), "CUSTOM action without `rules` is meaningless");
            }
            match spec.provider.as_ref().and_then(|p| p.name.as_deref()) {
                Some(name) if !name.is_empty() => {}
                _ => sink.error(
                    spec_path.field("provider"),
                    "CUSTOM action requires `provider.name`",
                ),
            }
            sink.warning(
                spec_path.field("action"),
                "meshd has no external authorizer at L4: connections matching this CUSTOM policy's rules are denied",
            );
        }
        _ => {}
    }
    if action != Action::Custom && spec.provider.is_some() {
        sink.error(
            spec_path.field("provider"),
            "`provider` must only be set with the CUSTOM action",
        );
    }

    // Rules.
    let rules_path = spec_path.field("rules");
    if rules.len() > MAX_ITEMS {
        sink.error(
            rules_path.clone(),
            format!("at most {MAX_ITEMS} rules are allowed"),
        );
    }
    let mut dropped = 0;
    for (i, rule) in rules.iter().enumerate() {
        let path = rules_path.index(i);
        validate_rule(rule, &path, action, sink);
        let l7 = rule.l7_attributes();
        if l7.is_empty() {
            continue;
        }
        let what = l7.join(", ");
        match action {
            Action::Allow => {
                dropped += 1;
                sink.warning(
                    path,
                    format!(
                        "rule ignored: it uses L7 attributes ({what}) that meshd cannot evaluate at L4 without a waypoint; the policy allows less than written"
                    ),
                );
            }
            Action::Deny | Action::Custom => sink.warning(
                path,
                format!(
                    "rule enforced on its L4 attributes only: meshd cannot evaluate {what} at L4, so those parts match every connection (fail closed); the rule denies more than written"
                ),
            ),
            Action::Audit => {}
        }
    }
    if action == Action::Allow && !rules.is_empty() && dropped == rules.len() {
        sink.warning(
            rules_path,
            "no rule of this ALLOW policy is enforceable at L4: it allows nothing for the workloads it applies to",
        );
    }

    validate_dry_run(policy, action, sink);
}

fn validate_target_ref(target: &PolicyTargetReference, path: &FieldPath, sink: &mut Sink) {
    if target.name.as_deref().unwrap_or_default().is_empty() {
        sink.error(path.field("name"), "target reference `name` is required");
    }
    if !target.namespace.as_deref().unwrap_or_default().is_empty() {
        sink.error(
            path.field("namespace"),
            "cross namespace referencing is not supported",
        );
    }
    let group = target.group.as_deref().unwrap_or_default();
    let kind = target.kind.as_deref().unwrap_or_default();
    let supported = matches!(
        (group, kind),
        ("" | "core", "Service")
            | ("networking.istio.io", "ServiceEntry")
            | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass")
    );
    if !supported {
        sink.error(
            path.clone(),
            format!(
                "target reference {group:?}/{kind:?} is not supported: use Service, networking.istio.io ServiceEntry, or gateway.networking.k8s.io Gateway/GatewayClass"
            ),
        );
    }
}

fn validate_rule(rule: &Rule, path: &FieldPath, action: Action, sink: &mut Sink) {
    if let Some(from) = &rule.from {
        let from_path = path.field("from");
        if from.is_empty() {
            sink.error(from_path.clone(), "`from` must not be empty");
        }
        if from.len() > MAX_ITEMS {
            sink.error(
                from_path.clone(),
                format!("at most {MAX_ITEMS} sources are allowed"),
            );
        }
        for (i, entry) in from.iter().enumerate() {
            let entry_path = from_path.index(i);
            match &entry.source {
                None => sink.error(entry_path, "`from.source` is required"),
                Some(source) => validate_source(source, &entry_path.field("source"), action, sink),
            }
        }
    }
    if let Some(to) = &rule.to {
        let to_path = path.field("to");
        if to.is_empty() {
            sink.error(to_path.clone(), "`to` must not be empty");
        }
        if to.len() > MAX_ITEMS {
            sink.error(
                to_path.clone(),
                format!("at most {MAX_ITEMS} operations are allowed"),
            );
        }
        for (i, entry) in to.iter().enumerate() {
            let entry_path = to_path.index(i);
            match &entry.operation {
                None => sink.error(entry_path, "`to.operation` is required"),
                Some(op) => validate_operation(op, &entry_path.field("operation"), action, sink),
            }
        }
    }
    if let Some(when) = &rule.when {
        let when_path = path.field("when");
        if when.is_empty() {
            // meshd's own rule (Istio checks only `from` and `to`): `{when: []}` is the rule
            // `{}`, which matches every connection.
            sink.error(when_path.clone(), "`when` must not be empty");
        }
        for (i, condition) in when.iter().enumerate() {
            validate_condition(condition, &when_path.index(i), action, sink);
        }
    }
}

/// Istio's "set": present and non-empty (its validator tests `len(field) == 0`).
fn set(values: Option<&Vec<String>>) -> bool {
    values.is_some_and(|v| !v.is_empty())
}

fn validate_source(source: &Source, path: &FieldPath, action: Action, sink: &mut Sink) {
    let fields = source.fields();
    if !fields.iter().any(|(_, values)| set(*values)) {
        checks::no_empty_lists(&fields, path, sink);
        sink.error(path.clone(), "`from.source` must not be empty");
        return;
    }
    checks::partly_empty_lists(&fields, path, action, "source", sink);
    let has_sa = set(source.service_accounts.as_ref()) || set(source.not_service_accounts.as_ref());
    let has_principal_or_ns = set(source.principals.as_ref())
        || set(source.not_principals.as_ref())
        || set(source.namespaces.as_ref())
        || set(source.not_namespaces.as_ref());
    if has_sa && has_principal_or_ns {
        sink.error(
            path.clone(),
            "serviceAccounts/notServiceAccounts cannot be combined with principals, notPrincipals, namespaces or notNamespaces",
        );
    }
    for (name, values) in fields {
        let Some(values) = values else { continue };
        let at = path.field(name);
        match name {
            "serviceAccounts" | "notServiceAccounts" => checks::service_accounts(values, &at, sink),
            "trustDomains" | "notTrustDomains" => checks::trust_domains(values, &at, sink),
            _ => checks::no_empty_values(values, &at, sink),
        }
        if matches!(
            name,
            "ipBlocks" | "notIpBlocks" | "remoteIpBlocks" | "notRemoteIpBlocks"
        ) {
            checks::ip_blocks(values, &at, sink);
        }
        if action == Action::Custom && CUSTOM_FORBIDDEN_SOURCE.contains(&name) {
            sink.error(
                at,
                format!("`{name}` is not supported with the CUSTOM action"),
            );
        }
    }
}

fn validate_operation(op: &Operation, path: &FieldPath, action: Action, sink: &mut Sink) {
    let fields = op.fields();
    if !fields.iter().any(|(_, values)| set(*values)) {
        checks::no_empty_lists(&fields, path, sink);
        sink.error(path.clone(), "`to.operation` must not be empty");
        return;
    }
    checks::partly_empty_lists(&fields, path, action, "operation", sink);
    for (name, values) in fields {
        let Some(values) = values else { continue };
        let at = path.field(name);
        checks::no_empty_values(values, &at, sink);
        match name {
            "ports" | "notPorts" => checks::ports(values, &at, sink),
            "paths" | "notPaths" => path_templates(values, &at, sink),
            _ => {}
        }
    }
}

/// Istio's path-template rule: `{*}` and `{**}` only as whole segments, `{**}` only last.
fn path_templates(values: &[String], path: &FieldPath, sink: &mut Sink) {
    for (i, value) in values.iter().enumerate() {
        if !value.contains('{') && !value.contains('}') {
            continue;
        }
        let segments: Vec<&str> = value.split('/').collect();
        let last = segments.len().saturating_sub(1);
        for (j, segment) in segments.iter().enumerate() {
            let templated = segment.contains('{') || segment.contains('}');
            let bad = templated && !matches!(*segment, "{*}" | "{**}")
                || (*segment == "{**}" && j != last);
            if bad {
                sink.error(
                    path.index(i),
                    format!(
                        "invalid path template {value:?}: `{{*}}` and `{{**}}` must be whole segments and `{{**}}` must be last"
                    ),
                );
                break;
            }
        }
    }
}

fn validate_condition(condition: &Condition, path: &FieldPath, action: Action, sink: &mut Sink) {
    let key = condition.key.as_deref().unwrap_or_default();
    if key.is_empty() {
        sink.error(path.field("key"), "`key` must not be empty");
    }
    let lists = [
        ("values", condition.values.as_ref()),
        ("notValues", condition.not_values.as_ref()),
    ];
    if lists.iter().any(|(_, values)| set(*values)) {
        checks::partly_empty_lists(&lists, path, action, "condition", sink);
    } else {
        checks::no_empty_lists(&lists, path, sink);
        sink.error(
            path.clone(),
            "at least one of `values` or `notValues` must be set",
        );
    }
    if key.is_empty() {
        return;
    }
    if let Err(e) = check_attribute_key(key) {
        sink.error(path.field("key"), e);
        return;
    }
    if action == Action::Custom
        && (matches!(
            key,
            "source.namespace"
                | "source.serviceAccount"
                | "source.trustDomain"
                | "source.principal"
        ) || key.starts_with("request.auth."))
    {
        sink.error(
            path.field("key"),
            format!("`{key}` is not supported with the CUSTOM action"),
        );
    }
    for (field, values) in [
        ("values", &condition.values),
        ("notValues", &condition.not_values),
    ] {
        let Some(values) = values else { continue };
        let at = path.field(field);
        checks::no_empty_values(values, &at, sink);
        match key {
            "source.ip" | "remote.ip" | "destination.ip" => checks::ip_blocks(values, &at, sink),
            "destination.port" => checks::ports(values, &at, sink),
            "source.serviceAccount" => checks::service_accounts(values, &at, sink),
            "source.trustDomain" => checks::trust_domains(values, &at, sink),
            _ => {}
        }
    }
}

/// Istio's `ValidateAttribute` key rules.
fn check_attribute_key(key: &str) -> Result<(), String> {
    const PLAIN: [&str; 12] = [
        "source.ip",
        "remote.ip",
        "destination.ip",
        "destination.port",
        "source.serviceAccount",
        "source.trustDomain",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "connection.sni",
    ];
    if PLAIN.contains(&key) {
        return Ok(());
    }
    for prefix in ["request.headers", "request.auth.claims"] {
        if let Some(rest) = key.strip_prefix(prefix) {
            return bracketed(key, rest);
        }
    }
    if key.starts_with("experimental.envoy.filters.") {
        return match key.find('[') {
            Some(i) => bracketed(key, &key[i..]),
            None => Err(format!("{key:?} must have the form name[key]")),
        };
    }
    match key {
        "destination.namespace" => Err(
            "`destination.namespace` is replaced by the policy's metadata.namespace".to_string(),
        ),
        "destination.name" | "destination.user" => Err(format!(
            "`{key}` is a deprecated attribute only supported in v1alpha1"
        )),
        _ if key.starts_with("destination.labels") => {
            Err("`destination.labels` is replaced by the workload selector".to_string())
        }
        _ => Err(format!("unknown attribute {key:?}")),
    }
}

fn bracketed(key: &str, rest: &str) -> Result<(), String> {
    match rest.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        Some(inner) if !inner.is_empty() => Ok(()),
        _ => Err(format!(
            "{key:?} must have the form name[key] with a non-empty key"
        )),
    }
}

fn validate_dry_run(policy: &AuthorizationPolicy, action: Action, sink: &mut Sink) {
    let Some(value) = policy.metadata.annotations.get(DRY_RUN_ANNOTATION) else {
        return;
    };
    let path = FieldPath::root()
        .field("metadata")
        .field("annotations")
        .field(DRY_RUN_ANNOTATION);
    match parse_go_bool(value) {
        None => sink.error(path, format!("{value:?} is not a boolean")),
        Some(_) if !matches!(action, Action::Allow | Action::Deny) => sink.error(
            path,
            format!(
                "the dry-run annotation is only supported with ALLOW and DENY, not {}",
                action.as_str()
            ),
        ),
        Some(true) => sink.warning(
            path,
            "dry-run policy: meshd evaluates and logs it but never enforces it",
        ),
        Some(false) => {}
    }
}
