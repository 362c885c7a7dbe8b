//! Istio's recorded conversions (`istiod-golden/`, copied from Istio's
//! `pilot/pkg/serviceregistry/ambient/testdata`): the AuthorizationPolicy or PeerAuthentication
//! istiod read (`*-in.yaml`) through meshd's directory path, and the `istio.security.
//! Authorization` istiod produced from it (`*.yaml`) through meshd's xDS path, must decide
//! alike over a generated set of connections.
//!
//! Documented differences between the two paths (none shows in these pairs; each is covered
//! by its own test in `istiod.rs`, `fail_closed.rs` or `semantics.rs`):
//! - M6 `trustDomains`/`notTrustDomains`: enforced from files; istiod drops them (its proto has
//!   no such field), rendering a `trustDomains`-only source as an empty match (so a DENY denies
//!   every peer, an ALLOW rule never matches).
//! - M4/M5/M7 (PeerAuthentication quirks, `selector: {}`, CUSTOM): decided by istiod before
//!   meshd sees anything; CUSTOM policies are not sent at all.
//! - PeerAuthentication arrives as DENY policies: the xDS path reports `Denied(istiod:…)` where
//!   the directory path reports `PlaintextRefused` (same verdict, compared here).
//! - A rule with no match: ztunnel reads it as true; meshd drops the group in an ALLOW (the
//!   directory path cannot produce one).
//! - An empty match in a DENY: ztunnel skips it (fail open); meshd matches every connection
//!   (M1), the same as the directory path.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use meshd_manifests::{LoadOptions, load_str, parse_text};
use meshd_rbac::{Connection, Destination, Engine, Peer};
use meshd_workloadapi::decode_authorization;
use meshd_workloadapi::proto::security as sec;
use prost::Message;
use serde_json::Value;

const ROOT: &str = "istio-system";

/// The recorded pairs: (file stem, namespace meshd loads the input in, bound workload labels).
const PAIRS: [&str; 10] = [
    "allow-full",
    "allow-groups",
    "deny-groups",
    "peer-authn-disable-port-mtls-strict",
    "peer-authn-permissive-port-mtls-strict",
    "peer-authn-permissive-port-mtls-strict-and-permissive",
    "peer-authn-strict-and-disable-port-mtls",
    "peer-authn-strict-and-permissive-port-mtls",
    "peer-authn-strict-port-mtls-strict-and-permissive",
    "peer-authn-unset-port-mtls-strict",
];

fn read(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/istiod-golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Standard base64 (the protojson form of `bytes`).
fn base64(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
        bits = (bits << 6) | v;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    out
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// Every key a match may hold: a key the reader does not know fails the test, so a newer
/// recording with a new field is noticed.
const MATCH_KEYS: [&str; 12] = [
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "principals",
    "notPrincipals",
    "sourceIps",
    "notSourceIps",
    "destinationIps",
    "notDestinationIps",
    "destinationPorts",
    "notDestinationPorts",
];

fn strings(v: &Value, key: &str) -> Vec<sec::StringMatch> {
    use sec::string_match::MatchType;
    list(v, key)
        .iter()
        .map(|s| {
            let (kind, value) = s.as_object().unwrap().iter().next().unwrap();
            let text = || value.as_str().unwrap().to_string();
            let match_type = match kind.as_str() {
                "exact" => MatchType::Exact(text()),
                "prefix" => MatchType::Prefix(text()),
                "suffix" => MatchType::Suffix(text()),
                "presence" => MatchType::Presence(()),
                other => panic!("unknown StringMatch {other}"),
            };
            sec::StringMatch {
                match_type: Some(match_type),
            }
        })
        .collect()
}

fn addresses(v: &Value, key: &str) -> Vec<sec::Address> {
    list(v, key)
        .iter()
        .map(|a| sec::Address {
            address: base64(a["address"].as_str().unwrap()),
            length: a["length"].as_u64().unwrap() as u32,
        })
        .collect()
}

fn accounts(v: &Value, key: &str) -> Vec<sec::ServiceAccountMatch> {
    list(v, key)
        .iter()
        .map(|a| sec::ServiceAccountMatch {
            namespace: a["namespace"].as_str().unwrap().into(),
            service_account: a["serviceAccount"].as_str().unwrap().into(),
        })
        .collect()
}

fn ports(v: &Value, key: &str) -> Vec<u32> {
    list(v, key)
        .iter()
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

fn matcher(m: &Value) -> sec::Match {
    for key in m.as_object().unwrap().keys() {
        assert!(
            MATCH_KEYS.contains(&key.as_str()),
            "unknown match field {key}"
        );
    }
    sec::Match {
        namespaces: strings(m, "namespaces"),
        not_namespaces: strings(m, "notNamespaces"),
        service_accounts: accounts(m, "serviceAccounts"),
        not_service_accounts: accounts(m, "notServiceAccounts"),
        principals: strings(m, "principals"),
        not_principals: strings(m, "notPrincipals"),
        source_ips: addresses(m, "sourceIps"),
        not_source_ips: addresses(m, "notSourceIps"),
        destination_ips: addresses(m, "destinationIps"),
        not_destination_ips: addresses(m, "notDestinationIps"),
        destination_ports: ports(m, "destinationPorts"),
        not_destination_ports: ports(m, "notDestinationPorts"),
        extensions: Vec::new(),
    }
}

/// The recorded Authorization (protojson as YAML) as the protobuf istiod would send. Istio's
/// test converts policies without a namespace and records none; `namespace` is the one meshd's
/// loader gives the input, so both paths scope the policy alike.
fn recorded(stem: &str, namespace: &str) -> sec::Authorization {
    let v: Value = parse_text(Path::new(stem), &read(&format!("{stem}.yaml"))).unwrap();
    for key in v.as_object().unwrap().keys() {
        let known = ["name", "namespace", "scope", "action", "groups", "dryRun"];
        assert!(known.contains(&key.as_str()), "unknown field {key}");
    }
    let enum_value = |key: &str, values: &[&str]| {
        v.get(key)
            .and_then(Value::as_str)
            .map_or(0, |s| values.iter().position(|x| *x == s).unwrap() as i32)
    };
    sec::Authorization {
        name: v["name"].as_str().unwrap().into(),
        namespace: v
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace)
            .into(),
        scope: enum_value("scope", &["GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"]),
        action: enum_value("action", &["ALLOW", "DENY"]),
        dry_run: v.get("dryRun").and_then(Value::as_bool).unwrap_or(false),
        groups: list(&v, "groups")
            .iter()
            .map(|g| sec::Group {
                rules: list(g, "rules")
                    .iter()
                    .map(|r| sec::Rules {
                        matches: list(r, "matches").iter().map(matcher).collect(),
                    })
                    .collect(),
            })
            .collect(),
        extensions: Vec::new(),
    }
}

/// Peers: plaintext and identities whose namespace and service account hit (or just miss) the
/// values these recordings use.
fn peers() -> Vec<Option<Peer>> {
    let namespaces = [
        "ns",
        "ns-prefix-a",
        "a-ns-suffix",
        "not-ns",
        "not-ns-prefix-a",
        "a-not-ns-suffix",
        "from-mix-ns",
        "to-mix-ns",
        "only-l4-ns",
        "when-l4-ns",
        "when-l4-l7-ns",
        "cfg",
        "other",
    ];
    let accounts = [
        "sa",
        "sa-only",
        "sa-not",
        "sa-not-only",
        "x-suffix-principal",
        "default",
    ];
    let mut peers = vec![None];
    for ns in namespaces {
        for sa in accounts {
            peers.push(Some(Peer::new("cluster.local", ns, sa)));
        }
    }
    peers
}

fn connections(namespace: &str, labels: &[(&str, &str)], bound: &str) -> Vec<Connection> {
    let sources = [
        "1.2.3.4",
        "5.6.7.8",
        "2.2.3.4",
        "6.6.1.1",
        "10.10.10.10",
        "192.168.10.5",
        "90.10.10.10",
        "90.168.10.1",
        "20.20.20.20",
        "127.0.0.1",
    ];
    let destinations = [
        "10.10.10.10",
        "192.168.10.9",
        "90.10.10.10",
        "90.168.10.3",
        "10.0.0.1",
    ];
    let ports = [80, 90, 91, 92, 800, 900, 8080, 9001, 9002, 9090];
    let labels: std::collections::BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let bound: std::sync::Arc<[meshd_rbac::Sym]> =
        std::sync::Arc::from([meshd_rbac::Sym::from(bound)]);
    let mut out = Vec::new();
    for peer in peers() {
        for source in sources {
            for ip in destinations {
                for port in ports {
                    out.push(Connection {
                        peer: peer.clone(),
                        source_ip: source.parse().unwrap(),
                        destination: Destination {
                            namespace: namespace.to_string(),
                            labels: labels.clone(),
                            ip: ip.parse().unwrap(),
                            port,
                            bound_policies: bound.clone(),
                        },
                    });
                }
            }
        }
    }
    out
}

#[test]
fn istios_recorded_conversions_decide_alike_through_both_paths() {
    let options = LoadOptions {
        root_namespace: ROOT.into(),
    };
    for stem in PAIRS {
        let snapshot = load_str(
            &format!("{stem}-in.yaml"),
            &read(&format!("{stem}-in.yaml")),
            &options,
        )
        .unwrap_or_else(|e| panic!("{stem}: {e}"));
        let directory = Engine::compile(snapshot.policies(), snapshot.peer_auths(), ROOT);
        let namespace = snapshot
            .policies()
            .map(|p| p.metadata.namespace())
            .chain(snapshot.peer_auths().map(|p| p.metadata.namespace()))
            .next()
            .unwrap()
            .to_string();
        let body = recorded(stem, &namespace).encode_to_vec();
        let policy = decode_authorization(&body).unwrap_or_else(|e| panic!("{stem}: {e}"));
        let key = policy.key();
        let xds = Engine::compile_all([], [], [&policy], ROOT);
        // PeerAuthentication pairs select `app: a`; the xDS path binds by name instead.
        let mut differences = Vec::new();
        let conns = connections(&namespace, &[("app", "a")], &key);
        for conn in &conns {
            let (want, got) = (directory.decide(conn), xds.decide(conn));
            let same_policy = match (want.policy(), got.policy()) {
                (Some(a), Some(b)) => (&a.namespace, &a.name) == (&b.namespace, &b.name),
                (None, None) => true,
                // PeerAuthentication: PlaintextRefused names the PA, the DENY its conversion.
                _ => stem.starts_with("peer-authn"),
            };
            if want.allowed() != got.allowed() || !(same_policy || stem.starts_with("peer-authn")) {
                differences.push(format!("{conn:?}: directory {want}, xDS {got}"));
            }
        }
        assert!(
            differences.is_empty(),
            "{stem}: {} of {} connections differ, e.g.\n{}",
            differences.len(),
            conns.len(),
            differences
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let allowed = conns.iter().filter(|c| xds.decide(c).allowed()).count();
        if stem == "deny-groups" {
            // Its L7-only rules deny every connection on both paths (M1; ztunnel would skip
            // them and deny only the L4 matches).
            assert_eq!(allowed, 0, "{stem}");
        } else {
            assert!(
                allowed > 0 && allowed < conns.len(),
                "{stem}: the connections must exercise both verdicts ({allowed} of {} allowed)",
                conns.len()
            );
        }
    }
}
