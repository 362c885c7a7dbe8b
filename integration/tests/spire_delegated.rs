//! `identity.spireDelegated` against a real SPIRE agent's Delegated Identity API (its admin
//! socket, meshd's test process registered as an authorized delegate): one SVID per selector
//! set, rotated; the agent's refusal of a caller that is not a delegate, reported as such; and
//! a federated trust domain added in SPIRE reaching meshd's set, after which a peer of that
//! domain is accepted (by both SPIRE sources).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use meshd_identity::{
    Error, FilesSource, IdentityHandle, IdentitySource, Selector, SpiffeId, SpireDelegatedSource,
    SpireSource, TrustDomain, pem, tls,
};
use meshd_integration::Workspace;
use meshd_integration::loopback::Loopback;
use meshd_integration::spire::{ENTRY_PROPAGATION, EntryOptions, Spire, SpireOptions};
use meshd_integration::spire_watch::{my_uid, runtime, start_when_synced, wait_new_serial, within};
use tokio::net::{TcpListener, TcpStream};

/// meshd's own SPIFFE ID: the entry for this process's uid, listed in `authorized_delegates`.
const MESHD: &str = "spiffe://spire.test/ns/mesh/sa/meshd";
const WEB: &str = "spiffe://spire.test/ns/shop/sa/web";
const DB: &str = "spiffe://spire.test/ns/shop/sa/db";
/// The local workloads' uids: no process needs to run as them, the selectors name them.
const WEB_UID: &str = "unix:uid:1001";
const DB_UID: &str = "unix:uid:1002";

/// A server and an agent whose admin socket serves `delegates`.
fn spire_with_delegates(lo: &Loopback, delegates: &[&str]) -> Spire {
    Spire::start_with(
        lo.host(1),
        SpireOptions {
            authorized_delegates: Some(delegates.iter().map(|d| d.to_string()).collect()),
            ..SpireOptions::default()
        },
    )
}

fn delegated(spire: &Spire, selectors: &[&str]) -> IdentitySource {
    IdentitySource::SpireDelegated(SpireDelegatedSource {
        admin_socket: format!("unix://{}", spire.admin_socket().display()),
        selectors: selectors
            .iter()
            .map(|s| s.parse::<Selector>().expect("a selector"))
            .collect(),
        spiffe_id: None,
    })
}

/// An entry for this process (what meshd would be), with `id`.
fn register_caller(spire: &Spire, id: &str, options: &EntryOptions) -> String {
    let entry = spire.create_entry_with(id, &[&format!("unix:uid:{}", my_uid())], options);
    // What the caller fetches first: the entry has reached the agent.
    spire.fetch_x509(&Workspace::new().path().join("probe"));
    entry
}

#[test]
fn two_selector_sets_get_their_own_svids_and_both_rotate() {
    let lo = Loopback::take();
    let spire = spire_with_delegates(&lo, &[MESHD]);
    // Short enough that the agent renews during the test (at half life).
    let ttl = Duration::from_secs(10);
    let short = EntryOptions {
        x509_svid_ttl: Some(ttl),
        ..EntryOptions::default()
    };
    spire.create_entry_with(WEB, &[WEB_UID], &short);
    spire.create_entry_with(DB, &[DB_UID], &short);
    register_caller(&spire, MESHD, &EntryOptions::default());

    let rt = runtime();
    let web = start_when_synced(&rt, &delegated(&spire, &[WEB_UID]), &spire);
    let db = start_when_synced(&rt, &delegated(&spire, &[DB_UID]), &spire);
    let (web, db) = (web.handle(), db.handle());
    let (web_first, db_first) = (web.current(), db.current());
    assert_eq!(web_first.id().to_string(), WEB);
    assert_eq!(db_first.id().to_string(), DB);
    let lifetime = web_first.not_after() - web_first.credentials().not_before();
    assert!(
        lifetime.whole_seconds() <= 10 + 60,
        "the entry's TTL: {lifetime}"
    );
    // The roots in the set are the server's (from SubscribeToX509Bundles), nothing else.
    let server_roots = pem::parse_certificates(spire.bundle_pem().as_bytes()).expect("PEM");
    let td = TrustDomain::new("spire.test").expect("trust domain");
    assert_eq!(web_first.bundle().roots(&td), Some(server_roots.as_slice()));
    assert_eq!(web_first.bundle().trust_domains().count(), 1);

    // Each rotates on its own, keeping its own ID.
    for (handle, first, id) in [(&web, &web_first, WEB), (&db, &db_first, DB)] {
        let serial = first.credentials().serial();
        let renewed = wait_new_serial(handle, serial, ttl + ttl / 2, &spire);
        assert_eq!(renewed.id().to_string(), id);
        assert!(renewed.not_after() > first.not_after());
    }
}

#[test]
fn the_agent_refuses_a_caller_that_is_not_an_authorized_delegate_and_meshd_says_so() {
    let lo = Loopback::take();
    let spire = spire_with_delegates(&lo, &[MESHD]);
    spire.create_entry(WEB, &[WEB_UID]);
    // This process has an identity, but not the delegate's.
    register_caller(
        &spire,
        "spiffe://spire.test/ns/mesh/sa/intruder",
        &EntryOptions::default(),
    );
    let rt = runtime();
    let source = delegated(&spire, &[WEB_UID]);
    let refused = match rt.block_on(meshd_identity::IdentityManager::start(&source)) {
        Ok(_) => panic!("the agent served a caller that is not a delegate"),
        Err(e) => e,
    };
    let text = refused.to_string();
    assert!(matches!(refused, Error::WorkloadApi { .. }), "{refused:?}");
    assert!(
        text.contains("PermissionDenied")
            && text.contains("authorized_delegates")
            && text.contains(&spire.admin_socket().display().to_string()),
        "{text}"
    );
    // Waiting (not ready, this reason) rather than exiting: the entry may yet come.
    assert!(refused.curable_by_new_files());
    // The agent's own log says it refused (the decision is SPIRE's, not meshd's).
    assert!(
        spire
            .agent_log()
            .contains("caller not configured as an authorized delegate"),
        "{}",
        spire.agent_log()
    );

    // Registered as the delegate: the same source now gets the workload's SVID.
    spire.create_entry(MESHD, &[&format!("unix:uid:{}", my_uid())]);
    let manager = start_when_synced(&rt, &source, &spire);
    assert_eq!(manager.handle().current().id().to_string(), WEB);
}

/// A TLS 1.3 handshake over loopback TCP: `server` (meshd's server config over a handle)
/// against a client presenting `client`; the client identity the server verified, or why not.
async fn handshake(
    server: &IdentityHandle,
    client: &IdentityHandle,
    want: &SpiffeId,
) -> Result<SpiffeId, String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let acceptor =
        tokio_rustls::TlsAcceptor::from(tls::server_config(server).map_err(|e| e.to_string())?);
    let connector = tokio_rustls::TlsConnector::from(
        tls::client_config(client, want).map_err(|e| e.to_string())?,
    );
    let accept = async {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let tls = acceptor
            .accept(tcp)
            .await
            .map_err(|e| match Error::from_io(&e) {
                Some(meshd) => meshd.to_string(),
                None => e.to_string(),
            })?;
        tls::peer_identity(tls.get_ref().1).map_err(|e| e.to_string())
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("peer").map_err(|e| e.to_string())?;
        // The client's own failure is the server's refusal seen from outside; the server's
        // side says why.
        let _ = connector.connect(name.to_owned(), tcp).await;
        Ok::<(), String>(())
    };
    let (accepted, _) = tokio::join!(accept, connect);
    accepted
}

/// This process's SVID from `spire`'s Workload API, trusting its own domain and `home`'s: a
/// client of another trust domain that federates with meshd's.
fn client_of(spire: &Spire, home: &Spire, ws: &Workspace, id: &str) -> IdentityHandle {
    let dir = ws.path().join(spire.trust_domain());
    spire.fetch_x509(&dir);
    let home_td = TrustDomain::new(home.trust_domain()).expect("trust domain");
    let set = FilesSource {
        cert: dir.join("svid.0.pem"),
        key: dir.join("svid.0.key"),
        bundle: dir.join("bundle.0.pem"),
        federated_bundles: [(home_td, ws.write("home.pem", &home.bundle_pem()))].into(),
        spiffe_id: Some(SpiffeId::new(id).expect("an ID")),
    }
    .load()
    .expect("the other domain's SVID");
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(set));
    IdentityHandle::from_watch(rx)
}

#[test]
fn a_federated_trust_domain_added_in_spire_reaches_both_sources_and_its_peer_is_accepted() {
    let lo = Loopback::take();
    let home = spire_with_delegates(&lo, &[MESHD]);
    // The other trust domain: a server and agent of its own, on another address.
    let other = Spire::start_with(
        lo.host(2),
        SpireOptions {
            trust_domain: "other.test".into(),
            ..SpireOptions::default()
        },
    );
    let client_id = "spiffe://other.test/ns/shop/sa/client";
    other.create_entry(client_id, &[&format!("unix:uid:{}", my_uid())]);
    let web_entry = home.create_entry(WEB, &[WEB_UID]);
    let meshd_entry = register_caller(&home, MESHD, &EntryOptions::default());

    let rt = runtime();
    let web = start_when_synced(&rt, &delegated(&home, &[WEB_UID]), &home);
    let own = IdentitySource::Spire(SpireSource {
        socket: format!("unix://{}", home.workload_socket().display()),
        spiffe_id: Some(SpiffeId::new(MESHD).expect("an ID")),
    });
    let own = start_when_synced(&rt, &own, &home);
    let ws = Workspace::new();
    let client = client_of(&other, &home, &ws, client_id);
    let web_id = SpiffeId::new(WEB).expect("an ID");

    // Before: other.test is no trust domain of web's; its client is refused as such.
    let before = rt.block_on(handshake(&web.handle(), &client, &web_id));
    assert!(
        before.as_ref().is_err_and(|e| e.contains("other.test")),
        "{before:?}"
    );

    // SPIRE federates: the other bundle set on the home server, and meshd's own entry
    // federates with it. The Workload API source gains it; web's delegated set does not, though
    // the agent now holds that bundle (SubscribeToX509Bundles sends it): web's entry does not
    // federate with other.test, so its client is still refused.
    home.trust_bundle_of(&other);
    let caller = format!("unix:uid:{}", my_uid());
    home.update_entry(&meshd_entry, MESHD, &[&caller], &["other.test"]);
    let other_td = TrustDomain::new("other.test").expect("trust domain");
    let other_roots = pem::parse_certificates(other.bundle_pem().as_bytes()).expect("PEM");
    let gains = |name: &str, handle: IdentityHandle| {
        within(
            &format!("{name} gains other.test"),
            ENTRY_PROPAGATION,
            &home,
            || {
                let set = handle.current();
                (set.bundle().roots(&other_td) == Some(other_roots.as_slice())).then_some(())
            },
        )
    };
    gains("spire", own.handle());
    // The agent has pushed the new bundles to every subscriber by now; give it slack.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!web.handle().current().bundle().contains(&other_td));
    let still = rt.block_on(handshake(&web.handle(), &client, &web_id));
    assert!(still.is_err(), "{still:?}");

    // Web's entry federates too: its set gains the bundle.
    home.update_entry(&web_entry, WEB, &[WEB_UID], &["other.test"]);
    gains("spireDelegated", web.handle());

    // After: the same client is accepted, under its own ID.
    let after = rt.block_on(handshake(&web.handle(), &client, &web_id));
    assert_eq!(after.map(|id| id.to_string()), Ok(client_id.to_string()));
}

/// A `workloadIdentities` entry (meshd-identity's `WorkloadSource`) resolved for `key`.
fn workload_entry(spire: &Spire, key: &str, selectors: &[&str]) -> (SpiffeId, IdentitySource) {
    let IdentitySource::SpireDelegated(source) = delegated(spire, selectors) else {
        unreachable!("delegated() makes a spireDelegated source")
    };
    meshd_identity::WorkloadSource::SpireDelegated(source)
        .resolve(
            key,
            &TrustDomain::new("spire.test").unwrap(),
            &IdentitySource::DevCa(meshd_identity::DevCaSource::new("/nonexistent")),
        )
        .expect("a valid entry")
}

#[test]
fn per_workload_entries_take_their_own_service_account_s_svid_and_no_other() {
    // Both entries match one selector set: each workload entry's pin picks its own SVID. A
    // service account with no SVID among those the selectors name is never served another's.
    let lo = Loopback::take();
    let spire = spire_with_delegates(&lo, &[MESHD]);
    spire.create_entry_with(WEB, &[WEB_UID], &EntryOptions::default());
    spire.create_entry_with(DB, &[WEB_UID], &EntryOptions::default());
    register_caller(&spire, MESHD, &EntryOptions::default());

    let rt = runtime();
    let entries = [
        workload_entry(&spire, "shop/web", &[WEB_UID]),
        workload_entry(&spire, "shop/db", &[WEB_UID]),
    ];
    let managers: Vec<_> = entries
        .iter()
        .map(|(id, source)| {
            let manager = start_when_synced(&rt, source, &spire);
            assert_eq!(manager.handle().current().id(), id);
            manager
        })
        .collect();
    assert_eq!(managers.len(), 2);

    let (_, cart) = workload_entry(&spire, "shop/cart", &[WEB_UID]);
    let started = rt.block_on(meshd_identity::WorkloadManagers::start(
        &[(
            SpiffeId::new("spiffe://spire.test/ns/shop/sa/cart").unwrap(),
            cart,
        )],
        &meshd_identity::ManagerOptions::default(),
    ));
    let Err(e) = started else {
        panic!("shop/cart was served an SVID of another service account");
    };
    assert!(
        matches!(&e, Error::Workload { identity, .. } if identity == "spiffe://spire.test/ns/shop/sa/cart"),
        "{e:?}"
    );
    // The agent may yet get an entry for it: waited for, not fatal.
    assert!(e.curable_by_new_files(), "{e}");
}
