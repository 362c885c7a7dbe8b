//! The istiod harness (integration/istiod, Istio's own discovery and CA servers) is what the
//! tests say it is: istiod's TLS port with istiod's names and root, a CA that authenticates
//! callers as istiod does (TokenReview for tokens, the root for client certificates) and
//! issues the caller's identity, and a control channel that answers.

#[path = "istiod/ca_client.rs"]
mod ca_client;

use std::time::Duration;

use ca_client::{
    ClientIdentity, Refused, UNAUTHENTICATED, connect, create_certificate, csr, dns_sans,
    tls_config, uri_sans,
};
use meshd_integration::istiod::{ISTIOD_HOST, ISTIOD_PORT, Istiod};
use meshd_integration::loopback::Loopback;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Asks the harness's CA for a certificate with `token`; the chain or the gRPC status.
fn request_cert(
    istiod: &Istiod,
    token: Option<&str>,
    client: Option<&ClientIdentity>,
) -> ca_client::CallResult {
    let (csr, _key) = csr("spiffe://cluster.local/ns/attacker/sa/claimed-in-csr");
    let config = tls_config(&istiod.root_cert_pem(), client);
    runtime().block_on(async {
        let tls = connect(istiod.address(), ISTIOD_HOST, config)
            .await
            .expect("TLS to the harness");
        create_certificate(tls, token, istiod.cluster_id(), &csr, 3600).await
    })
}

/// Asserts istiod answered UNAUTHENTICATED with its CA's message for a caller no
/// authenticator accepts ("request authenticate failure", security/pkg/server/ca/server.go).
fn assert_unauthenticated(outcome: ca_client::CallResult, what: &str) {
    match outcome {
        Err(Refused::Status(code, message))
            if code == UNAUTHENTICATED && message.contains("authenticate failure") => {}
        Err(other) => panic!("{what}: expected UNAUTHENTICATED, got {other}"),
        Ok(chain) => panic!("{what}: issued {:?}", uri_sans(&chain[0])),
    }
}

#[test]
fn tls_port_presents_istiods_names_chaining_to_the_written_root_with_h2() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    assert_eq!(istiod.address().port(), ISTIOD_PORT);
    let root = istiod.root_cert_pem();
    assert_eq!(
        root,
        std::fs::read_to_string(istiod.dir().join("root-cert.pem")).expect("root-cert.pem")
    );
    for name in [ISTIOD_HOST, "istiod.istio-system.svc.cluster.local"] {
        let tls = runtime()
            .block_on(connect(istiod.address(), name, tls_config(&root, None)))
            .unwrap_or_else(|e| panic!("TLS as {name} verified against root-cert.pem: {e}"));
        let (_, session) = tls.get_ref();
        assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]), "ALPN for {name}");
        let leaf = &session.peer_certificates().expect("server certificate")[0];
        let names = dns_sans(leaf);
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
}

#[test]
fn tls_port_is_refused_under_another_name_or_root() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let other = Istiod::start(lo.host(2));
    let root = istiod.root_cert_pem();
    assert_ne!(
        root,
        other.root_cert_pem(),
        "each state dir has its own root"
    );
    let wrong_name = runtime().block_on(connect(
        istiod.address(),
        "istiod.other.svc",
        tls_config(&root, None),
    ));
    assert!(wrong_name.is_err(), "a name istiod's certificate lacks");
    let wrong_root = runtime().block_on(connect(
        istiod.address(),
        ISTIOD_HOST,
        tls_config(&other.root_cert_pem(), None),
    ));
    assert!(wrong_root.is_err(), "a root that did not sign it");
}

#[test]
fn ca_issues_the_tokens_identity_not_the_csrs_chained_to_the_root() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let token = istiod.mint_token("vms", "db-vm");
    let chain = request_cert(&istiod, Some(&token), None).expect("a certificate for the token");
    assert_eq!(
        uri_sans(&chain[0]),
        vec!["spiffe://cluster.local/ns/vms/sa/db-vm".to_string()]
    );
    // The root is the chain's last element (ca.proto), and it is root-cert.pem.
    assert_eq!(
        ca_client::certs(chain.last().expect("root")),
        ca_client::certs(&istiod.root_cert_pem())
    );
}

#[test]
fn ca_renews_over_mtls_with_a_certificate_it_issued_and_no_token() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let token = istiod.mint_token("vms", "db-vm");
    let (csr_pem, key_pem) = csr("spiffe://cluster.local/ns/vms/sa/db-vm");
    let root = istiod.root_cert_pem();
    let chain = runtime()
        .block_on(async {
            let tls = connect(istiod.address(), ISTIOD_HOST, tls_config(&root, None)).await?;
            Ok::<_, std::io::Error>(
                create_certificate(tls, Some(&token), istiod.cluster_id(), &csr_pem, 3600).await,
            )
        })
        .expect("TLS")
        .expect("first certificate");
    // The token is gone (revoked); the certificate alone authenticates the renewal.
    istiod.revoke(&token);
    let id = ClientIdentity {
        chain_pem: chain[..chain.len() - 1].concat(),
        key_pem,
    };
    let renewed = request_cert(&istiod, None, Some(&id)).expect("renewed over mTLS");
    assert_eq!(
        uri_sans(&renewed[0]),
        vec!["spiffe://cluster.local/ns/vms/sa/db-vm".to_string()]
    );
}

#[test]
fn ca_refuses_a_client_certificate_of_another_root() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    // A SPIFFE certificate of the right shape from meshd's dev CA, a root istiod never saw.
    let ws = meshd_integration::Workspace::new();
    let (cert, key) = meshd_integration::certs::leaf(
        &ws.ca(),
        "vms",
        "db-vm",
        time::Duration::minutes(-1),
        time::Duration::hours(1),
    );
    let id = ClientIdentity {
        chain_pem: cert,
        key_pem: key,
    };
    let config = tls_config(&istiod.root_cert_pem(), Some(&id));
    // istiod's TLS (VerifyClientCertIfGiven) refuses the handshake with an alert. Under TLS
    // 1.3 the client's handshake is done before the server has judged its certificate, so
    // the alert is what the first read returns (a write could race the close instead).
    let first_read = runtime().block_on(async {
        use tokio::io::AsyncReadExt;
        let mut tls = connect(istiod.address(), ISTIOD_HOST, config).await?;
        let mut buf = [0u8; 64];
        tls.read(&mut buf).await
    });
    match first_read {
        Err(e) if e.to_string().contains("UnknownCA") => {}
        other => {
            panic!("a certificate of another root: expected an UnknownCA alert, got {other:?}")
        }
    }
}

#[test]
fn ca_refuses_a_revoked_token() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let token = istiod.mint_token("vms", "db-vm");
    istiod.revoke(&token);
    assert_unauthenticated(request_cert(&istiod, Some(&token), None), "revoked");
}

#[test]
fn ca_refuses_an_expired_token() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let token = istiod.mint_token_with("vms", "db-vm", &["istio-ca"], Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(2100));
    assert_unauthenticated(request_cert(&istiod, Some(&token), None), "expired");
}

#[test]
fn ca_refuses_a_token_for_another_audience() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let token = istiod.mint_token_with("vms", "db-vm", &["vault"], Duration::from_secs(3600));
    assert_unauthenticated(request_cert(&istiod, Some(&token), None), "audience vault");
}

#[test]
fn ca_refuses_a_token_it_did_not_mint_and_no_credentials() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let other = Istiod::start(lo.host(2));
    // Same shape, signed by the other harness's key: not this cluster's token.
    let foreign = other.mint_token("vms", "db-vm");
    assert_unauthenticated(request_cert(&istiod, Some(&foreign), None), "foreign token");
    assert_unauthenticated(request_cert(&istiod, None, None), "no credentials");
}

const NAMESPACE_AND_POLICY: &str = "\
apiVersion: v1
kind: Namespace
metadata:
  name: vms
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: deny-sleep
  namespace: vms
spec:
  action: DENY
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/default/sa/sleep]
";

#[test]
fn control_channel_applies_and_deletes_objects() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let applied = istiod.apply(NAMESPACE_AND_POLICY);
    assert_eq!(
        applied,
        vec!["Namespace//vms", "AuthorizationPolicy/vms/deny-sleep"]
    );
    // Applying again updates in place.
    assert_eq!(istiod.apply(NAMESPACE_AND_POLICY).len(), 2);
    istiod.delete("AuthorizationPolicy", "vms", "deny-sleep");
    let again = istiod
        .try_delete("AuthorizationPolicy", "vms", "deny-sleep")
        .expect_err("already deleted");
    assert!(again.contains("not found"), "{again}");
}

#[test]
fn control_channel_refuses_unknown_kinds_and_bad_documents_whole() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let unknown = format!(
        "{NAMESPACE_AND_POLICY}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n"
    );
    let err = istiod.try_apply(&unknown).expect_err("ConfigMap");
    assert!(
        err.contains("document 3") && err.contains("ConfigMap"),
        "{err}"
    );
    let bad = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: x\nspec:\n  action: [not, an, enum]\n";
    let err = istiod.try_apply(bad).expect_err("a list for an enum");
    assert!(err.contains("document 1"), "{err}");
    // Neither text was applied in part: the Namespace of the first is not there.
    let err = istiod
        .try_delete("Namespace", "", "vms")
        .expect_err("never applied");
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn restart_keeps_the_root_the_objects_and_the_tokens() {
    let lo = Loopback::take();
    let mut istiod = Istiod::start(lo.host(1));
    let root = istiod.root_cert_pem();
    istiod.apply(NAMESPACE_AND_POLICY);
    let token = istiod.mint_token("vms", "db-vm");
    istiod.restart();
    assert_eq!(istiod.root_cert_pem(), root);
    request_cert(&istiod, Some(&token), None).expect("a token minted before the restart");
    istiod.delete("AuthorizationPolicy", "vms", "deny-sleep");
    // Restarted with a given state: what it lacks is gone.
    istiod.restart_with("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: vms\n");
    assert_eq!(istiod.root_cert_pem(), root);
    istiod.delete("Namespace", "", "vms");
    istiod
        .try_delete("AuthorizationPolicy", "vms", "deny-sleep")
        .expect_err("not in the given state");
}

#[test]
fn harness_in_a_namespace_serves_a_machine_on_its_link() {
    use ipnet::IpNet;
    use meshd_redirect::netns::{Netns, VethEnd, veth_pair};
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    let istiod_ns = Netns::new("istiod-h");
    let vm_ns = Netns::new("istiod-vm");
    let istiod_ip = IpAddr::V4(Ipv4Addr::new(10, 215, 0, 9));
    let vm_ip = IpAddr::V4(Ipv4Addr::new(10, 215, 0, 1));
    veth_pair(
        VethEnd {
            ns: &istiod_ns,
            name: "eth0",
            addrs: &[IpNet::new_assert(istiod_ip, 16)],
        },
        VethEnd {
            ns: &vm_ns,
            name: "eth0",
            addrs: &[IpNet::new_assert(vm_ip, 16)],
        },
    )
    .expect("veth between the namespaces");
    let mut istiod = Istiod::start_in(&istiod_ns, istiod_ip, Default::default());
    let addr = SocketAddr::new(istiod_ip, ISTIOD_PORT);
    assert_eq!(istiod.address(), addr);
    let handshake = |istiod: &Istiod| {
        let config = tls_config(&istiod.root_cert_pem(), None);
        vm_ns.run_async(move || async move {
            let tls = connect(addr, ISTIOD_HOST, config).await?;
            Ok::<_, std::io::Error>(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec))
        })
    };
    assert_eq!(
        handshake(&istiod).expect("TLS from the VM's namespace"),
        Some(b"h2".to_vec())
    );
    istiod.restart();
    handshake(&istiod).expect("TLS after a restart inside the namespace");
}
