//! Decoding istiod's Authorization resources: every field and every `not_` field mapped, every
//! rejection naming its field. Resources are built with the generated types and encoded.
#![allow(clippy::unwrap_used)]

use meshd_workloadapi::model::{Action, Scope, ServiceAccount, StringPattern};
use meshd_workloadapi::proto::{security as sec, workload as pb};
use meshd_workloadapi::{DecodeError, Problem, decode_authorization};
use prost::Message;

fn field_error(field: &str, problem: Problem) -> DecodeError {
    DecodeError::Field {
        field: field.to_string(),
        problem,
    }
}

fn exact(s: &str) -> sec::StringMatch {
    sec::StringMatch {
        match_type: Some(sec::string_match::MatchType::Exact(s.into())),
    }
}

fn addr(a: [u8; 4], length: u32) -> sec::Address {
    sec::Address {
        address: a.to_vec(),
        length,
    }
}

fn base_policy() -> sec::Authorization {
    sec::Authorization {
        name: "p".into(),
        namespace: "ns1".into(),
        ..Default::default()
    }
}

fn policy_with(m: sec::Match) -> sec::Authorization {
    sec::Authorization {
        groups: vec![sec::Group {
            rules: vec![sec::Rules { matches: vec![m] }],
        }],
        ..base_policy()
    }
}

#[test]
fn every_authorization_field_is_mapped() {
    let sa = |ns: &str, n: &str| sec::ServiceAccountMatch {
        namespace: ns.into(),
        service_account: n.into(),
    };
    let m = sec::Match {
        namespaces: vec![exact("a")],
        not_namespaces: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Prefix("b".into())),
        }],
        service_accounts: vec![sa("a", "x")],
        not_service_accounts: vec![sa("a", "y")],
        principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Suffix("/sa/x".into())),
        }],
        not_principals: vec![sec::StringMatch {
            match_type: Some(sec::string_match::MatchType::Presence(())),
        }],
        source_ips: vec![addr([10, 0, 0, 0], 8)],
        not_source_ips: vec![addr([10, 1, 0, 0], 16)],
        destination_ips: vec![addr([192, 168, 0, 1], 32)],
        not_destination_ips: vec![addr([0, 0, 0, 0], 0)],
        destination_ports: vec![80, 443],
        not_destination_ports: vec![8080],
        extensions: vec![],
    };
    let p = decode_authorization(
        &sec::Authorization {
            scope: sec::Scope::WorkloadSelector as i32,
            action: sec::Action::Deny as i32,
            dry_run: true,
            ..policy_with(m)
        }
        .encode_to_vec(),
    )
    .unwrap();
    assert_eq!(p.key(), "ns1/p");
    assert_eq!(p.scope, Scope::WorkloadSelector);
    assert_eq!(p.action, Action::Deny);
    assert!(p.dry_run && !p.extensions);
    let m = &p.groups[0].rules[0].matches[0];
    assert_eq!(m.namespaces, vec![StringPattern::Exact("a".into())]);
    assert_eq!(m.not_namespaces, vec![StringPattern::Prefix("b".into())]);
    let account = |n: &str| ServiceAccount {
        namespace: "a".into(),
        name: n.into(),
    };
    assert_eq!(m.service_accounts, vec![account("x")]);
    assert_eq!(m.not_service_accounts, vec![account("y")]);
    assert_eq!(m.principals, vec![StringPattern::Suffix("/sa/x".into())]);
    assert_eq!(m.not_principals, vec![StringPattern::Presence]);
    assert_eq!(m.source_ips, vec!["10.0.0.0/8".parse().unwrap()]);
    assert_eq!(m.not_source_ips, vec!["10.1.0.0/16".parse().unwrap()]);
    assert_eq!(m.destination_ips, vec!["192.168.0.1/32".parse().unwrap()]);
    assert_eq!(
        m.not_destination_ips,
        vec!["0.0.0.0/0".parse().unwrap()],
        "length 0 is a real /0"
    );
    assert_eq!(m.destination_ports, vec![80, 443]);
    assert_eq!(m.not_destination_ports, vec![8080]);
    assert!(!m.is_empty());
}

#[test]
fn authorization_defaults_and_scopes() {
    let p = decode_authorization(&base_policy().encode_to_vec()).unwrap();
    assert_eq!(
        (p.scope, p.action, p.dry_run),
        (Scope::Global, Action::Allow, false)
    );
    assert!(p.groups.is_empty());
    let ns = decode_authorization(
        &sec::Authorization {
            scope: sec::Scope::Namespace as i32,
            extensions: vec![pb::Extension::default()],
            ..base_policy()
        }
        .encode_to_vec(),
    )
    .unwrap();
    assert_eq!(ns.scope, Scope::Namespace);
    assert!(ns.extensions);
}

#[test]
fn empty_matches_are_kept_for_the_engine_to_read() {
    let p = decode_authorization(&policy_with(sec::Match::default()).encode_to_vec()).unwrap();
    assert!(p.groups[0].rules[0].matches[0].is_empty());
    let ext_only = decode_authorization(
        &policy_with(sec::Match {
            extensions: vec![pb::Extension::default()],
            ..Default::default()
        })
        .encode_to_vec(),
    )
    .unwrap();
    let m = &ext_only.groups[0].rules[0].matches[0];
    assert!(m.extensions && m.is_empty(), "no L4 field: empty");
}

#[test]
fn malformed_authorizations_are_errors_naming_the_field() {
    let at = "groups[0].rules[0].matches[0]";
    let cases: Vec<(sec::Authorization, DecodeError)> = vec![
        (
            sec::Authorization {
                name: String::new(),
                ..base_policy()
            },
            field_error("name", Problem::Empty),
        ),
        (
            sec::Authorization {
                namespace: "a/b".into(),
                ..base_policy()
            },
            field_error("namespace", Problem::BadName("a/b".into())),
        ),
        (
            sec::Authorization {
                scope: 3,
                ..base_policy()
            },
            field_error("scope", Problem::UnknownEnum(3)),
        ),
        (
            sec::Authorization {
                action: 2,
                ..base_policy()
            },
            field_error("action", Problem::UnknownEnum(2)),
        ),
        (
            policy_with(sec::Match {
                destination_ports: vec![80, 0],
                ..Default::default()
            }),
            field_error(
                &format!("{at}.destination_ports[1]"),
                Problem::PortOutOfRange(0),
            ),
        ),
        (
            policy_with(sec::Match {
                not_destination_ports: vec![65536],
                ..Default::default()
            }),
            field_error(
                &format!("{at}.not_destination_ports[0]"),
                Problem::PortOutOfRange(65536),
            ),
        ),
        (
            policy_with(sec::Match {
                source_ips: vec![sec::Address {
                    address: vec![1, 2],
                    length: 8,
                }],
                ..Default::default()
            }),
            field_error(&format!("{at}.source_ips[0]"), Problem::AddressLength(2)),
        ),
        (
            policy_with(sec::Match {
                not_destination_ips: vec![addr([10, 0, 0, 0], 40)],
                ..Default::default()
            }),
            field_error(
                &format!("{at}.not_destination_ips[0].length"),
                Problem::PrefixLength {
                    length: 40,
                    max: 32,
                },
            ),
        ),
        (
            policy_with(sec::Match {
                principals: vec![sec::StringMatch { match_type: None }],
                ..Default::default()
            }),
            field_error(&format!("{at}.principals[0]"), Problem::EmptyOneof),
        ),
        (
            policy_with(sec::Match {
                not_service_accounts: vec![sec::ServiceAccountMatch {
                    namespace: "a".into(),
                    service_account: String::new(),
                }],
                ..Default::default()
            }),
            field_error(
                &format!("{at}.not_service_accounts[0].serviceAccount"),
                Problem::Empty,
            ),
        ),
    ];
    for (p, want) in cases {
        assert_eq!(decode_authorization(&p.encode_to_vec()).unwrap_err(), want);
    }
    assert!(matches!(
        decode_authorization(&[0x0a, 0xff]),
        Err(DecodeError::Protobuf { .. })
    ));
}
