//! WorkloadEntry and ServiceEntry validation: Istio's rules for the fields meshd uses, with the
//! one meshd restriction that workload addresses are IP addresses (meshd resolves no names).

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::networking::{ServiceEntrySpec, WorkloadEntrySpec};
use crate::path::FieldPath;
use crate::validate::{Sink, checks};
use crate::values::parse_ip_block;

const PROTOCOLS: [&str; 10] = [
    "HTTP", "HTTPS", "GRPC", "GRPC-WEB", "HTTP2", "MONGO", "TCP", "TLS", "UDP", "MYSQL",
];

pub(super) fn validate_workload_entry(spec: &WorkloadEntrySpec, path: &FieldPath, sink: &mut Sink) {
    match spec.address.as_deref() {
        None | Some("") => sink.error(
            path.field("address"),
            "`address` is required: the workload's IP address",
        ),
        Some(address) if address.starts_with("unix://") => sink.error(
            path.field("address"),
            format!(
                "{address:?} is a Unix domain socket: meshd serves workloads at IP addresses only"
            ),
        ),
        Some(address) => {
            if address.parse::<IpAddr>().is_err() {
                sink.error(
                    path.field("address"),
                    format!("{address:?} is not an IP address (meshd does not resolve workload hostnames)"),
                );
            }
        }
    }
    for (name, port) in &spec.ports {
        let at = path.field("ports").field(name);
        if name.is_empty() {
            sink.error(at.clone(), "empty port name");
        }
        if !(1..=65535).contains(port) {
            sink.error(at, format!("port {port} must be in the range 1..65535"));
        }
    }
    checks::labels(&spec.labels, &path.field("labels"), sink);
    if let Some(sa) = spec.service_account.as_deref()
        && let Err(e) = checks::dns1123_subdomain(sa)
    {
        sink.error(
            path.field("serviceAccount"),
            e.replace("name", "service account"),
        );
    }
}

pub(super) fn validate_service_entry(spec: &ServiceEntrySpec, path: &FieldPath, sink: &mut Sink) {
    if spec.hosts.is_empty() {
        sink.error(
            path.field("hosts"),
            "`hosts` must hold at least one host name",
        );
    }
    for (i, host) in spec.hosts.iter().enumerate() {
        let name = host.strip_prefix("*.").unwrap_or(host);
        if host.is_empty()
            || host == "*"
            || checks::dns1123_subdomain(&name.to_ascii_lowercase()).is_err()
        {
            sink.error(
                path.field("hosts").index(i),
                format!(
                    "{host:?} is not a valid host name (a DNS name, optionally starting with `*.`)"
                ),
            );
        }
    }
    for (i, address) in spec.addresses.iter().enumerate() {
        if let Err(e) = parse_ip_block(address) {
            sink.error(path.field("addresses").index(i), e);
        }
    }
    if spec.ports.is_empty() {
        sink.error(path.field("ports"), "`ports` must hold at least one port");
    }
    let mut numbers = BTreeSet::new();
    let mut names = BTreeSet::new();
    for (i, port) in spec.ports.iter().enumerate() {
        let at = path.field("ports").index(i);
        match port.number {
            None => sink.error(at.field("number"), "`number` is required"),
            Some(n) if !(1..=65535).contains(&n) => sink.error(
                at.field("number"),
                format!("port {n} must be in the range 1..65535"),
            ),
            Some(n) => {
                if !numbers.insert(n) {
                    sink.error(
                        at.field("number"),
                        format!("port number {n} is listed twice"),
                    );
                }
            }
        }
        if let Some(name) = port.name.as_deref()
            && !names.insert(name)
        {
            sink.error(
                at.field("name"),
                format!("port name {name:?} is listed twice"),
            );
        }
        if let Some(target) = port.target_port
            && !(1..=65535).contains(&target)
        {
            sink.error(
                at.field("targetPort"),
                format!("port {target} must be in the range 1..65535"),
            );
        }
        if let Some(protocol) = port.protocol.as_deref()
            && !PROTOCOLS.contains(&protocol.to_ascii_uppercase().as_str())
        {
            sink.error(
                at.field("protocol"),
                format!("unknown protocol {protocol:?}"),
            );
        }
    }
    if let Some(location) = spec.location.as_deref()
        && !matches!(location, "MESH_EXTERNAL" | "MESH_INTERNAL")
    {
        sink.error(
            path.field("location"),
            format!("unknown location {location:?}: want MESH_EXTERNAL or MESH_INTERNAL"),
        );
    }
    if let Some(resolution) = spec.resolution.as_deref()
        && !matches!(resolution, "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN")
    {
        sink.error(
            path.field("resolution"),
            format!("unknown resolution {resolution:?}: want NONE, STATIC, DNS or DNS_ROUND_ROBIN"),
        );
    }
    if spec.endpoints.is_some() && spec.workload_selector.is_some() {
        sink.error(
            path.clone(),
            "only one of `endpoints` or `workloadSelector` can be set",
        );
    }
    if let Some(selector) = &spec.workload_selector {
        let at = path.field("workloadSelector");
        checks::labels(&selector.labels, &at.field("labels"), sink);
        if selector.labels.is_empty() {
            // As Istio warns for policy selectors: an empty selector selects everything.
            sink.warning(
                at,
                "workload selector specified without labels: every WorkloadEntry in this namespace becomes an endpoint of this service",
            );
        }
    }
    for (i, endpoint) in spec.endpoints.iter().flatten().enumerate() {
        validate_workload_entry(endpoint, &path.field("endpoints").index(i), sink);
    }
    for (i, san) in spec.subject_alt_names.iter().flatten().enumerate() {
        if san.is_empty() {
            sink.error(
                path.field("subjectAltNames").index(i),
                "empty value not allowed",
            );
        }
    }
}
