//! `istio.workload.Workload` and `istio.workload.Service` into the model.

use crate::convert::{exact, ip, known, name, net, port, required};
use crate::error::{DecodeError, Problem};
use crate::intern::{Sym, with_pool};
use crate::model::{
    Addresses, DEFAULT_SERVICE_ACCOUNT, DEFAULT_TRUST_DOMAIN, Health, LoadBalancing,
    NetworkAddress, Owner, Placement, PortMapping, Refusal, Service, ServicePorts, Tunnel,
    Workload, WorkloadType,
};
use crate::proto::workload as pb;

/// A Workload: decoded, validated, and marked refused when meshd cannot reach it safely.
pub fn workload(w: pb::Workload) -> Result<Workload, DecodeError> {
    if w.uid.is_empty() {
        return Err(DecodeError::field("workload.uid", Problem::Empty));
    }
    required(&w.namespace, "workload.namespace")?;
    name(&w.name, "workload.name")?;
    name(&w.service_account, "workload.service_account")?;
    name(&w.trust_domain, "workload.trust_domain")?;
    let addresses = w
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| ip(a, || format!("workload.addresses[{i}]")))
        .collect::<Result<Addresses, _>>()?;
    let tunnel_protocol: pb::TunnelProtocol = known(w.tunnel_protocol, "workload.tunnel_protocol")?;
    let application_tunnel = match &w.application_tunnel {
        Some(t) => {
            known::<pb::application_tunnel::Protocol>(
                t.protocol,
                "workload.application_tunnel.protocol",
            )? != pb::application_tunnel::Protocol::None
        }
        None => false,
    };
    let health = match known::<pb::WorkloadStatus>(w.status, "workload.status")? {
        pb::WorkloadStatus::Healthy => Health::Healthy,
        pb::WorkloadStatus::Unhealthy => Health::Unhealthy,
    };
    let workload_type = match known::<pb::WorkloadType>(w.workload_type, "workload.workload_type")?
    {
        pb::WorkloadType::Deployment => WorkloadType::Deployment,
        pb::WorkloadType::Cronjob => WorkloadType::CronJob,
        pb::WorkloadType::Pod => WorkloadType::Pod,
        pb::WorkloadType::Job => WorkloadType::Job,
    };
    let host_network = known::<pb::NetworkMode>(w.network_mode, "workload.network_mode")?
        == pb::NetworkMode::HostNetwork;
    let refused = if w.waypoint.is_some() {
        Some(Refusal::Waypoint)
    } else if w.network_gateway.is_some() {
        Some(Refusal::NetworkGateway)
    } else if application_tunnel {
        Some(Refusal::ApplicationTunnel)
    } else if tunnel_protocol == pb::TunnelProtocol::LegacyIstioMtls {
        Some(Refusal::LegacyIstioMtls)
    } else if addresses.is_empty() && !w.hostname.is_empty() {
        Some(Refusal::HostnameOnly)
    } else if !w.extensions.is_empty() {
        Some(Refusal::Extensions)
    } else {
        None
    };
    let services = services(w.services)?;
    let policies = policy_keys(&w.authorization_policies)?;
    let locality = w.locality.unwrap_or_default();
    // Every repeated value is the process's shared copy (see `intern`); the uid and the name
    // are one workload's own.
    Ok(with_pool(|pool| Workload {
        services,
        authorization_policies: {
            let keys: Vec<Sym> = policies.iter().map(|k| pool.sym(k)).collect();
            pool.policies(&keys)
        },
        trust_domain: pool.sym(or_default(&w.trust_domain, DEFAULT_TRUST_DOMAIN)),
        service_account: pool.sym(or_default(&w.service_account, DEFAULT_SERVICE_ACCOUNT)),
        tunnel: match tunnel_protocol {
            pb::TunnelProtocol::Hbone => Tunnel::Hbone,
            // LEGACY_ISTIO_MTLS is refused above; NONE is plain TCP.
            pb::TunnelProtocol::None | pb::TunnelProtocol::LegacyIstioMtls => Tunnel::None,
        },
        uid: Sym::from(w.uid),
        name: Sym::from(w.name),
        namespace: pool.sym(&w.namespace),
        addresses,
        hostname: pool.sym(&w.hostname),
        native_tunnel: w.native_tunnel,
        health,
        host_network,
        capacity: w.capacity.unwrap_or(1),
        refused,
        owner: {
            let owner = Owner {
                canonical_name: pool.sym(&w.canonical_name),
                canonical_revision: pool.sym(&w.canonical_revision),
                workload_type,
                workload_name: pool.sym(&w.workload_name),
            };
            pool.owner(owner)
        },
        placement: {
            let placement = Placement {
                cluster_id: pool.sym(&w.cluster_id),
                network: pool.sym(&w.network),
                node: pool.sym(&w.node),
                locality: [
                    pool.sym(&locality.region),
                    pool.sym(&locality.zone),
                    pool.sym(&locality.subzone),
                ],
            };
            pool.placement(placement)
        },
    }))
}

fn or_default<'a>(value: &'a str, default: &'a str) -> &'a str {
    if value.is_empty() { default } else { value }
}

/// `services`: `<namespace>/<hostname>` → ports, in key order.
fn services(
    map: std::collections::HashMap<String, pb::PortList>,
) -> Result<ServicePorts, DecodeError> {
    let mut out = Vec::with_capacity(map.len());
    for (key, list) in map {
        let field = format!("workload.services[{key:?}]");
        match key.split_once('/') {
            Some((ns, host)) if !ns.is_empty() && !host.is_empty() => {}
            _ => return Err(DecodeError::field(field, Problem::BadServiceKey(key))),
        }
        let ports = ports(&list.ports, &field)?;
        out.push((key, ports));
    }
    Ok(out.into_iter().collect())
}

/// Ports: the service port must be 1–65535; a target port of 0 means "not given" (see
/// [`PortMapping::target_port`]).
fn ports(ports: &[pb::Port], field: &str) -> Result<Vec<PortMapping>, DecodeError> {
    ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(PortMapping {
                service_port: port(p.service_port, || {
                    format!("{field}.ports[{i}].service_port")
                })?,
                target_port: match p.target_port {
                    0 => None,
                    t => Some(port(t, || format!("{field}.ports[{i}].target_port"))?),
                },
                app_protocol: known::<pb::AppProtocol>(
                    p.app_protocol,
                    &format!("{field}.ports[{i}].app_protocol"),
                )? as i32,
            })
        })
        .collect()
}

/// `authorization_policies`: each `<namespace>/<name>`; a repeated key is kept once (the engine
/// visits a bound policy once per listing).
fn policy_keys(keys: &[String]) -> Result<Vec<&str>, DecodeError> {
    for (i, key) in keys.iter().enumerate() {
        match key.split_once('/') {
            Some((ns, n)) if !ns.is_empty() && !n.is_empty() && !n.contains('/') => {}
            _ => {
                return Err(DecodeError::field(
                    format!("workload.authorization_policies[{i}]"),
                    Problem::BadPolicyKey(key.clone()),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    Ok(keys
        .iter()
        .map(String::as_str)
        .filter(|k| seen.insert(*k))
        .collect())
}

/// A Service: decoded, validated, and marked refused when it is served by a waypoint.
pub fn service(s: pb::Service) -> Result<Service, DecodeError> {
    required(&s.namespace, "service.namespace")?;
    if s.hostname.is_empty() {
        return Err(DecodeError::field("service.hostname", Problem::Empty));
    }
    name(&s.name, "service.name")?;
    let addresses = s.addresses.iter().enumerate().map(|(i, a)| {
        let field = || format!("service.addresses[{i}]");
        Ok(NetworkAddress {
            network: a.network.clone(),
            address: net(&a.address, a.length, &field)?,
        })
    });
    let addresses = exact(addresses)?;
    let load_balancing = match s.load_balancing {
        Some(lb) => {
            for (i, scope) in lb.routing_preference.iter().enumerate() {
                known::<pb::load_balancing::Scope>(
                    *scope,
                    &format!("service.load_balancing.routing_preference[{i}]"),
                )?;
            }
            known::<pb::load_balancing::Mode>(lb.mode, "service.load_balancing.mode")?;
            let health = known::<pb::load_balancing::HealthPolicy>(
                lb.health_policy,
                "service.load_balancing.health_policy",
            )?;
            Some(LoadBalancing {
                routing_preference: lb.routing_preference,
                mode: lb.mode,
                allow_unhealthy: health == pb::load_balancing::HealthPolicy::AllowAll,
            })
        }
        None => None,
    };
    let ip_families = known::<pb::IpFamilies>(s.ip_families, "service.ip_families")? as i32;
    let visibility = known::<pb::service::Visibility>(s.visibility, "service.visibility")?;
    let refused = if s.waypoint.is_some() || !s.weighted_waypoints.is_empty() {
        Some(Refusal::Waypoint)
    } else if !s.extensions.is_empty() {
        Some(Refusal::Extensions)
    } else {
        None
    };
    Ok(Service {
        ports: ports(&s.ports, "service")?,
        name: s.name,
        namespace: s.namespace,
        hostname: s.hostname,
        addresses,
        subject_alt_names: s.subject_alt_names,
        load_balancing,
        ip_families,
        namespace_visible_only: visibility == pb::service::Visibility::Namespace,
        canonical: s.canonical,
        refused,
    })
}
