//! `/config_dump`: the configuration in force, as JSON, for operators. Never key material: the
//! certificate appears as identity, serial and validity only.

use meshd_identity::CredentialSet;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::state::ProxyState;

/// The dump of `state`, the certificate in force and the last rejected reload (if the newest
/// configuration on disk is not the one in force).
pub fn config_dump(
    state: &ProxyState,
    certificate: &CredentialSet,
    last_reload_error: Option<&str>,
) -> Value {
    let snapshot = &state.snapshot;
    let registry = &state.registry;
    let local: Vec<Value> = registry
        .local_workloads()
        .map(|w| {
            let policies: Vec<Value> = state
                .engine
                .policies_for(&w.namespace, &w.labels)
                .into_iter()
                .map(|(key, action)| json!({"policy": key.to_string(), "action": action.as_str()}))
                .collect();
            json!({
                "workload": w.key,
                "address": w.address.to_string(),
                "identity": state.spiffe_id(w),
                "labels": w.labels,
                "ports": w.ports,
                "policies": policies,
                "strictMtls": state.engine.strict_anywhere(&w.namespace, &w.labels).map(|k| k.to_string()),
            })
        })
        .collect();
    let workloads: Vec<Value> = registry
        .workloads()
        .iter()
        .map(|w| {
            json!({
                "workload": w.key,
                "address": w.address.to_string(),
                "identity": state.spiffe_id(w),
                "labels": w.labels,
                "ports": w.ports,
                "protocol": format!("{:?}", w.protocol),
            })
        })
        .collect();
    let services: Vec<Value> = registry
        .services()
        .iter()
        .map(|s| {
            json!({
                "service": s.key,
                "hosts": s.hosts,
                "vips": s.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({"number": p.number, "name": p.name, "targetPort": p.target})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let sourced = |kind: &str, ns: &str, name: &str, location: String| json!({"kind": kind, "name": format!("{ns}/{name}"), "source": location});
    let mut resources: Vec<Value> = Vec::new();
    for p in &snapshot.authorization_policies {
        let m = &p.resource.metadata;
        resources.push(sourced(
            "AuthorizationPolicy",
            m.namespace(),
            m.name(),
            p.location(),
        ));
    }
    for p in &snapshot.peer_authentications {
        let m = &p.resource.metadata;
        resources.push(sourced(
            "PeerAuthentication",
            m.namespace(),
            m.name(),
            p.location(),
        ));
    }
    for p in &snapshot.workload_entries {
        let m = &p.resource.metadata;
        resources.push(sourced(
            "WorkloadEntry",
            m.namespace(),
            m.name(),
            p.location(),
        ));
    }
    for p in &snapshot.service_entries {
        let m = &p.resource.metadata;
        resources.push(sourced(
            "ServiceEntry",
            m.namespace(),
            m.name(),
            p.location(),
        ));
    }
    json!({
        "generation": state.generation,
        "rootNamespace": snapshot.root_namespace,
        "trustDomain": state.trust_domain,
        "files": snapshot.files,
        "lastReloadError": last_reload_error,
        "resources": resources,
        "localWorkloads": local,
        "workloads": workloads,
        "services": services,
        "certificate": certificate_dump(certificate),
    })
}

/// Identity, serial and validity of the certificate in force, and the bundle's trust domains.
pub fn certificate_dump(set: &CredentialSet) -> Value {
    let credentials = set.credentials();
    let serial: String = credentials
        .serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let when = |t: time::OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
    json!({
        "identity": set.id().to_string(),
        "serial": serial,
        "notBefore": when(credentials.not_before()),
        "notAfter": when(credentials.not_after()),
        "secondsLeft": (credentials.not_after() - time::OffsetDateTime::now_utc()).whole_seconds(),
        "trustDomains": set.bundle().trust_domains().map(|td| {
            json!({"trustDomain": td.to_string(), "roots": set.bundle().roots(td).map_or(0, <[_]>::len)})
        }).collect::<Vec<_>>(),
    })
}
