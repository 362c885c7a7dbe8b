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
    let local = local_workloads(state);
    let workloads: Vec<Value> = registry
        .workloads()
        .into_iter()
        .map(|w| {
            json!({
                "workload": w.key(),
                "address": w.address().to_string(),
                "identity": state.spiffe_id(w),
                "labels": w.labels(),
                "ports": w.ports(),
                "protocol": format!("{:?}", w.protocol()),
                "origin": format!("{:?}", w.origin()),
                "otherAddresses": w.addresses().skip(1).map(|a| a.to_string()).collect::<Vec<_>>(),
                "refused": w.refused().map(|r| r.to_string()),
                "boundPolicies": w.bound_policies().iter().map(|k| k.as_str()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let services: Vec<Value> = registry
        .services()
        .into_iter()
        .map(|s| {
            json!({
                "service": s.key,
                "hosts": s.hosts,
                "vips": s.vips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({"number": p.number, "name": p.name, "targetPort": p.target})).collect::<Vec<_>>(),
                "origin": format!("{:?}", s.origin),
                "refused": s.refused.map(|r| r.to_string()),
            })
        })
        .collect();
    let resources = resources(snapshot);
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

/// Local workloads with the policies that select them and whether STRICT applies.
fn local_workloads(state: &ProxyState) -> Vec<Value> {
    state
        .registry
        .local_workloads()
        .map(|w| {
            let policies: Vec<Value> = state
                .engine
                .policies_for(w.namespace(), w.labels())
                .into_iter()
                .map(|(key, action)| json!({"policy": key.to_string(), "action": action.as_str()}))
                .collect();
            json!({
                "workload": w.key(),
                "address": w.address().to_string(),
                "identity": state.spiffe_id(w),
                "labels": w.labels(),
                "ports": w.ports(),
                "policies": policies,
                "strictMtls": state.engine.strict_anywhere(w.namespace(), w.labels()).map(|k| k.to_string()),
            })
        })
        .collect()
}

/// Every resource with the file and line it was read from.
fn resources(snapshot: &meshd_manifests::Snapshot) -> Vec<Value> {
    snapshot
        .authorization_policies
        .iter()
        .map(|r| ("AuthorizationPolicy", &r.resource.metadata, r.location()))
        .chain(
            snapshot
                .peer_authentications
                .iter()
                .map(|r| ("PeerAuthentication", &r.resource.metadata, r.location())),
        )
        .chain(
            snapshot
                .workload_entries
                .iter()
                .map(|r| ("WorkloadEntry", &r.resource.metadata, r.location())),
        )
        .chain(
            snapshot
                .service_entries
                .iter()
                .map(|r| ("ServiceEntry", &r.resource.metadata, r.location())),
        )
        .map(|(kind, meta, source)| {
            json!({
                "kind": kind,
                "name": format!("{}/{}", meta.namespace(), meta.name()),
                "source": source,
            })
        })
        .collect()
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
