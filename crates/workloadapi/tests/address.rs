//! Decoding istiod's Workload resources: every field mapped, every refusal, every rejection
//! naming its field. Resources are built with the generated types and encoded, as istiod sends them.
#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use meshd_workloadapi::model::{Address, Health, PortMapping, Refusal, Tunnel, WorkloadType};
use meshd_workloadapi::proto::workload as pb;
use meshd_workloadapi::{DecodeError, Problem, decode_address};
use prost::Message;

fn encode_workload(w: pb::Workload) -> Vec<u8> {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(w)),
    }
    .encode_to_vec()
}

fn base_workload() -> pb::Workload {
    pb::Workload {
        uid: "Kubernetes/networking.istio.io/WorkloadEntry/ns1/vm-1".into(),
        name: "vm-1".into(),
        namespace: "ns1".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        ..Default::default()
    }
}

fn workload(w: pb::Workload) -> Result<meshd_workloadapi::model::Workload, DecodeError> {
    match decode_address(&encode_workload(w))? {
        Address::Workload(w) => Ok((*w).clone()),
        Address::Service(_) => panic!("a workload decoded as a service"),
    }
}

fn field_error(field: &str, problem: Problem) -> DecodeError {
    // DecodeError is non_exhaustive but constructible through its variants in tests.
    DecodeError::Field {
        field: field.to_string(),
        problem,
    }
}

#[test]
fn every_workload_field_is_mapped() {
    let mut services = std::collections::HashMap::new();
    services.insert(
        "ns1/web.ns1.svc.cluster.local".to_string(),
        pb::PortList {
            ports: vec![
                pb::Port {
                    service_port: 80,
                    target_port: 8080,
                    app_protocol: pb::AppProtocol::Http11 as i32,
                },
                pb::Port {
                    service_port: 443,
                    target_port: 0,
                    app_protocol: 0,
                },
            ],
        },
    );
    let w = workload(pb::Workload {
        addresses: vec![
            vec![10, 0, 0, 1],
            "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            "::ffff:10.0.0.2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
        ],
        hostname: "vm-1.example".into(),
        network: "net-a".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        trust_domain: "example.org".into(),
        service_account: "vm-sa".into(),
        node: "node-1".into(),
        canonical_name: "vm".into(),
        canonical_revision: "v1".into(),
        workload_type: pb::WorkloadType::Pod as i32,
        workload_name: "vm-group".into(),
        native_tunnel: true,
        services,
        authorization_policies: vec!["ns1/allow-web".into()],
        status: pb::WorkloadStatus::Unhealthy as i32,
        cluster_id: "cluster-1".into(),
        locality: Some(pb::Locality {
            region: "r".into(),
            zone: "z".into(),
            subzone: "s".into(),
        }),
        network_mode: pb::NetworkMode::HostNetwork as i32,
        capacity: Some(5),
        ..base_workload()
    })
    .unwrap();
    assert_eq!(
        w.uid,
        "Kubernetes/networking.istio.io/WorkloadEntry/ns1/vm-1"
    );
    assert_eq!((w.name.as_str(), w.namespace.as_str()), ("vm-1", "ns1"));
    let want: Vec<IpAddr> = ["10.0.0.1", "fd00::1", "10.0.0.2"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(w.addresses.to_vec(), want, "v4-mapped v6 is made v4");
    assert_eq!(w.hostname, "vm-1.example");
    assert_eq!(w.placement.network, "net-a");
    assert_eq!(w.tunnel, Tunnel::Hbone);
    assert!(w.native_tunnel);
    assert_eq!(w.principal(), "example.org/ns/ns1/sa/vm-sa");
    assert_eq!(w.placement.node, "node-1");
    assert_eq!(
        (
            w.owner.canonical_name.as_str(),
            w.owner.canonical_revision.as_str()
        ),
        ("vm", "v1")
    );
    assert_eq!(w.owner.workload_type, WorkloadType::Pod);
    assert_eq!(w.owner.workload_name, "vm-group");
    assert_eq!(
        w.services["ns1/web.ns1.svc.cluster.local"],
        vec![
            PortMapping {
                service_port: 80,
                target_port: Some(8080),
                app_protocol: 1
            },
            PortMapping {
                service_port: 443,
                target_port: None,
                app_protocol: 0
            },
        ]
    );
    assert_eq!(*w.authorization_policies, ["ns1/allow-web"]);
    assert_eq!(w.health, Health::Unhealthy);
    assert_eq!(w.placement.cluster_id, "cluster-1");
    assert_eq!(
        w.placement.locality,
        ["r", "z", "s"].map(meshd_workloadapi::Sym::from)
    );
    assert!(w.host_network);
    assert_eq!(w.capacity, 5);
    assert_eq!(w.refused, None);
}

#[test]
fn workload_defaults_are_istios() {
    let w = workload(base_workload()).unwrap();
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.service_account, "default");
    assert_eq!(w.principal(), "cluster.local/ns/ns1/sa/default");
    assert_eq!(w.tunnel, Tunnel::None, "NONE is plain TCP");
    assert_eq!(w.capacity, 1);
    assert_eq!(w.health, Health::Healthy);
    assert_eq!(w.owner.workload_type, WorkloadType::Deployment);
    assert!(!w.host_network && !w.native_tunnel);
}

fn gateway() -> pb::GatewayAddress {
    pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: "ns1".into(),
                hostname: "waypoint.ns1.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

#[test]
fn workloads_meshd_cannot_reach_safely_are_kept_and_refused() {
    let ext = pb::Extension {
        name: "x".into(),
        config: None,
    };
    let cases = [
        (
            "waypoint",
            pb::Workload {
                waypoint: Some(gateway()),
                ..base_workload()
            },
            Refusal::Waypoint,
        ),
        (
            "network gateway",
            pb::Workload {
                network_gateway: Some(gateway()),
                ..base_workload()
            },
            Refusal::NetworkGateway,
        ),
        (
            "application tunnel PROXY",
            pb::Workload {
                application_tunnel: Some(pb::ApplicationTunnel {
                    protocol: pb::application_tunnel::Protocol::Proxy as i32,
                    port: 15088,
                }),
                ..base_workload()
            },
            Refusal::ApplicationTunnel,
        ),
        (
            "legacy Istio mTLS",
            pb::Workload {
                tunnel_protocol: pb::TunnelProtocol::LegacyIstioMtls as i32,
                ..base_workload()
            },
            Refusal::LegacyIstioMtls,
        ),
        (
            "hostname only",
            pb::Workload {
                addresses: vec![],
                hostname: "db.example".into(),
                ..base_workload()
            },
            Refusal::HostnameOnly,
        ),
        (
            "extensions",
            pb::Workload {
                extensions: vec![ext],
                ..base_workload()
            },
            Refusal::Extensions,
        ),
    ];
    for (name, w, reason) in cases {
        let w = workload(w).unwrap();
        assert_eq!(w.refused, Some(reason), "{name}");
        assert!(!w.uid.is_empty(), "{name}: kept whole");
    }
    // Not refusals: an application tunnel of protocol NONE, a hostname beside an address.
    let none_tunnel = workload(pb::Workload {
        application_tunnel: Some(pb::ApplicationTunnel {
            protocol: pb::application_tunnel::Protocol::None as i32,
            port: 0,
        }),
        hostname: "vm.example".into(),
        ..base_workload()
    })
    .unwrap();
    assert_eq!(none_tunnel.refused, None);
}

#[test]
fn malformed_workloads_are_errors_naming_the_field() {
    let cases: Vec<(pb::Workload, DecodeError)> = vec![
        (
            pb::Workload {
                addresses: vec![vec![10, 0, 0, 1], vec![1, 2, 3, 4, 5]],
                ..base_workload()
            },
            field_error("workload.addresses[1]", Problem::AddressLength(5)),
        ),
        (
            pb::Workload {
                tunnel_protocol: 7,
                ..base_workload()
            },
            field_error("workload.tunnel_protocol", Problem::UnknownEnum(7)),
        ),
        (
            pb::Workload {
                status: 9,
                ..base_workload()
            },
            field_error("workload.status", Problem::UnknownEnum(9)),
        ),
        (
            pb::Workload {
                workload_type: 4,
                ..base_workload()
            },
            field_error("workload.workload_type", Problem::UnknownEnum(4)),
        ),
        (
            pb::Workload {
                network_mode: 2,
                ..base_workload()
            },
            field_error("workload.network_mode", Problem::UnknownEnum(2)),
        ),
        (
            pb::Workload {
                application_tunnel: Some(pb::ApplicationTunnel {
                    protocol: 3,
                    port: 1,
                }),
                ..base_workload()
            },
            field_error(
                "workload.application_tunnel.protocol",
                Problem::UnknownEnum(3),
            ),
        ),
        (
            pb::Workload {
                uid: String::new(),
                ..base_workload()
            },
            field_error("workload.uid", Problem::Empty),
        ),
        (
            pb::Workload {
                namespace: String::new(),
                ..base_workload()
            },
            field_error("workload.namespace", Problem::Empty),
        ),
        (
            pb::Workload {
                service_account: "a/b".into(),
                ..base_workload()
            },
            field_error("workload.service_account", Problem::BadName("a/b".into())),
        ),
        (
            pb::Workload {
                trust_domain: "td x".into(),
                ..base_workload()
            },
            field_error("workload.trust_domain", Problem::BadName("td x".into())),
        ),
        (
            pb::Workload {
                authorization_policies: vec!["just-a-name".into()],
                ..base_workload()
            },
            field_error(
                "workload.authorization_policies[0]",
                Problem::BadPolicyKey("just-a-name".into()),
            ),
        ),
    ];
    for (w, want) in cases {
        assert_eq!(workload(w).unwrap_err(), want);
    }
}

fn with_ports(key: &str, service_port: u32, target_port: u32) -> pb::Workload {
    let mut services = std::collections::HashMap::new();
    services.insert(
        key.to_string(),
        pb::PortList {
            ports: vec![pb::Port {
                service_port,
                target_port,
                app_protocol: 0,
            }],
        },
    );
    pb::Workload {
        services,
        ..base_workload()
    }
}

#[test]
fn services_map_ports_and_keys_are_checked() {
    let at = r#"workload.services["ns1/web"]"#;
    assert_eq!(
        workload(with_ports("ns1/web", 0, 80)).unwrap_err(),
        field_error(
            &format!("{at}.ports[0].service_port"),
            Problem::PortOutOfRange(0)
        )
    );
    assert_eq!(
        workload(with_ports("ns1/web", 70000, 80)).unwrap_err(),
        field_error(
            &format!("{at}.ports[0].service_port"),
            Problem::PortOutOfRange(70000)
        )
    );
    assert_eq!(
        workload(with_ports("ns1/web", 80, 65536)).unwrap_err(),
        field_error(
            &format!("{at}.ports[0].target_port"),
            Problem::PortOutOfRange(65536)
        )
    );
    assert_eq!(
        workload(with_ports("web", 80, 80)).unwrap_err(),
        field_error(
            r#"workload.services["web"]"#,
            Problem::BadServiceKey("web".into())
        )
    );
    let w = workload(with_ports("ns1/web", 80, 0)).unwrap();
    assert_eq!(w.services["ns1/web"][0].target_port, None, "0 = not given");
}

#[test]
fn garbage_and_empty_addresses_are_errors() {
    assert!(matches!(
        decode_address(&[0xff, 0xff, 0xff]),
        Err(DecodeError::Protobuf { .. })
    ));
    assert_eq!(
        decode_address(&[]).unwrap_err(),
        field_error("type", Problem::EmptyOneof)
    );
}
