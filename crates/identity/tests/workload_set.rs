//! One identity per local workload: each `workloadIdentities:` entry is pinned to its service
//! account's SPIFFE ID, and every way that pin can be broken is refused with its own error.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use meshd_identity::{
    DevCa, DevCaSource, Error, IdentityHandle, IdentitySet, IdentitySource, IstioCaSource,
    ManagerOptions, SpiffeHelperSource, SpiffeId, TrustDomain, WorkloadDevCa, WorkloadIstioCa,
    WorkloadManagers, WorkloadSource,
};

const HOUR: Duration = Duration::from_secs(3600);

fn td(name: &str) -> TrustDomain {
    TrustDomain::new(name).unwrap()
}

fn helper(dir: &std::path::Path) -> WorkloadSource {
    WorkloadSource::SpiffeHelper(SpiffeHelperSource {
        dir: dir.to_path_buf(),
        federated_bundles: Default::default(),
        spiffe_id: None,
    })
}

fn own_dev_ca(dir: &std::path::Path) -> IdentitySource {
    IdentitySource::DevCa(DevCaSource::new(dir))
}

fn config_error(e: Error) -> (String, String) {
    match e {
        Error::Config { field, reason } => (field, reason),
        other => panic!("not a config error: {other:?}"),
    }
}

#[test]
fn the_key_names_namespace_and_service_account() {
    // A key without a slash names no service account.
    let dir = tempfile::tempdir().unwrap();
    let e = helper(dir.path())
        .resolve("web", &td("cluster.local"), &own_dev_ca(dir.path()))
        .unwrap_err();
    let (field, reason) = config_error(e);
    assert_eq!(field, "workloadIdentities.\"web\"");
    assert!(reason.contains("<namespace>/<serviceAccount>"), "{reason}");
}

#[test]
fn a_key_that_forms_no_spiffe_id_is_refused() {
    // `a/b/c`: the service account `b/c` cannot be a path segment.
    let dir = tempfile::tempdir().unwrap();
    let e = helper(dir.path())
        .resolve("a/b/c", &td("cluster.local"), &own_dev_ca(dir.path()))
        .unwrap_err();
    assert_eq!(config_error(e).0, "workloadIdentities.\"a/b/c\"");
}

#[test]
fn a_configured_spiffe_id_of_another_service_account_is_refused() {
    // The pin is the service account's ID; a `spiffeId` naming another cannot widen it.
    let dir = tempfile::tempdir().unwrap();
    let source = WorkloadSource::SpiffeHelper(SpiffeHelperSource {
        dir: dir.path().to_path_buf(),
        federated_bundles: Default::default(),
        spiffe_id: Some("spiffe://cluster.local/ns/shop/sa/db".parse().unwrap()),
    });
    let e = source
        .resolve("shop/web", &td("cluster.local"), &own_dev_ca(dir.path()))
        .unwrap_err();
    let (field, reason) = config_error(e);
    assert_eq!(
        field,
        "workloadIdentities.\"shop/web\".spiffeHelper.spiffeId"
    );
    assert!(
        reason.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{reason}"
    );
}

#[test]
fn every_source_is_pinned_to_the_service_account() {
    let dir = tempfile::tempdir().unwrap();
    let (id, source) = helper(dir.path())
        .resolve("shop/web", &td("td-a"), &own_dev_ca(dir.path()))
        .unwrap();
    assert_eq!(id.to_string(), "spiffe://td-a/ns/shop/sa/web");
    match source {
        IdentitySource::SpiffeHelper(s) => assert_eq!(s.spiffe_id, Some(id)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_istio_ca_entry_loads_its_own_directory_pinned_to_the_service_account() {
    // What meshd's CA client for the service account writes is loaded from its directory,
    // and only under the service account's ID.
    let dir = tempfile::tempdir().unwrap();
    let entry = WorkloadSource::IstioCa(WorkloadIstioCa {
        token_file: dir.path().join("web-token"),
        cert_dir: dir.path().join("web"),
    });
    let (id, source) = entry
        .resolve("shop/web", &td("cluster.local"), &own_dev_ca(dir.path()))
        .unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        source,
        IdentitySource::IstioCa(IstioCaSource {
            cert_dir: dir.path().join("web"),
            spiffe_id: Some(id),
        })
    );
}

#[test]
fn a_dev_ca_entry_needs_meshd_s_own_dev_ca() {
    // meshd's own identity from files: there is no CA to issue the workload's SVID.
    let dir = tempfile::tempdir().unwrap();
    let own = IdentitySource::SpiffeHelper(SpiffeHelperSource {
        dir: dir.path().to_path_buf(),
        federated_bundles: Default::default(),
        spiffe_id: None,
    });
    let e = WorkloadSource::DevCa(WorkloadDevCa {})
        .resolve("shop/web", &td("cluster.local"), &own)
        .unwrap_err();
    let (field, reason) = config_error(e);
    assert_eq!(field, "workloadIdentities.\"shop/web\".devCa");
    assert!(reason.contains("identity.devCa"), "{reason}");
}

#[test]
fn a_dev_ca_entry_in_another_trust_domain_is_refused() {
    // The service account's namespace maps to td-b; the dev CA issues for cluster.local.
    let dir = tempfile::tempdir().unwrap();
    let e = WorkloadSource::DevCa(WorkloadDevCa {})
        .resolve("shop/web", &td("td-b"), &own_dev_ca(dir.path()))
        .unwrap_err();
    let (_, reason) = config_error(e);
    assert!(reason.contains("td-b"), "{reason}");
}

#[tokio::test]
async fn an_svid_of_another_service_account_is_refused_at_start() {
    // The directory holds shop/db's SVID; the entry is shop/web's: fail closed, naming both.
    let dir = tempfile::tempdir().unwrap();
    let ca = DevCa::generate("cluster.local").unwrap();
    ca.issue_to_dir("shop", "db", HOUR, dir.path()).unwrap();
    let resolved = helper(dir.path())
        .resolve("shop/web", &td("cluster.local"), &own_dev_ca(dir.path()))
        .unwrap();
    let Err(e) = WorkloadManagers::start(&[resolved], &ManagerOptions::default()).await else {
        panic!("a mismatching SVID was accepted");
    };
    let Error::Workload { identity, .. } = &e else {
        panic!("not a workload error: {e:?}");
    };
    assert_eq!(identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        e.cause(),
        &Error::IdentityMismatch {
            expected: "spiffe://cluster.local/ns/shop/sa/web".into(),
            found: "spiffe://cluster.local/ns/shop/sa/db".into(),
        }
    );
    // Files another agent writes may still be mended: meshd waits, not ready.
    assert!(e.curable_by_new_files());
}

#[tokio::test]
async fn the_dev_ca_issues_one_svid_per_service_account() {
    let ca_dir = tempfile::tempdir().unwrap();
    let own = own_dev_ca(ca_dir.path());
    let own_manager = meshd_identity::IdentityManager::start(&own).await.unwrap();
    let sources: Vec<_> = ["shop/web", "shop/db"]
        .iter()
        .map(|key| {
            WorkloadSource::DevCa(WorkloadDevCa {})
                .resolve(key, &td("cluster.local"), &own)
                .unwrap()
        })
        .collect();
    let managers = WorkloadManagers::start(&sources, &ManagerOptions::default())
        .await
        .unwrap();
    let set = managers.set(own_manager.handle());
    let web: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
    let db: SpiffeId = "spiffe://cluster.local/ns/shop/sa/db".parse().unwrap();
    let other: SpiffeId = "spiffe://cluster.local/ns/shop/sa/other".parse().unwrap();
    assert_eq!(set.workload(&web).unwrap().current().id(), &web);
    assert_eq!(set.workload(&db).unwrap().current().id(), &db);
    // Without an identity of its own, a workload is served under meshd's.
    assert_eq!(
        set.for_workload(Some(&other)).current().id(),
        own_manager.handle().current().id()
    );
    assert_eq!(set.workloads().count(), 2);
    assert!(set.has_workload_identities());
    assert!(
        !IdentitySet::single(IdentityHandle::fixed(
            DevCa::generate("cluster.local")
                .unwrap()
                .issue("a", "b", HOUR)
                .unwrap()
                .credential_set()
                .unwrap()
        ))
        .has_workload_identities()
    );
}

#[test]
fn a_spire_delegated_entry_asks_for_the_service_account_s_svid() {
    // Several SVIDs may match the selectors: the pin chooses the service account's.
    let dir = tempfile::tempdir().unwrap();
    let source = WorkloadSource::SpireDelegated(meshd_identity::SpireDelegatedSource {
        admin_socket: "unix:///run/spire/admin.sock".into(),
        selectors: vec!["unix:uid:1001".parse().unwrap()],
        spiffe_id: None,
    });
    let (id, resolved) = source
        .resolve("shop/web", &td("example.org"), &own_dev_ca(dir.path()))
        .unwrap();
    match resolved {
        IdentitySource::SpireDelegated(s) => {
            assert_eq!(s.spiffe_id, Some(id));
            assert_eq!(s.selectors, vec!["unix:uid:1001".parse().unwrap()]);
        }
        other => panic!("{other:?}"),
    }
}
