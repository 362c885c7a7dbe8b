//! The operator views built from the configuration in force and the certificate
//! (`meshd status` and the admin page; their shape is meshd-view's). Never key material.

use std::collections::BTreeMap;

use meshd_identity::CredentialSet;
use meshd_manifests::Snapshot;
use meshd_policy::{Kind, PeerAuthnLevel, ResourceKey, WorkloadSelector};
use meshd_view as view;
use time::OffsetDateTime;

use crate::registry::{Protocol, Workload};
use crate::state::ProxyState;

/// The workloads, local first, with the policies and PeerAuthentication modes of local ones.
pub fn workloads(state: &ProxyState) -> view::Workloads {
    let registry = &state.registry;
    let mut workloads: Vec<view::Workload> = registry
        .workloads()
        .into_iter()
        .map(|w| {
            let local = registry.is_local(w);
            view::Workload {
                name: w.key().to_string(),
                local,
                identity: state.spiffe_id(w),
                address: w.address().to_string(),
                labels: w.labels().clone(),
                protocol: match w.protocol() {
                    Protocol::Hbone => "hbone",
                    Protocol::HboneQuic => "hbone-quic",
                    Protocol::Tcp => "tcp",
                }
                .to_string(),
                policies: if local {
                    selecting(state, w)
                } else {
                    Vec::new()
                },
                mtls: if local {
                    port_modes(state, w)
                } else {
                    Vec::new()
                },
            }
        })
        .collect();
    workloads.sort_by(|a, b| (!a.local, &a.name).cmp(&(!b.local, &b.name)));
    view::Workloads {
        generation: state.generation,
        workloads,
    }
}

fn selecting(state: &ProxyState, w: &Workload) -> Vec<view::PolicyRef> {
    state
        .engine
        .policies_for_workload(w.namespace(), w.labels(), &w.bound_policies())
        .into_iter()
        .map(|(key, action)| view::PolicyRef {
            policy: key.to_string(),
            action: action.as_str().to_string(),
        })
        .collect()
}

/// The mode of every named port, and the workload-wide one (port 0) for the rest.
fn port_modes(state: &ProxyState, w: &Workload) -> Vec<view::PortMode> {
    let mut ports: Vec<u16> = w.ports().values().copied().collect();
    ports.sort_unstable();
    ports.dedup();
    std::iter::once(0)
        .chain(ports)
        .map(|port| {
            let mode = state.engine.mtls_mode(w.namespace(), w.labels(), port);
            view::PortMode {
                port,
                mode: if mode.strict { "STRICT" } else { "PERMISSIVE" }.to_string(),
                source: mode.source.map(|k| k.to_string()),
            }
        })
        .collect()
}

/// The services with their endpoints' health.
pub fn services(state: &ProxyState) -> view::Services {
    let registry = &state.registry;
    let services = registry
        .services()
        .into_iter()
        .map(|s| view::Service {
            name: s.key.clone(),
            hosts: s.hosts.clone(),
            vips: s.vips.iter().map(ToString::to_string).collect(),
            ports: s
                .ports
                .iter()
                .map(|p| view::ServicePort {
                    number: p.number,
                    name: p.name.clone(),
                    target_port: p.target,
                })
                .collect(),
            endpoints: registry
                .endpoints(s)
                .map(|w| view::Endpoint {
                    workload: w.key().to_string(),
                    address: w.address().to_string(),
                    healthy: registry.is_healthy(w.address()),
                })
                .collect(),
        })
        .collect();
    view::Services {
        generation: state.generation,
        services,
    }
}

/// The loader's warnings about each resource.
fn warnings_by_resource(snapshot: &Snapshot) -> BTreeMap<&ResourceKey, Vec<String>> {
    let mut by: BTreeMap<&ResourceKey, Vec<String>> = BTreeMap::new();
    for problem in &snapshot.warnings {
        if let Some(key) = &problem.resource {
            let text = if problem.path.is_root() {
                problem.message.clone()
            } else {
                format!("{}: {}", problem.path, problem.message)
            };
            by.entry(key).or_default().push(text);
        }
    }
    by
}

fn selector_text(selector: Option<&WorkloadSelector>) -> Option<String> {
    let labels = &selector?.match_labels;
    (!labels.is_empty()).then(|| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// Every AuthorizationPolicy and PeerAuthentication with its scope, action and warnings.
pub fn policies(state: &ProxyState) -> view::Policies {
    let snapshot = &state.snapshot;
    let root = snapshot.root_namespace.as_str();
    let warnings = warnings_by_resource(snapshot);
    let loader_warnings = |kind, meta| {
        warnings
            .get(&ResourceKey::new(kind, meta))
            .cloned()
            .unwrap_or_default()
    };
    let mut policies: Vec<view::Policy> = Vec::new();
    for sourced in &snapshot.authorization_policies {
        let p = &sourced.resource;
        let ns = p.metadata.namespace();
        let selector = selector_text(p.spec.selector.as_ref());
        let scope = match (p.spec.has_target_refs(), ns == root, selector) {
            (true, _, _) => "targetRef (not enforced)".to_string(),
            (false, true, None) => "mesh".to_string(),
            (false, true, Some(s)) => format!("mesh: {s}"),
            (false, false, None) => format!("namespace {ns}"),
            (false, false, Some(s)) => format!("workloads {ns}: {s}"),
        };
        let rules = p.spec.rules.as_deref().unwrap_or_default();
        let mut notes = Vec::new();
        if p.metadata.is_dry_run() {
            notes.push("dry-run: never changes a decision".to_string());
        }
        let from_loader = loader_warnings(Kind::AuthorizationPolicy, &p.metadata);
        let l7: Vec<String> = rules.iter().flat_map(|r| r.l7_attributes()).collect();
        if from_loader.is_empty() && !l7.is_empty() {
            notes.push(format!("L7 attributes: {}", l7.join(", ")));
        }
        notes.extend(from_loader);
        policies.push(view::Policy {
            kind: "AuthorizationPolicy".into(),
            name: format!("{ns}/{}", p.metadata.name()),
            scope,
            action: p.spec.action().as_str().to_string(),
            rules: rules.len(),
            warnings: notes,
            source: sourced.location(),
        });
    }
    for sourced in &snapshot.peer_authentications {
        let p = &sourced.resource;
        let ns = p.metadata.namespace();
        let selector = selector_text(p.spec.selector.as_ref()).unwrap_or_default();
        let scope = match p.level(root) {
            PeerAuthnLevel::Mesh => "mesh".to_string(),
            PeerAuthnLevel::Namespace => format!("namespace {ns}"),
            PeerAuthnLevel::Workload => format!("workloads {ns}: {selector}"),
            PeerAuthnLevel::Ignored => "ignored (selector in the root namespace)".to_string(),
        };
        policies.push(view::Policy {
            kind: "PeerAuthentication".into(),
            name: format!("{ns}/{}", p.metadata.name()),
            scope,
            action: p.spec.mode().as_str().to_string(),
            rules: p.spec.port_level_mtls.as_ref().map_or(0, |m| m.len()),
            warnings: loader_warnings(Kind::PeerAuthentication, &p.metadata),
            source: sourced.location(),
        });
    }
    policies.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    view::Policies {
        generation: state.generation,
        root_namespace: root.to_string(),
        policies,
    }
}

/// Set when the certificate has expired, or has less than a quarter of its lifetime left
/// (where meshd's own rotation warning starts).
pub fn certificate_warning(set: &CredentialSet, now: OffsetDateTime) -> Option<String> {
    let c = set.credentials();
    let (not_before, not_after) = (c.not_before(), c.not_after());
    if now >= not_after {
        return Some(format!("expired at {}", view::rfc3339(not_after)));
    }
    let lifetime = not_after - not_before;
    let left = not_after - now;
    (left * 4 < lifetime).then(|| {
        format!(
            "expires at {}: less than a quarter of its lifetime left and not yet rotated",
            view::rfc3339(not_after)
        )
    })
}

/// The certificate in force, its bundle's roots and the rotation counters.
pub fn certs(set: &CredentialSet, rotations: u64, failed_rotations: u64) -> view::Certs {
    let c = set.credentials();
    let now = OffsetDateTime::now_utc();
    let serial: Vec<String> = c.serial().iter().map(|b| format!("{b:02x}")).collect();
    let bundle = set.bundle();
    let trust_domains = bundle
        .trust_domains()
        .map(|td| view::TrustDomain {
            trust_domain: td.to_string(),
            roots: bundle
                .roots(td)
                .unwrap_or_default()
                .iter()
                .map(
                    |der| match meshd_identity::x509::subject_and_not_after(der) {
                        Ok((subject, not_after)) => view::Root {
                            subject,
                            not_after: view::rfc3339(not_after),
                        },
                        Err(e) => view::Root {
                            subject: format!("unreadable: {e}"),
                            not_after: String::new(),
                        },
                    },
                )
                .collect(),
        })
        .collect();
    view::Certs {
        identity: set.id().to_string(),
        serial: serial.join(":"),
        issuer: c.issuer().to_string(),
        not_before: view::rfc3339(c.not_before()),
        not_after: view::rfc3339(c.not_after()),
        seconds_left: (c.not_after() - now).whole_seconds(),
        warning: certificate_warning(set, now),
        rotations,
        failed_rotations,
        trust_domains,
        workloads: Vec::new(),
    }
}

/// A local workload's own certificate, for `GET /status/certs`' `workloads`.
pub fn workload_cert(set: &CredentialSet) -> view::WorkloadCert {
    let c = set.credentials();
    let now = OffsetDateTime::now_utc();
    let serial: Vec<String> = c.serial().iter().map(|b| format!("{b:02x}")).collect();
    view::WorkloadCert {
        identity: set.id().to_string(),
        serial: serial.join(":"),
        not_after: view::rfc3339(c.not_after()),
        seconds_left: (c.not_after() - now).whole_seconds(),
        warning: certificate_warning(set, now),
    }
}

/// The summary: generation, last reload error, certificate, counts.
pub fn summary(
    state: &ProxyState,
    set: &CredentialSet,
    last_reload_error: Option<String>,
    live: &crate::live::Live,
) -> view::Summary {
    let now = OffsetDateTime::now_utc();
    let (open_connections, denials_total) = live.counts();
    view::Summary {
        version: env!("CARGO_PKG_VERSION").to_string(),
        generation: state.generation,
        last_reload_error,
        identity: set.id().to_string(),
        not_after: view::rfc3339(set.not_after()),
        seconds_left: (set.not_after() - now).whole_seconds(),
        certificate_warning: certificate_warning(set, now),
        local_workloads: state.registry.local_workloads().count(),
        open_connections,
        denials_total,
    }
}

/// The traffic picture: [`crate::Live::traffic`] with the state's local workloads as nodes
/// (none while meshd starts and has no state yet).
pub fn traffic(state: Option<&ProxyState>, live: &crate::live::Live) -> view::Traffic {
    let mut local: Vec<String> = state
        .map(|s| {
            s.registry
                .local_workloads()
                .map(|w| crate::traffic::workload_name(&w.meta()))
                .collect()
        })
        .unwrap_or_default();
    local.sort();
    local.dedup();
    live.traffic(&local)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use meshd_identity::{Credentials, DevCa};

    use super::*;

    /// A one-hour certificate from a fresh dev CA.
    fn certificate() -> CredentialSet {
        let ca = DevCa::generate("cluster.local").unwrap();
        let svid = ca.issue("shop", "web", Duration::from_secs(3600)).unwrap();
        let credentials =
            Credentials::from_pem(svid.cert_pem.as_bytes(), svid.key_pem.as_bytes()).unwrap();
        CredentialSet::new(credentials, ca.bundle().unwrap(), None).unwrap()
    }

    #[test]
    fn expiry_warning_under_a_quarter_of_the_lifetime_and_once_expired() {
        let set = certificate();
        let now = OffsetDateTime::now_utc();
        assert_eq!(certificate_warning(&set, now), None);
        assert_eq!(
            certificate_warning(&set, now + time::Duration::minutes(30)),
            None
        );
        let soon = certificate_warning(&set, now + time::Duration::minutes(50)).unwrap();
        assert!(
            soon.contains("less than a quarter of its lifetime left"),
            "{soon}"
        );
        let expired = certificate_warning(&set, now + time::Duration::hours(2)).unwrap();
        assert!(expired.starts_with("expired at "), "{expired}");
    }

    #[test]
    fn the_certificate_view_names_issuer_and_roots_and_never_the_key() {
        let set = certificate();
        let view = certs(&set, 2, 1);
        assert_eq!(view.identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert!(view.issuer.contains("meshd dev CA"), "{}", view.issuer);
        assert_eq!((view.rotations, view.failed_rotations), (2, 1));
        assert!(
            (3500..=3600).contains(&view.seconds_left),
            "{}",
            view.seconds_left
        );
        assert_eq!(view.trust_domains.len(), 1);
        assert_eq!(view.trust_domains[0].roots.len(), 1);
        let json = serde_json::to_string(&view).unwrap();
        assert!(
            !json.contains("PRIVATE") && !json.contains("BEGIN"),
            "{json}"
        );
    }
}
