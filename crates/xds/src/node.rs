//! The node identity meshd presents to istiod, exactly as ztunnel sends it.
//!
//! istiod parses the ID with `ParseServiceNodeWithMetadata` (four `~` parts, a known node type,
//! an IP) and reads the metadata keys of `pkg/model/proxy.go`. `ztunnel` is the node type that
//! istiod serves the ambient resources to and auto-registers with the HBONE tunnel label.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use prost_types::{ListValue, Struct, Value, value::Kind};

use crate::Error;
use crate::proto::envoy::config::core::v3::Node;
use crate::settings::ControlPlaneSettings;

/// The node type in the ID: what istiod calls an ambient node proxy.
pub const NODE_TYPE: &str = "ztunnel";

/// `ztunnel~<ip>~<name>.<ns>~<ns>.svc.cluster.local`, ztunnel's node ID.
pub fn node_id(ip: IpAddr, name: &str, namespace: &str) -> String {
    format!("{NODE_TYPE}~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local")
}

/// The name in the node ID: `name`, else `workloadName`, else the machine's host name.
pub fn node_name(settings: &ControlPlaneSettings) -> String {
    settings
        .name
        .clone()
        .or_else(|| settings.workload_name.clone())
        .unwrap_or_else(host_name)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshd".to_string())
}

/// The local address the kernel would use towards `peer`: the VM's mesh-reachable address when
/// none is configured. A UDP `connect` only picks a route; no packet is sent.
pub fn local_address_towards(peer: SocketAddr) -> Result<IpAddr, Error> {
    let bind: SocketAddr = if peer.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind).map_err(|e| Error::io("udp socket", e))?;
    sock.connect(peer)
        .map_err(|e| Error::io(format!("route to {peer}"), e))?;
    Ok(sock
        .local_addr()
        .map_err(|e| Error::io("udp socket", e))?
        .ip())
}

/// The Node sent on every initial Delta request.
pub fn node(settings: &ControlPlaneSettings, instance_ip: IpAddr) -> Node {
    let name = node_name(settings);
    let mut meta: Vec<(&str, Value)> = vec![
        ("NAME", string(&name)),
        ("NAMESPACE", string(&settings.namespace)),
        ("SERVICE_ACCOUNT", string(&settings.service_account)),
        ("INSTANCE_IPS", string(&instance_ip.to_string())),
        ("CLUSTER_ID", string(&settings.cluster_id)),
        ("NETWORK", string(&settings.network)),
        ("ISTIO_VERSION", string(&settings.istio_version)),
        ("LABELS", map(settings.labels.iter())),
    ];
    if let Some(w) = &settings.workload_name {
        meta.push(("WORKLOAD_NAME", string(w)));
    }
    if let Some(g) = &settings.auto_register_group {
        meta.push(("AUTO_REGISTER_GROUP", string(g)));
    }
    if let Some(m) = &settings.mesh_id {
        meta.push(("MESH_ID", string(m)));
    }
    Node {
        id: node_id(instance_ip, &name, &settings.namespace),
        cluster: String::new(),
        metadata: Some(Struct {
            fields: meta.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        }),
        user_agent_name: "meshd".to_string(),
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

fn map<'a>(entries: impl Iterator<Item = (&'a String, &'a String)>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct {
            fields: entries.map(|(k, v)| (k.clone(), string(v))).collect(),
        })),
    }
}

/// A metadata value as text, for status pages and tests.
pub fn metadata_text(v: &Value) -> String {
    match &v.kind {
        Some(Kind::StringValue(s)) => s.clone(),
        Some(Kind::StructValue(s)) => {
            let mut parts: Vec<String> = s
                .fields
                .iter()
                .map(|(k, v)| format!("{k}={}", metadata_text(v)))
                .collect();
            parts.sort();
            parts.join(",")
        }
        Some(Kind::ListValue(ListValue { values })) => values
            .iter()
            .map(metadata_text)
            .collect::<Vec<_>>()
            .join(","),
        Some(Kind::BoolValue(b)) => b.to_string(),
        Some(Kind::NumberValue(n)) => n.to_string(),
        Some(Kind::NullValue(_)) | None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_ztunnels_shape() {
        assert_eq!(
            node_id("10.0.0.7".parse().unwrap(), "vm-1", "bar"),
            "ztunnel~10.0.0.7~vm-1.bar~bar.svc.cluster.local"
        );
        assert_eq!(
            node_id("fd00::7".parse().unwrap(), "vm-1", "bar"),
            "ztunnel~fd00::7~vm-1.bar~bar.svc.cluster.local"
        );
    }

    #[test]
    fn metadata_carries_every_key_istiod_reads() {
        let mut s = ControlPlaneSettings::new("/r.pem", "bar", "vm-sa");
        s.workload_name = Some("foo".into());
        s.network = "net1".into();
        s.cluster_id = "c1".into();
        s.mesh_id = Some("mesh1".into());
        s.auto_register_group = Some("foo".into());
        s.labels.insert("app".into(), "foo".into());
        s.labels.insert("version".into(), "v1".into());
        let n = node(&s, "192.0.2.5".parse().unwrap());
        assert_eq!(n.id, "ztunnel~192.0.2.5~foo.bar~bar.svc.cluster.local");
        let meta = n.metadata.unwrap().fields;
        let get = |k: &str| metadata_text(&meta[k]);
        assert_eq!(get("NAMESPACE"), "bar");
        assert_eq!(get("SERVICE_ACCOUNT"), "vm-sa");
        assert_eq!(get("INSTANCE_IPS"), "192.0.2.5");
        assert_eq!(get("CLUSTER_ID"), "c1");
        assert_eq!(get("NETWORK"), "net1");
        assert_eq!(get("LABELS"), "app=foo,version=v1");
        assert_eq!(get("WORKLOAD_NAME"), "foo");
        assert_eq!(get("AUTO_REGISTER_GROUP"), "foo");
        assert_eq!(get("MESH_ID"), "mesh1");
        assert_eq!(get("ISTIO_VERSION"), crate::settings::DEFAULT_ISTIO_VERSION);
        assert!(matches!(meta["LABELS"].kind, Some(Kind::StructValue(_))));
    }

    #[test]
    fn optional_keys_are_absent_when_unset() {
        let mut s = ControlPlaneSettings::new("/r.pem", "bar", "vm-sa");
        s.name = Some("explicit".into());
        let n = node(&s, "192.0.2.5".parse().unwrap());
        assert_eq!(n.id, "ztunnel~192.0.2.5~explicit.bar~bar.svc.cluster.local");
        let meta = n.metadata.unwrap().fields;
        for k in ["WORKLOAD_NAME", "AUTO_REGISTER_GROUP", "MESH_ID"] {
            assert!(!meta.contains_key(k), "{k}");
        }
    }

    #[test]
    fn local_address_towards_loopback_is_loopback() {
        let ip = local_address_towards("127.0.0.1:15012".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}
