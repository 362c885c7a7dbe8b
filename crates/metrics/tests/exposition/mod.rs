//! Test helpers: the expected series lines, and a check that text is valid exposition.
#![allow(dead_code)] // each test binary uses part of the helpers

use std::collections::HashSet;

/// ztunnel's `CommonTrafficLabels`, in order.
const TRAFFIC_LABELS: [&str; 27] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
];

/// A traffic label set: every label `unknown` until set.
#[derive(Debug, Clone)]
pub struct Traffic(Vec<(&'static str, String)>);

impl Traffic {
    pub fn new() -> Traffic {
        let mut t = Traffic(
            TRAFFIC_LABELS
                .iter()
                .map(|l| (*l, "unknown".to_string()))
                .collect(),
        );
        t = t.set("request_protocol", "tcp").set("response_flags", "-");
        t
    }

    pub fn set(mut self, label: &str, value: &str) -> Traffic {
        let slot = self
            .0
            .iter_mut()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no traffic label {label}"));
        slot.1 = value.to_string();
        self
    }

    /// The source workload's labels as ztunnel derives them.
    pub fn source(
        self,
        workload: &str,
        namespace: &str,
        canonical: &str,
        revision: &str,
    ) -> Traffic {
        self.set("source_workload", workload)
            .set("source_workload_namespace", namespace)
            .set("source_canonical_service", canonical)
            .set("source_canonical_revision", revision)
            .set("source_app", canonical)
            .set("source_version", revision)
            .set("source_cluster", "Kubernetes")
    }

    /// The destination workload's labels as ztunnel derives them.
    pub fn destination(
        self,
        workload: &str,
        namespace: &str,
        canonical: &str,
        revision: &str,
    ) -> Traffic {
        self.set("destination_workload", workload)
            .set("destination_workload_namespace", namespace)
            .set("destination_canonical_service", canonical)
            .set("destination_canonical_revision", revision)
            .set("destination_app", canonical)
            .set("destination_version", revision)
            .set("destination_cluster", "Kubernetes")
    }

    pub fn flag(self, flag: &str) -> Traffic {
        self.set("response_flags", flag)
    }

    pub fn render(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(l, v)| format!("{l}=\"{v}\"")).collect();
        pairs.join(",")
    }

    /// The series line `name{labels} value`.
    pub fn line(&self, name: &str, value: u64) -> String {
        format!("{name}{{{}}} {value}", self.render())
    }
}

/// Asserts `text` has exactly `line`.
#[track_caller]
pub fn assert_line(text: &str, line: &str) {
    if !text.lines().any(|l| l == line) {
        let name = line.split(['{', ' ']).next().unwrap_or(line);
        let related: Vec<&str> = text.lines().filter(|l| l.starts_with(name)).collect();
        panic!(
            "missing line:\n{line}\nlines of {name}:\n{}",
            related.join("\n")
        );
    }
}

/// The samples of `name` (`name{...} value` or `name value`).
pub fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .collect()
}

/// The value of the only sample of `name`.
#[track_caller]
pub fn value(text: &str, name: &str) -> f64 {
    let found = samples(text, name);
    assert_eq!(found.len(), 1, "one sample of {name}: {found:?}");
    found[0]
        .rsplit_once(' ')
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {:?}", found[0]))
}

/// Checks `text` is OpenMetrics text as Prometheus parses it: `# HELP`/`# TYPE`/`# UNIT`
/// comments, samples `name{label="value",...} value` of a declared family, `# EOF` last.
pub fn check_exposition(text: &str) -> Result<(), String> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    let mut eof = false;
    for line in text.lines() {
        if eof {
            return Err(format!("line after # EOF: {line}"));
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let kind = parts.next().unwrap_or_default();
            let name = parts
                .next()
                .ok_or(format!("comment without name: {line}"))?;
            check_name(name)?;
            match kind {
                "TYPE" => {
                    let t = parts.next().ok_or(format!("TYPE without type: {line}"))?;
                    if !["counter", "gauge", "histogram", "info", "unknown"].contains(&t) {
                        return Err(format!("bad type: {line}"));
                    }
                    if !seen.insert(name.to_string()) {
                        return Err(format!("family declared twice: {name}"));
                    }
                    families.push((name.to_string(), t.to_string()));
                }
                "HELP" | "UNIT" => {}
                _ => return Err(format!("bad comment: {line}")),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or(format!("sample without value: {line}"))?;
        value
            .parse::<f64>()
            .map_err(|_| format!("bad value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (
                name,
                Some(
                    rest.strip_suffix('}')
                        .ok_or(format!("unterminated labels: {line}"))?,
                ),
            ),
            None => (series, None),
        };
        check_name(name)?;
        let (family, kind) = families
            .last()
            .ok_or(format!("sample before any TYPE: {line}"))?;
        let expected = if kind == "counter" {
            format!("{family}_total")
        } else {
            family.clone()
        };
        if name != expected {
            return Err(format!("sample {name} under family {family} ({kind})"));
        }
        if let Some(labels) = labels {
            check_labels(labels).map_err(|e| format!("{e}: {line}"))?;
        }
    }
    if !eof {
        return Err("no # EOF".into());
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("bad metric name {name:?}"))
    }
}

/// `key="value"` pairs separated by commas; values may hold `\\`, `\"` and `\n` escapes only.
fn check_labels(mut rest: &str) -> Result<(), String> {
    let mut keys = HashSet::new();
    loop {
        let (key, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        check_name(key)?;
        if key.contains(':') || !keys.insert(key) {
            return Err(format!("bad or repeated label {key}"));
        }
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\' | '"' | 'n')) => {}
                    _ => return Err("bad escape".into()),
                },
                Some((_, '\n')) => return Err("raw newline".into()),
                Some((i, '"')) => break i,
                Some(_) => {}
                None => return Err("unterminated value".into()),
            }
        };
        rest = &after[end + 1..];
        if rest.is_empty() {
            return Ok(());
        }
        rest = rest.strip_prefix(',').ok_or("labels not separated by ,")?;
    }
}
