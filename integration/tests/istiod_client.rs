//! meshd-xds against real istiod code (the harness in integration/istiod: Istio's discovery
//! server with the ambient index, and Istio's CA): the VM's certificate by token then by mTLS,
//! the SAN check, Delta ADS of Address and Authorization with ACK/NACK, removals, and a
//! reconnect that sends `initial_resource_versions` and learns the deletions made while away.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_identity::{CredentialSet, IdentityHandle, IdentityManager};
use meshd_integration::istiod::Istiod;
use meshd_integration::loopback::Loopback;
use meshd_integration::vm_bundle::VmBundle;
use meshd_xds::ads::{ADDRESS_TYPE, AUTHORIZATION_TYPE, AdsClient, XdsStatus};
use meshd_xds::ca::{Auth, CaClient};
use meshd_xds::metrics::XdsMetrics;
use meshd_xds::{ControlPlaneSettings, Error, bundle};
use tokio::sync::watch;

const NS: &str = "vms";
const SA: &str = "db-vm";

/// A namespace, a VM's WorkloadEntry behind a ServiceEntry, and one policy.
const MESH: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: vms
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: db-1
  namespace: vms
  labels:
    app: db
spec:
  address: 10.9.0.1
  serviceAccount: db-vm
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: db
  namespace: vms
spec:
  hosts: [db.vms.example]
  addresses: [240.240.0.1]
  ports:
  - number: 5432
    name: tcp
    protocol: TCP
  resolution: STATIC
  workloadSelector:
    labels:
      app: db
---
apiVersion: security.istio.io/v1
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

fn policy(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: vms\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        namespaces: [web]\n"
    )
}

#[path = "istiod_client/store.rs"]
mod store;
use store::Shared;

fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const PUSH: Duration = Duration::from_secs(30);

/// istioctl's bundle for the VM, read by meshd-xds; certDir in the test's directory.
fn vm_settings(istiod: &Istiod, dir: &Path, sa: &str) -> ControlPlaneSettings {
    let vm_ip = istiod.address().ip();
    let b = VmBundle::for_istiod(istiod, NS, sa, "db", vm_ip);
    b.write(&dir.join("bundle"));
    let mut s = bundle::load(&dir.join("bundle")).unwrap();
    // The bundle names the VM's SA; the token the bundle holds is for `sa`.
    s.service_account = SA.into();
    s.cert_dir = dir.join("certs");
    s.instance_ip = Some(vm_ip);
    s
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn certificate_by_token_then_renewed_by_mtls_without_token_and_after_restart() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let token_file = settings.token_file.clone().unwrap();
    let rt = runtime();
    let ca = CaClient::new(settings.clone()).unwrap();

    let (first, how) = rt.block_on(ca.bootstrap()).unwrap();
    assert_eq!(how, "token");
    assert_eq!(
        first.id().to_string(),
        "spiffe://cluster.local/ns/vms/sa/db-vm"
    );
    let certs = dir.path().join("certs");
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        assert!(certs.join(f).is_file(), "{f} persisted");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // What was persisted is what meshd-identity's istioCa source loads.
    let set = meshd_identity::FilesSource::from(&match ca.identity_source() {
        meshd_identity::IdentitySource::IstioCa(c) => c,
        other => panic!("{other:?}"),
    })
    .load()
    .unwrap();
    assert_eq!(set.id(), first.id());

    // The token is gone from disk and revoked at istiod: renewal by mTLS still works.
    let token = std::fs::read_to_string(&token_file).unwrap();
    std::fs::remove_file(&token_file).unwrap();
    istiod.revoke(&token);
    let err = rt.block_on(ca.issue(Auth::Token)).unwrap_err();
    assert!(matches!(err, Error::Token { .. }), "{err}");
    let renewed = rt.block_on(ca.issue(Auth::Certificate(&first))).unwrap();
    assert_eq!(renewed.credentials.id(), first.id());
    assert_ne!(renewed.credentials.serial(), first.serial());
    ca.persist(&renewed).unwrap();

    // A restart after the token expired: the persisted certificate is used, no CA call.
    let again = CaClient::new(settings).unwrap();
    let (loaded, how) = rt.block_on(again.bootstrap()).unwrap();
    assert_eq!(how, "persisted");
    assert_eq!(loaded.serial(), renewed.credentials.serial());
    // And renews by mTLS from it.
    rt.block_on(again.issue(Auth::Certificate(&loaded)))
        .unwrap();
}

#[test]
fn a_certificate_for_another_identity_is_refused() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let dir = tempfile::tempdir().unwrap();
    // The token is for vms/other; meshd is configured as vms/db-vm. istiod issues the
    // caller's identity (the token's), so the leaf says sa/other: refused, nothing persisted.
    let settings = vm_settings(&istiod, dir.path(), "other");
    let ca = CaClient::new(settings).unwrap();
    let err = runtime().block_on(ca.bootstrap()).unwrap_err();
    match &err {
        Error::SanMismatch { want, got } => {
            assert_eq!(want, "spiffe://cluster.local/ns/vms/sa/db-vm");
            assert_eq!(got, "spiffe://cluster.local/ns/vms/sa/other");
        }
        other => panic!("{other}"),
    }
    assert!(!dir.path().join("certs/cert-chain.pem").exists());
}

/// Starts the ADS client on `rt` with `handler`; its status.
fn start_ads(
    rt: &tokio::runtime::Runtime,
    settings: &ControlPlaneSettings,
    identity: Option<IdentityHandle>,
    handler: Shared,
    metrics: Arc<XdsMetrics>,
) -> watch::Receiver<XdsStatus> {
    let ip = settings.instance_ip.unwrap();
    let client = AdsClient::new(settings.clone(), ip, identity, metrics).unwrap();
    let status = client.status();
    rt.spawn(client.run(handler));
    status
}

fn ready(status: &watch::Receiver<XdsStatus>) -> bool {
    status.borrow().ready
}

#[test]
fn ads_gets_addresses_and_policies_acks_removes_and_nacks_a_bad_one() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    istiod.apply(MESH);
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let rt = runtime();
    let store = Shared::default();
    store.0.lock().unwrap().refuse.insert("vms/bad".into());
    let metrics = Arc::new(XdsMetrics::default());
    let status = start_ads(&rt, &settings, None, store.clone(), metrics.clone());

    wait("ready", PUSH, || ready(&status));
    assert!(
        store.has(AUTHORIZATION_TYPE, "vms/deny-sleep"),
        "{:?}",
        store.names(AUTHORIZATION_TYPE)
    );
    let addresses = store.names(ADDRESS_TYPE);
    assert!(
        addresses
            .iter()
            .any(|n| n.ends_with("WorkloadEntry/vms/db-1")),
        "{addresses:?}"
    );
    assert!(
        addresses.iter().any(|n| n == "vms/db.vms.example"),
        "{addresses:?}"
    );
    let st = status.borrow().clone();
    assert_eq!(st.types[ADDRESS_TYPE].resources, addresses.len());
    assert!(metrics.messages(ADDRESS_TYPE) >= 1 && metrics.message_bytes(ADDRESS_TYPE) > 0);
    // istiod's view: the node as ztunnel's, both types ACKed.
    let clients = istiod.clients();
    assert_eq!(clients.len(), 1, "{clients:?}");
    let c = &clients[0];
    assert_eq!(c["type"], "ztunnel", "{c}");
    // istiod parsed ztunnel~<ip>~<name>.<ns>~<ns>.svc.cluster.local into its proxy ID.
    assert_eq!(c["node"], "db.vms", "{c}");
    assert_eq!(c["namespace"], NS, "{c}");
    for t in [ADDRESS_TYPE, AUTHORIZATION_TYPE] {
        let w = &c["watched"][t];
        assert_eq!(w["nonceAcked"], w["nonceSent"], "{t}: {c}");
    }

    // A deletion arrives as removed_resources.
    istiod.delete("AuthorizationPolicy", NS, "deny-sleep");
    wait("removal", PUSH, || {
        !store.has(AUTHORIZATION_TYPE, "vms/deny-sleep")
    });
    assert!(
        store
            .0
            .lock()
            .unwrap()
            .removals
            .contains(&"vms/deny-sleep".to_string())
    );

    // A resource the handler cannot take is NACKed by name; istiod records the NACK.
    istiod.apply(&policy("bad"));
    wait("NACK", PUSH, || {
        status.borrow().types[AUTHORIZATION_TYPE].nacks > 0
    });
    let nack = status.borrow().types[AUTHORIZATION_TYPE]
        .last_nack
        .clone()
        .unwrap();
    assert!(
        nack.error
            .as_deref()
            .unwrap()
            .contains("vms/bad: cannot convert"),
        "{nack:?}"
    );
    wait("istiod's record of the NACK", PUSH, || {
        istiod.clients()[0]["watched"][AUTHORIZATION_TYPE]["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("vms/bad"))
    });
    assert!(!store.has(AUTHORIZATION_TYPE, "vms/bad"));
    // istiod goes on pushing after a NACK: the next policy arrives and is ACKed.
    istiod.apply(&policy("good"));
    wait("next push", PUSH, || {
        store.has(AUTHORIZATION_TYPE, "vms/good")
    });
    wait("ACK of the next push", PUSH, || {
        status.borrow().types[AUTHORIZATION_TYPE]
            .last
            .as_ref()
            .is_some_and(|r| r.ack)
    });
    assert!(!store.has(AUTHORIZATION_TYPE, "vms/bad"));
}

#[test]
fn reconnect_sends_initial_versions_and_learns_deletions_made_while_away() {
    let lo = Loopback::take();
    let mut istiod = Istiod::start(lo.host(1));
    istiod.apply(MESH);
    istiod.apply(&policy("stays"));
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let rt = runtime();
    let store = Shared::default();
    let metrics = Arc::new(XdsMetrics::default());
    let status = start_ads(&rt, &settings, None, store.clone(), metrics.clone());
    wait("ready", PUSH, || ready(&status));
    assert!(store.has(AUTHORIZATION_TYPE, "vms/deny-sleep"));
    let first_initial = store.0.lock().unwrap().initial.clone();
    assert!(
        first_initial.iter().all(|(_, m)| m.is_empty()),
        "nothing held at first"
    );

    // istiod goes away; the policy is deleted while it is away; it comes back.
    istiod.kill();
    wait("the stream to end", PUSH, || {
        status.borrow().connections == 1 && status.borrow().last_error.is_some()
    });
    let state = MESH.replace(
        "kind: AuthorizationPolicy\nmetadata:\n  name: deny-sleep",
        "kind: ServiceAccount\nmetadata:\n  name: deny-sleep",
    );
    let state = state
        .split("---\napiVersion: security.istio.io/v1")
        .next()
        .unwrap()
        .to_string();
    istiod.restart_with(&format!("{state}---\n{}", policy("stays")));
    wait("reconnect", PUSH, || status.borrow().connections >= 2);
    wait("the deletion made while away", PUSH, || {
        !store.has(AUTHORIZATION_TYPE, "vms/deny-sleep")
    });
    assert!(store.has(AUTHORIZATION_TYPE, "vms/stays"), "kept");
    let s = store.0.lock().unwrap();
    let sent: Vec<_> = s
        .initial
        .iter()
        .filter(|(t, _)| t == AUTHORIZATION_TYPE)
        .collect();
    assert!(sent.len() >= 2, "{sent:?}");
    assert!(
        sent.last().unwrap().1.contains_key("vms/deny-sleep"),
        "initial_resource_versions: {sent:?}"
    );
    drop(s);
    assert!(
        metrics.terminations(meshd_xds::metrics::Termination::ConnectionError)
            + metrics.terminations(meshd_xds::metrics::Termination::Error)
            + metrics.terminations(meshd_xds::metrics::Termination::Reconnect)
            >= 1
    );
}

#[test]
fn ads_by_mtls_with_the_ca_certificate_and_no_token() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    istiod.apply(MESH);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vm_settings(&istiod, dir.path(), SA);
    let rt = runtime();
    let ca = CaClient::new(settings.clone()).unwrap();
    rt.block_on(ca.bootstrap()).unwrap();
    let set: CredentialSet = meshd_identity::FilesSource::from(&match ca.identity_source() {
        meshd_identity::IdentitySource::IstioCa(c) => c,
        other => panic!("{other:?}"),
    })
    .load()
    .unwrap();
    // No token at all: the client certificate is the only credential.
    let token = std::fs::read_to_string(settings.token_file.as_ref().unwrap()).unwrap();
    istiod.revoke(&token);
    settings.token_file = None;
    let store = Shared::default();
    let status = start_ads(
        &rt,
        &settings,
        Some(IdentityHandle::fixed(set)),
        store.clone(),
        Arc::default(),
    );
    wait("ready over mTLS", PUSH, || ready(&status));
    assert!(store.has(AUTHORIZATION_TYPE, "vms/deny-sleep"));
    let clients = istiod.clients();
    assert_eq!(
        clients[0]["identity"], "spiffe://cluster.local/ns/vms/sa/db-vm",
        "{clients:?}"
    );
}

#[test]
fn renewal_at_half_life_by_mtls_keeps_the_identity_without_a_token() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let dir = tempfile::tempdir().unwrap();
    let mut settings = vm_settings(&istiod, dir.path(), SA);
    // Short-lived so that half-life comes within the test.
    settings.ttl = Duration::from_secs(4);
    let rt = runtime();
    let ca = CaClient::new(settings.clone()).unwrap();
    let (first, _) = rt.block_on(ca.bootstrap()).unwrap();
    let half = meshd_xds::ca::until_half_life(&first);
    assert!(
        half > Duration::ZERO && half <= Duration::from_secs(2),
        "{half:?}"
    );
    let token_file = settings.token_file.clone().unwrap();
    istiod.revoke(&std::fs::read_to_string(&token_file).unwrap());
    std::fs::remove_file(&token_file).unwrap();

    let (tx, rx) = watch::channel(meshd_xds::ca::CaStatus::default());
    rt.spawn(ca.renew_forever(first.clone(), tx));
    wait("a renewal by mTLS", PUSH, || {
        rx.has_changed().is_ok() && rx.borrow().source == "mtls" && {
            let chain = std::fs::read(dir.path().join("certs/cert-chain.pem")).unwrap();
            let key = std::fs::read(dir.path().join("certs/key.pem")).unwrap();
            meshd_identity::Credentials::from_pem(&chain, &key)
                .is_ok_and(|c| c.serial() != first.serial() && c.id() == first.id())
        }
    });
    let st = rx.borrow().clone();
    assert_eq!(st.last_error, None);
    assert!(st.not_after.unwrap() > first.not_after());
    // Not renewed in a loop: the next renewal waits for the new certificate's half-life.
    let renewed_once = std::fs::read(dir.path().join("certs/cert-chain.pem")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        std::fs::read(dir.path().join("certs/cert-chain.pem")).unwrap(),
        renewed_once
    );
}

/// The join as the daemon wires it (crates/daemon/src/control_plane: certificate by token,
/// the `istioCa` identity over certDir, renewal, ADS authenticated by the identity); after the
/// token is gone and revoked, a restarted istiod is rejoined with the certificate alone.
#[test]
fn a_joined_client_rejoins_a_restarted_istiod_with_the_certificate_alone() {
    let lo = Loopback::take();
    let mut istiod = Istiod::start(lo.host(1));
    istiod.apply(MESH);
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let token_file = settings.token_file.clone().unwrap();
    let rt = runtime();
    let store = Shared::default();
    let (identity, how, xds) = rt.block_on(async {
        let ca = CaClient::new(settings.clone()).unwrap();
        let (creds, how) = ca.bootstrap().await.unwrap();
        let identity = IdentityManager::start(&ca.identity_source()).await.unwrap();
        let instance_ip = settings.instance_ip.unwrap();
        let client = AdsClient::new(
            settings,
            instance_ip,
            Some(identity.handle()),
            Arc::default(),
        )
        .unwrap();
        let xds = client.status();
        tokio::spawn(client.run(store.clone()));
        drop(creds);
        (identity, how, xds)
    });
    assert_eq!(
        identity.handle().current().id().to_string(),
        "spiffe://cluster.local/ns/vms/sa/db-vm"
    );
    assert_eq!(how.to_string(), "token");
    wait("ready", PUSH, || xds.borrow().ready);

    istiod.revoke(&std::fs::read_to_string(&token_file).unwrap());
    std::fs::remove_file(&token_file).unwrap();
    istiod.restart();
    istiod.apply(&policy("after-restart"));
    wait("rejoined by certificate", PUSH, || {
        store.has(AUTHORIZATION_TYPE, "vms/after-restart")
    });
    let st = xds.borrow().clone();
    assert!(st.connections >= 2, "{st:?}");
    let clients = istiod.clients();
    assert_eq!(
        clients[0]["identity"],
        "spiffe://cluster.local/ns/vms/sa/db-vm"
    );
}

/// istiod is verified: a name its certificate does not carry, or a root it does not chain
/// to, ends the connection before any credential is sent; the right name reached through
/// another address (istioctl's hosts file) is accepted.
#[test]
fn istiod_is_verified_by_root_and_name_not_by_address() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let rt = runtime();
    assert_eq!(
        settings.xds_target().unwrap().dial,
        istiod.address().to_string(),
        "the hosts file sends istiod's name to the harness"
    );

    let mut wrong_name = settings.clone();
    wrong_name.hostname = Some("istiod.example.com".into());
    let err = rt
        .block_on(CaClient::new(wrong_name).unwrap().bootstrap())
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");

    let other_root = dir.path().join("other-root.pem");
    let other = meshd_identity::DevCa::generate("cluster.local").unwrap();
    std::fs::write(&other_root, other.root_pem()).unwrap();
    let mut wrong_root = settings.clone();
    wrong_root.root_cert = other_root;
    let err = rt
        .block_on(CaClient::new(wrong_root).unwrap().bootstrap())
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // The same refusal ends each ADS attempt: never ready, the error in the status.
    let mut ads = settings.clone();
    ads.hostname = Some("istiod.example.com".into());
    let status = start_ads(&rt, &ads, None, Shared::default(), Arc::default());
    wait("a refused attempt", PUSH, || {
        status.borrow().last_error.is_some()
    });
    assert!(!status.borrow().ready);
    assert_eq!(status.borrow().connections, 0);
    assert!(istiod.clients().is_empty());
}

/// A push larger than gRPC's usual 4 MiB limit (a mesh's whole state arrives in one response)
/// is received: 2,500 service hosts of 250 ports each.
#[test]
fn a_push_over_four_mebibytes_is_received() {
    let lo = Loopback::take();
    let istiod = Istiod::start(lo.host(1));
    let hosts: Vec<String> = (0..2500).map(|i| format!("h{i}.big.example")).collect();
    let ports: String = (0..250)
        .map(|p| {
            format!(
                "  - {{number: {}, name: tcp-{p}, protocol: TCP}}\n",
                10_000 + p
            )
        })
        .collect();
    let yaml = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: vms\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: big\n  namespace: vms\nspec:\n  hosts: [{}]\n  ports:\n{ports}  resolution: STATIC\n  workloadSelector:\n    labels: {{app: big}}\n",
        hosts.join(", ")
    );
    istiod.apply(&yaml);
    let dir = tempfile::tempdir().unwrap();
    let settings = vm_settings(&istiod, dir.path(), SA);
    let rt = runtime();
    // A first client sees the services arrive as istiod's index builds them.
    let first = Shared::default();
    start_ads(&rt, &settings, None, first.clone(), Arc::default());
    wait(
        "istiod's index of 2,500 services",
        Duration::from_secs(60),
        || first.names(ADDRESS_TYPE).len() == 2500,
    );
    // A second one gets them all in its first response.
    let store = Shared::default();
    let metrics = Arc::new(XdsMetrics::default());
    let status = start_ads(&rt, &settings, None, store.clone(), metrics.clone());
    wait("ready", Duration::from_secs(60), || ready(&status));
    let bytes = metrics.message_bytes(ADDRESS_TYPE);
    assert!(bytes > 4 << 20, "the push was only {bytes} bytes");
    assert_eq!(
        metrics.messages(ADDRESS_TYPE),
        1,
        "one response carried it all"
    );
    assert_eq!(store.names(ADDRESS_TYPE).len(), 2500);
    assert_eq!(status.borrow().types[ADDRESS_TYPE].nacks, 0);
}
