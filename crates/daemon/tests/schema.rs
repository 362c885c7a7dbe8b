//! meshd.yaml's schema as a whole: each section's check runs from `MeshdConfig::check` (what
//! `meshd validate` and start-up run), the admin section's also alone before its port is bound.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use meshd_admin::SettingsError;
use meshd_daemon::MeshdConfig;
use meshd_daemon::schema::CheckError;
use meshd_proxy::ConfigError;

#[test]
fn admin_on_a_remote_address_is_refused_by_default() {
    // Anyone who reaches it reads the configuration and can stop meshd.
    let mut config = MeshdConfig::default();
    config.listen.admin = Some("0.0.0.0:15000".parse().unwrap());
    let err = config.check_admin().unwrap_err();
    assert_eq!(
        err,
        CheckError::Admin(SettingsError::RemoteAdmin {
            addr: "0.0.0.0:15000".parse().unwrap()
        })
    );
    assert!(
        err.to_string()
            .starts_with("listen.admin: 0.0.0.0:15000 is not a loopback address")
            && err.to_string().ends_with("or set admin.allowRemote: true"),
        "{err}"
    );
    // check() (what `meshd validate` runs) says the same.
    assert_eq!(config.check().unwrap_err(), err);
}

#[test]
fn admin_on_a_remote_address_is_allowed_with_a_warning() {
    let mut config = MeshdConfig::default();
    config.listen.admin = Some("[::]:15000".parse().unwrap());
    config.admin.allow_remote = true;
    let warnings = config.check().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("listen.admin: [::]:15000 accepts connections from other machines"),
        "{}",
        warnings[0]
    );
}

#[test]
fn admin_on_loopback_or_off_needs_nothing() {
    let mut config = MeshdConfig::default();
    assert_eq!(config.check_admin().unwrap(), Vec::<String>::new());
    config.listen.admin = Some("[::1]:15000".parse().unwrap());
    assert_eq!(config.check_admin().unwrap(), Vec::<String>::new());
    config.listen.admin = None;
    assert_eq!(config.check_admin().unwrap(), Vec::<String>::new());
}

#[test]
fn allowed_hosts_must_be_bare_host_names() {
    // A port, a scheme, a wildcard or an empty entry is a mistake, never "allow more".
    for bad in [
        "",
        "meshd.example:15000",
        "http://meshd.example",
        "*",
        "a b",
        "[::1]",
    ] {
        let mut config = MeshdConfig::default();
        config.admin.allowed_hosts = vec!["node1.example".into(), bad.into()];
        assert_eq!(
            config.check_admin().unwrap_err(),
            CheckError::Admin(SettingsError::AllowedHost {
                index: 1,
                name: bad.into()
            }),
            "{bad:?}"
        );
    }
}

#[test]
fn a_proxy_section_refusal_comes_through_the_whole_check() {
    let mut config = MeshdConfig::default();
    config.listen.socks5 = Some("0.0.0.0:1080".parse().unwrap());
    let err = config.check().unwrap_err();
    assert!(
        matches!(&err, CheckError::Proxy(ConfigError::RemoteEntry { field, .. }) if field == "listen.socks5"),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("listen.socks5: 0.0.0.0:1080 is not a loopback address"),
        "{err}"
    );
    // The admin check alone does not look at the proxy's sections.
    assert_eq!(config.check_admin().unwrap(), Vec::<String>::new());
}

#[test]
fn the_proxy_gets_its_sections_and_the_capture_mark() {
    let mut config = MeshdConfig::default();
    config.redirect.mark = 0x539;
    config.hbone_port = 17008;
    let proxy = config.proxy();
    assert_eq!(proxy.hbone_port, 17008);
    assert_eq!(proxy.listen, config.listen);
    // No capture listener: upstream sockets need no mark.
    assert_eq!(proxy.socket_mark(), None);
    config.listen.outbound = Some("127.0.0.1:15001".parse().unwrap());
    assert_eq!(config.proxy().socket_mark(), Some(0x539));
}

#[test]
fn a_trust_domains_key_that_is_no_namespace_is_refused() {
    // `Shop` can never be a namespace: the mapping would silently never apply.
    let mut config = MeshdConfig::default();
    let td = meshd_identity::TrustDomain::new("td-b").unwrap();
    config.trust_domains.insert("Shop".into(), td.clone());
    let err = config.check().unwrap_err();
    assert_eq!(err, CheckError::TrustDomainsNamespace("Shop".into()));
    assert!(
        err.to_string()
            .starts_with("trustDomains: \"Shop\" is not a namespace name"),
        "{err}"
    );
    // A namespace name is accepted.
    config.trust_domains.clear();
    config.trust_domains.insert("bank".into(), td);
    assert_eq!(config.check().unwrap(), Vec::<String>::new());
}

/// A configuration joined to istiod (its own identity from the Istio CA) with `entries` as
/// `workloadIdentities`, each `(key, certDir)` from the Istio CA with a token of its own.
fn with_istio_ca_workloads(entries: &[(&str, &str)]) -> MeshdConfig {
    use meshd_identity::{IdentitySource, IstioCaSource, WorkloadIstioCa, WorkloadSource};
    let mut config = MeshdConfig::default();
    let mut cp =
        meshd_xds::ControlPlaneSettings::new("/etc/meshd/istio/root-cert.pem", "shop", "vm");
    cp.cert_dir = "/var/lib/meshd/istio-certs".into();
    config.identity = IdentitySource::IstioCa(IstioCaSource {
        cert_dir: cp.cert_dir.clone(),
        spiffe_id: None,
    });
    config.control_plane = Some(cp);
    for (key, dir) in entries {
        config.workload_identities.insert(
            (*key).to_string(),
            WorkloadSource::IstioCa(WorkloadIstioCa {
                token_file: format!("/etc/meshd/tokens/{key}").into(),
                cert_dir: (*dir).into(),
            }),
        );
    }
    config
}

#[test]
fn workloads_from_the_istio_ca_each_with_a_directory_of_their_own_pass() {
    let config = with_istio_ca_workloads(&[
        ("shop/web", "/var/lib/meshd/web"),
        ("shop/db", "/var/lib/meshd/db"),
    ]);
    assert_eq!(config.check().unwrap(), Vec::<String>::new());
}

#[test]
fn a_workload_from_the_istio_ca_without_a_control_plane_is_refused() {
    let mut config = with_istio_ca_workloads(&[("shop/web", "/var/lib/meshd/web")]);
    config.control_plane = None;
    config.identity = MeshdConfig::default().identity;
    let err = config.check().unwrap_err().to_string();
    assert_eq!(
        err,
        "workloadIdentities.\"shop/web\".istioCa: needs controlPlane: (or --istio-bundle): the Istio CA is istiod's"
    );
}

#[test]
fn a_workload_from_the_istio_ca_in_another_trust_domain_is_refused() {
    // The Istio CA issues in its own trust domain only: a namespace mapped elsewhere would
    // wait forever for a certificate it can never get.
    let mut config = with_istio_ca_workloads(&[("bank/teller", "/var/lib/meshd/teller")]);
    config.trust_domains.insert(
        "bank".into(),
        meshd_identity::TrustDomain::new("bank.example").unwrap(),
    );
    let err = config.check().unwrap_err().to_string();
    assert_eq!(
        err,
        "workloadIdentities.\"bank/teller\".istioCa: namespace bank is in trust domain bank.example (trustDomains), the Istio CA issues for cluster.local"
    );
}

#[test]
fn a_workload_keeping_its_certificate_in_meshd_s_own_directory_is_refused() {
    // Both clients would write cert-chain.pem there: meshd would present the workload's
    // certificate as its own, or the other way round.
    let config = with_istio_ca_workloads(&[("shop/web", "/var/lib/meshd/istio-certs")]);
    let err = config.check().unwrap_err().to_string();
    assert_eq!(
        err,
        "workloadIdentities.\"shop/web\".istioCa: certDir /var/lib/meshd/istio-certs is controlPlane.certDir, where meshd's own certificate is kept"
    );
}

#[test]
fn two_workloads_sharing_a_certificate_directory_are_refused() {
    let config = with_istio_ca_workloads(&[
        ("shop/db", "/var/lib/meshd/shared"),
        ("shop/web", "/var/lib/meshd/shared"),
    ]);
    let err = config.check().unwrap_err().to_string();
    assert_eq!(
        err,
        "workloadIdentities.\"shop/web\".istioCa: certDir /var/lib/meshd/shared is also \"shop/db\"'s"
    );
}
