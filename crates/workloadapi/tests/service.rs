//! Decoding istiod's Service resources: every field mapped, waypoints refused, every rejection
//! naming its field. Resources are built with the generated types and encoded.
#![allow(clippy::unwrap_used)]

use meshd_workloadapi::model::{Address, PortMapping, Refusal};
use meshd_workloadapi::proto::workload as pb;
use meshd_workloadapi::{DecodeError, Problem, decode_address};
use prost::Message;

fn field_error(field: &str, problem: Problem) -> DecodeError {
    DecodeError::Field {
        field: field.to_string(),
        problem,
    }
}

fn service(s: pb::Service) -> Result<meshd_workloadapi::model::Service, DecodeError> {
    let body = pb::Address {
        r#type: Some(pb::address::Type::Service(s)),
    }
    .encode_to_vec();
    match decode_address(&body)? {
        Address::Service(s) => Ok((*s).clone()),
        Address::Workload(_) => panic!("a service decoded as a workload"),
    }
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

fn base_service() -> pb::Service {
    pb::Service {
        name: "web".into(),
        namespace: "ns1".into(),
        hostname: "web.ns1.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: "net-a".into(),
            address: vec![10, 96, 0, 1],
            length: None,
        }],
        ports: vec![pb::Port {
            service_port: 80,
            target_port: 8080,
            app_protocol: 0,
        }],
        ..Default::default()
    }
}

#[test]
fn every_service_field_is_mapped() {
    let s = service(pb::Service {
        addresses: vec![
            pb::NetworkAddress {
                network: "net-a".into(),
                address: vec![10, 96, 0, 1],
                length: None,
            },
            pb::NetworkAddress {
                network: String::new(),
                address: vec![240, 0, 0, 0],
                length: Some(8),
            },
        ],
        subject_alt_names: vec!["spiffe://cluster.local/ns/ns1/sa/web".into()],
        load_balancing: Some(pb::LoadBalancing {
            routing_preference: vec![pb::load_balancing::Scope::Zone as i32],
            mode: pb::load_balancing::Mode::Failover as i32,
            health_policy: pb::load_balancing::HealthPolicy::AllowAll as i32,
        }),
        ip_families: pb::IpFamilies::Dual as i32,
        canonical: true,
        visibility: pb::service::Visibility::Namespace as i32,
        ..base_service()
    })
    .unwrap();
    assert_eq!(s.key(), "ns1/web.ns1.svc.cluster.local");
    assert_eq!(s.name, "web");
    assert_eq!(s.addresses[0].network, "net-a");
    assert_eq!(s.addresses[0].address, "10.96.0.1/32".parse().unwrap());
    assert_eq!(s.addresses[1].address, "240.0.0.0/8".parse().unwrap());
    assert_eq!(
        s.ports,
        vec![PortMapping {
            service_port: 80,
            target_port: Some(8080),
            app_protocol: 0
        }]
    );
    assert_eq!(s.subject_alt_names.len(), 1);
    let lb = s.load_balancing.unwrap();
    assert!(lb.allow_unhealthy);
    assert_eq!(lb.mode, 2);
    assert_eq!(lb.routing_preference, vec![2]);
    assert_eq!(s.ip_families, 3);
    assert!(s.canonical && s.namespace_visible_only);
    assert_eq!(s.refused, None);
}

#[test]
fn services_behind_waypoints_are_refused() {
    let waypoint = service(pb::Service {
        waypoint: Some(gateway()),
        ..base_service()
    })
    .unwrap();
    assert_eq!(waypoint.refused, Some(Refusal::Waypoint));
    let weighted = service(pb::Service {
        weighted_waypoints: vec![pb::WeightedWaypoint {
            destination: Some(gateway()),
            weight: 1,
        }],
        ..base_service()
    })
    .unwrap();
    assert_eq!(weighted.refused, Some(Refusal::Waypoint));
    let ext = service(pb::Service {
        extensions: vec![pb::Extension::default()],
        ..base_service()
    })
    .unwrap();
    assert_eq!(ext.refused, Some(Refusal::Extensions));
}

#[test]
fn malformed_services_are_errors_naming_the_field() {
    let cases: Vec<(pb::Service, DecodeError)> = vec![
        (
            pb::Service {
                hostname: String::new(),
                ..base_service()
            },
            field_error("service.hostname", Problem::Empty),
        ),
        (
            pb::Service {
                namespace: String::new(),
                ..base_service()
            },
            field_error("service.namespace", Problem::Empty),
        ),
        (
            pb::Service {
                addresses: vec![pb::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 0],
                    length: None,
                }],
                ..base_service()
            },
            field_error("service.addresses[0]", Problem::AddressLength(3)),
        ),
        (
            pb::Service {
                addresses: vec![pb::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 0, 0],
                    length: Some(33),
                }],
                ..base_service()
            },
            field_error(
                "service.addresses[0].length",
                Problem::PrefixLength {
                    length: 33,
                    max: 32,
                },
            ),
        ),
        (
            pb::Service {
                ports: vec![pb::Port {
                    service_port: 0,
                    target_port: 1,
                    app_protocol: 0,
                }],
                ..base_service()
            },
            field_error("service.ports[0].service_port", Problem::PortOutOfRange(0)),
        ),
        (
            pb::Service {
                ports: vec![pb::Port {
                    service_port: 80,
                    target_port: 80,
                    app_protocol: 9,
                }],
                ..base_service()
            },
            field_error("service.ports[0].app_protocol", Problem::UnknownEnum(9)),
        ),
        (
            pb::Service {
                load_balancing: Some(pb::LoadBalancing {
                    mode: 8,
                    ..Default::default()
                }),
                ..base_service()
            },
            field_error("service.load_balancing.mode", Problem::UnknownEnum(8)),
        ),
        (
            pb::Service {
                load_balancing: Some(pb::LoadBalancing {
                    routing_preference: vec![1, 99],
                    ..Default::default()
                }),
                ..base_service()
            },
            field_error(
                "service.load_balancing.routing_preference[1]",
                Problem::UnknownEnum(99),
            ),
        ),
        (
            pb::Service {
                load_balancing: Some(pb::LoadBalancing {
                    health_policy: 5,
                    ..Default::default()
                }),
                ..base_service()
            },
            field_error(
                "service.load_balancing.health_policy",
                Problem::UnknownEnum(5),
            ),
        ),
        (
            pb::Service {
                ip_families: 4,
                ..base_service()
            },
            field_error("service.ip_families", Problem::UnknownEnum(4)),
        ),
        (
            pb::Service {
                visibility: 2,
                ..base_service()
            },
            field_error("service.visibility", Problem::UnknownEnum(2)),
        ),
    ];
    for (s, want) in cases {
        assert_eq!(service(s).unwrap_err(), want);
    }
}
