//! Real mTLS handshakes on loopback: acceptance and every rejection rule, in both directions.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use meshd_identity::{CredentialSet, Error, IdentityHandle, TrustDomain, tls};
use time::OffsetDateTime;

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
const CLIENT: &str = "spiffe://cluster.local/ns/default/sa/client";

/// A server presenting `leaf` (whatever it is) to a meshd client that expects `SERVER`.
async fn client_sees(ca: &Ca, leaf: &Leaf) -> Option<Error> {
    let mut server = (*tls::server_config(&identity(ca, SERVER)).unwrap()).clone();
    server.cert_resolver = Arc::new(FixedCert(leaf.certified_key()));
    let client = tls::client_config(&identity(ca, CLIENT), &id(SERVER)).unwrap();
    let outcome = handshake(Arc::new(server), client).await;
    assert!(
        outcome.client.is_err(),
        "client accepted a bad server certificate"
    );
    outcome.client_error()
}

/// A client presenting `key` (whatever it is) to a meshd server.
async fn server_sees(ca: &Ca, key: Arc<rustls::sign::CertifiedKey>) -> Option<Error> {
    let server = tls::server_config(&identity(ca, SERVER)).unwrap();
    let mut client = (*tls::client_config(&identity(ca, CLIENT), &id(SERVER)).unwrap()).clone();
    client.client_auth_cert_resolver = Arc::new(FixedCert(key));
    let outcome = handshake(server, Arc::new(client)).await;
    assert!(
        outcome.server.is_err(),
        "server accepted a bad client certificate"
    );
    outcome.server_error()
}

/// Runs a bad leaf against both verifiers and checks both report `expected`.
async fn rejected_both_ways(ca: &Ca, leaf: &Leaf, expected: Error) {
    assert_eq!(
        client_sees(ca, leaf).await,
        Some(expected.clone()),
        "client side"
    );
    assert_eq!(
        server_sees(ca, leaf.certified_key()).await,
        Some(expected),
        "server side"
    );
}

fn whole_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap()
}

#[tokio::test]
async fn valid_svids_are_accepted_and_identities_extracted() {
    // The happy path: one URI SAN each, same trust domain; each side sees the other's ID.
    let ca = Ca::new("root");
    let server = tls::server_config(&identity(&ca, SERVER)).unwrap();
    let client = tls::client_config(&identity(&ca, CLIENT), &id(SERVER)).unwrap();
    let outcome = handshake(server, client).await;
    assert_eq!(outcome.server.unwrap(), id(CLIENT));
    assert_eq!(outcome.client.unwrap().0, id(SERVER));
}

#[tokio::test]
async fn config_policy_is_tls13_h2_no_sni_no_resumption() {
    let ca = Ca::new("root");
    let server = tls::server_config(&identity(&ca, SERVER)).unwrap();
    let client = tls::client_config(&identity(&ca, CLIENT), &id(SERVER)).unwrap();
    assert_eq!(server.alpn_protocols, vec![b"h2".to_vec()]);
    assert_eq!(client.alpn_protocols, vec![b"h2".to_vec()]);
    assert_eq!(server.send_tls13_tickets, 0);
    assert!(!client.enable_sni);
    let provider = tls::crypto_provider();
    let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(
        suites,
        vec![
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        ]
    );
    assert!(
        provider
            .kx_groups
            .iter()
            .any(|g| g.name() == rustls::NamedGroup::X25519MLKEM768),
        "post-quantum hybrid group offered, for ztunnel's PQC mode"
    );
}

#[tokio::test]
async fn expired() {
    // notAfter an hour ago.
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(CLIENT);
    spec.not_before = OffsetDateTime::now_utc() - Duration::from_secs(7200);
    spec.not_after = OffsetDateTime::now_utc() - Duration::from_secs(3600);
    let leaf = ca.issue(&spec);
    rejected_both_ways(
        &ca,
        &leaf,
        Error::Expired {
            not_after: whole_seconds(spec.not_after),
        },
    )
    .await;
}

#[tokio::test]
async fn not_yet_valid() {
    // notBefore an hour ahead.
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(CLIENT);
    spec.not_before = OffsetDateTime::now_utc() + Duration::from_secs(3600);
    spec.not_after = OffsetDateTime::now_utc() + Duration::from_secs(7200);
    let leaf = ca.issue(&spec);
    rejected_both_ways(
        &ca,
        &leaf,
        Error::NotYetValid {
            not_before: whole_seconds(spec.not_before),
        },
    )
    .await;
}

#[tokio::test]
async fn unknown_root() {
    // Right trust domain and shape, signed by a CA nobody trusts.
    let ca = Ca::new("root");
    let stranger = Ca::new("stranger");
    let leaf = stranger.issue(&LeafSpec::svid(SERVER));
    rejected_both_ways(
        &ca,
        &leaf,
        Error::UnknownIssuer {
            trust_domain: TD.into(),
        },
    )
    .await;
}

#[tokio::test]
async fn wrong_trust_domain() {
    // Signed by the trusted root, but for a trust domain without a bundle.
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid("spiffe://other.org/ns/default/sa/server"));
    rejected_both_ways(
        &ca,
        &leaf,
        Error::UntrustedTrustDomain {
            trust_domain: "other.org".into(),
        },
    )
    .await;
}

#[tokio::test]
async fn no_uri_san() {
    // A DNS-only certificate carries no SPIFFE ID.
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(SERVER);
    spec.sans = vec![dns("server.default.svc")];
    rejected_both_ways(&ca, &ca.issue(&spec), Error::NoUriSan).await;
}

#[tokio::test]
async fn two_uri_sans() {
    // ztunnel would take the first; meshd refuses (X509-SVID: exactly one).
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(SERVER);
    spec.sans = vec![
        uri(SERVER),
        uri("spiffe://cluster.local/ns/default/sa/admin"),
    ];
    rejected_both_ways(&ca, &ca.issue(&spec), Error::MultipleUriSans { count: 2 }).await;
}

#[tokio::test]
async fn non_spiffe_uri() {
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(SERVER);
    spec.sans = vec![uri("https://server.example.com/ns/default/sa/server")];
    rejected_both_ways(
        &ca,
        &ca.issue(&spec),
        Error::NotSpiffeUri {
            uri: "https://server.example.com/ns/default/sa/server".into(),
        },
    )
    .await;
}

#[tokio::test]
async fn trust_domain_id_as_leaf() {
    // `spiffe://cluster.local` names the trust domain itself; no workload may hold it.
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid("spiffe://cluster.local"));
    rejected_both_ways(
        &ca,
        &leaf,
        Error::NoWorkloadPath {
            id: "spiffe://cluster.local".into(),
        },
    )
    .await;
}

#[tokio::test]
async fn leaf_is_ca() {
    // A CA certificate may not be a workload identity.
    let ca = Ca::new("root");
    let mut spec = LeafSpec::svid(SERVER);
    spec.is_ca = true;
    rejected_both_ways(&ca, &ca.issue(&spec), Error::LeafIsCa).await;
}

#[tokio::test]
async fn identity_mismatch() {
    // A perfectly valid SVID, but not the workload this connection was meant for.
    let ca = Ca::new("root");
    let other = "spiffe://cluster.local/ns/default/sa/impostor";
    let leaf = ca.issue(&LeafSpec::svid(other));
    assert_eq!(
        client_sees(&ca, &leaf).await,
        Some(Error::IdentityMismatch {
            expected: SERVER.into(),
            found: other.into()
        })
    );
}

#[tokio::test]
async fn key_not_matching_certificate() {
    // A stolen certificate without its key: the CertificateVerify signature fails.
    let ca = Ca::new("root");
    let leaf = ca.issue(&LeafSpec::svid(SERVER));
    let someone_else = ca.issue(&LeafSpec::svid(CLIENT));
    let stolen = leaf.certified_key_with(&someone_else.key());

    let mut server = (*tls::server_config(&identity(&ca, SERVER)).unwrap()).clone();
    server.cert_resolver = Arc::new(FixedCert(stolen.clone()));
    let client = tls::client_config(&identity(&ca, CLIENT), &id(SERVER)).unwrap();
    let outcome = handshake(Arc::new(server), client).await;
    assert_eq!(
        outcome.client_error(),
        Some(Error::KeyMismatch),
        "client side"
    );

    assert_eq!(
        server_sees(&ca, stolen).await,
        Some(Error::KeyMismatch),
        "server side"
    );

    // And meshd refuses to load such a pair in the first place.
    assert_eq!(
        meshd_identity::Credentials::new(vec![leaf.der.clone()], someone_else.key()).unwrap_err(),
        Error::KeyMismatch
    );
}

#[tokio::test]
async fn federated_trust_domain_accepted_only_with_its_own_root() {
    // With a bundle for other.org, its workloads are accepted, but other.org's CA still cannot
    // vouch for cluster.local identities.
    let local_ca = Ca::new("local root");
    let other_ca = Ca::new("other root");
    let mut bundle = local_ca.bundle(TD);
    bundle
        .insert(
            TrustDomain::new("other.org").unwrap(),
            vec![other_ca.der.clone()],
        )
        .unwrap();
    let server_leaf = local_ca.issue(&LeafSpec::svid(SERVER));
    let set = CredentialSet::new(server_leaf.credentials(), bundle, None).unwrap();
    let server = tls::server_config(&IdentityHandle::fixed(set)).unwrap();

    let foreign = "spiffe://other.org/ns/default/sa/client";
    let foreign_leaf = other_ca.issue(&LeafSpec::svid(foreign));
    let mut client =
        (*tls::client_config(&identity(&local_ca, CLIENT), &id(SERVER)).unwrap()).clone();
    client.client_auth_cert_resolver = Arc::new(FixedCert(foreign_leaf.certified_key()));
    let outcome = handshake(server.clone(), Arc::new(client.clone())).await;
    assert_eq!(outcome.server.unwrap(), id(foreign));

    let forged = other_ca.issue(&LeafSpec::svid(CLIENT));
    client.client_auth_cert_resolver = Arc::new(FixedCert(forged.certified_key()));
    let outcome = handshake(server, Arc::new(client)).await;
    assert_eq!(
        outcome.server_error(),
        Some(Error::UnknownIssuer {
            trust_domain: TD.into()
        })
    );
}
