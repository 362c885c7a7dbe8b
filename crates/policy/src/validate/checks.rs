//! Value checks shared by the per-kind validators (Istio's `pkg/config/security` and Kubernetes'
//! name rules).

use std::collections::BTreeMap;

use crate::Action;
use crate::path::FieldPath;
use crate::validate::Sink;
use crate::values::{parse_ip_block, parse_port};

/// Istio's limit on label values in workload selectors.
const MAX_LABEL_VALUE_LEN: usize = 63;
/// Istio's limit on the number of labels in a selector.
const MAX_SELECTOR_LABELS: usize = 4096;

pub(crate) fn dns1123_label(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid namespace (lower-case letters, digits and '-', at most 63 characters, starting and ending with a letter or digit)"
        ))
    }
}

pub(crate) fn dns1123_subdomain(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| dns1123_label(part).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a valid name (lower-case letters, digits, '-' and '.', at most 253 characters)"
        ))
    }
}

/// Labels of a resource or selector: non-empty keys, no `*`, bounded values.
pub(crate) fn labels(labels: &BTreeMap<String, String>, path: &FieldPath, sink: &mut Sink) {
    if labels.len() > MAX_SELECTOR_LABELS {
        sink.error(
            path.clone(),
            format!("at most {MAX_SELECTOR_LABELS} labels are allowed"),
        );
    }
    for (key, value) in labels {
        let at = path.field(key);
        if key.is_empty() {
            sink.error(at.clone(), "empty label key");
        }
        if key.contains('*') {
            sink.error(at.clone(), "wildcard is not supported in a label key");
        }
        if value.contains('*') {
            sink.error(at.clone(), "wildcard is not supported in a label value");
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            sink.error(
                at,
                format!("label value longer than {MAX_LABEL_VALUE_LEN} characters"),
            );
        }
    }
}

/// Empty lists in a source, operation or condition where another field is set: Istio reads each
/// as unset and accepts the policy, so meshd loads it too, with a warning per list saying how
/// meshd reads it. A negative list excludes nothing either way. A positive one is unset in a
/// DENY or CUSTOM rule (the rest of the part still restricts, as in Istio); in an ALLOW or AUDIT
/// rule it matches nothing (meshd fails closed where Istio would drop the restriction), so the
/// part allows nothing, and the warning says to remove the field for Istio's reading.
pub(crate) fn partly_empty_lists(
    fields: &[(&'static str, Option<&Vec<String>>)],
    path: &FieldPath,
    action: Action,
    part: &str,
    sink: &mut Sink,
) {
    for (name, values) in fields {
        if !values.is_some_and(|v| v.is_empty()) {
            continue;
        }
        let reading = if name.starts_with("not") {
            "it excludes nothing".to_string()
        } else if matches!(action, Action::Deny | Action::Custom) {
            format!("meshd reads it so too: the rest of this {part} still applies")
        } else {
            format!(
                "in an {} rule meshd reads it as matching nothing (fail closed), so this {part} allows nothing",
                if action == Action::Audit {
                    "AUDIT"
                } else {
                    "ALLOW"
                }
            )
        };
        sink.warning(
            path.field(name),
            format!(
                "`{name}: []` is an empty list, which Istio reads as unset; {reading}: remove the field, or list the values it should match"
            ),
        );
    }
}

/// An empty list where values are expected, in a source, operation or condition with no other
/// field set. Istio reads it as unset, which is how `principals: []` came to match every
/// connection: the part is then also "must not be empty", as in Istio, and each list an error.
pub(crate) fn no_empty_lists(
    fields: &[(&'static str, Option<&Vec<String>>)],
    path: &FieldPath,
    sink: &mut Sink,
) {
    for (name, values) in fields {
        if values.is_some_and(|v| v.is_empty()) {
            sink.error(
                path.field(name),
                format!(
                    "`{name}: []` is an empty list, which Istio reads as unset: list the values it should match, or remove the field"
                ),
            );
        }
    }
}

/// Istio's `CheckEmptyValues`: no empty string in the list.
pub(crate) fn no_empty_values(values: &[String], path: &FieldPath, sink: &mut Sink) {
    for (i, v) in values.iter().enumerate() {
        if v.is_empty() {
            sink.error(path.index(i), "empty value not allowed");
        }
    }
}

/// Istio's `ValidateIPs`.
pub(crate) fn ip_blocks(values: &[String], path: &FieldPath, sink: &mut Sink) {
    for (i, v) in values.iter().enumerate() {
        if !v.is_empty()
            && let Err(e) = parse_ip_block(v)
        {
            sink.error(path.index(i), e);
        }
    }
}

/// Istio's `ValidatePorts`.
pub(crate) fn ports(values: &[String], path: &FieldPath, sink: &mut Sink) {
    for (i, v) in values.iter().enumerate() {
        if !v.is_empty()
            && let Err(e) = parse_port(v)
        {
            sink.error(path.index(i), e);
        }
    }
}

/// Istio's `CheckServiceAccount`: `ns/sa` or `sa`, no wildcard, at most 16 values.
pub(crate) fn service_accounts(values: &[String], path: &FieldPath, sink: &mut Sink) {
    if values.len() > 16 {
        sink.error(path.clone(), "at most 16 service accounts are allowed");
    }
    for (i, v) in values.iter().enumerate() {
        let at = path.index(i);
        if v.is_empty() {
            sink.error(at, "empty value not allowed");
        } else if v.contains('*') {
            sink.error(at, "wildcard is not supported in service accounts");
        } else if v.len() > 320 {
            sink.error(at, "service account longer than 320 characters");
        } else if v.matches('/').count() > 1 {
            sink.error(at, "service account must be `namespace/name` or `name`");
        } else if let Some((ns, sa)) = v.split_once('/')
            && (ns.is_empty() || sa.is_empty())
        {
            sink.error(at, "service account must be `namespace/name` or `name`");
        }
    }
}

/// Istio's `CheckWildcardValues` for trust domains: at most one `*`, only at either end; no `/`.
pub(crate) fn trust_domains(values: &[String], path: &FieldPath, sink: &mut Sink) {
    for (i, v) in values.iter().enumerate() {
        let at = path.index(i);
        let stars = v.matches('*').count();
        if v.is_empty() {
            sink.error(at, "empty value not allowed");
        } else if v.contains('/') {
            sink.error(at, "a trust domain must not contain '/'");
        } else if stars > 1 || (stars == 1 && !v.starts_with('*') && !v.ends_with('*')) {
            sink.error(
                at,
                "a trust domain may hold one '*', only at its start or end",
            );
        }
    }
}
