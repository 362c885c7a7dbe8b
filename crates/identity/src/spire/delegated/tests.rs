//! The delegated source's configuration, and how an agent's messages become a set.

use super::*;
use crate::IdentitySource;

fn parse(json: &str) -> Result<IdentitySource, String> {
    serde_json::from_str(json).map_err(|e| e.to_string())
}

#[test]
fn a_selector_is_type_colon_value_and_the_value_may_hold_colons() {
    let s: Selector = "unix:uid:1001".parse().unwrap();
    assert_eq!((s.kind(), s.value()), ("unix", "uid:1001"));
    assert_eq!(s.to_string(), "unix:uid:1001");
    let k8s: Selector = "k8s:ns:shop".parse().unwrap();
    assert_eq!(k8s.kind(), "k8s");
    for (bad, why) in [
        ("unix", "expected type:value"),
        (":uid:1001", "type is empty"),
        (" unix:uid:1", "padded"),
        ("unix:", "value is empty"),
        ("", "expected type:value"),
    ] {
        let err = bad.parse::<Selector>().unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, reason }
                if field == "spireDelegated.selectors" && reason.contains(why)),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn the_config_reads_adminsocket_selectors_and_spiffeid() {
    let source = parse(
        r#"{"spireDelegated": {"adminSocket": "unix:///run/spire/admin.sock",
            "selectors": ["unix:uid:1001", "unix:gid:1001"],
            "spiffeId": "spiffe://example.org/ns/shop/sa/web"}}"#,
    )
    .unwrap();
    let IdentitySource::SpireDelegated(d) = &source else {
        panic!("{source:?}")
    };
    assert_eq!(d.selectors.len(), 2);
    assert_eq!(d.selectors[1].to_string(), "unix:gid:1001");
    let json = serde_json::to_string(&source).unwrap();
    assert!(
        json.contains(r#""selectors":["unix:uid:1001","unix:gid:1001"]"#),
        "{json}"
    );
    assert_eq!(parse(&json).unwrap(), source);
    source.check_paths().unwrap();
}

#[test]
fn an_empty_or_missing_selector_list_is_refused_never_any_workload() {
    let empty = parse(r#"{"spireDelegated": {"adminSocket": "unix:///a.sock", "selectors": []}}"#)
        .unwrap_err();
    assert!(empty.contains("is empty: name the workload"), "{empty}");
    let missing = parse(r#"{"spireDelegated": {"adminSocket": "unix:///a.sock"}}"#).unwrap_err();
    assert!(missing.contains("missing field `selectors`"), "{missing}");
    let bad =
        parse(r#"{"spireDelegated": {"adminSocket": "unix:///a.sock", "selectors": ["uid"]}}"#)
            .unwrap_err();
    assert!(bad.contains("expected type:value"), "{bad}");
    let unknown = parse(
        r#"{"spireDelegated": {"adminSocket": "unix:///a.sock", "selectors": ["unix:uid:1"], "pid": 1}}"#,
    )
    .unwrap_err();
    assert!(unknown.contains("unknown field `pid`"), "{unknown}");
    // Built in code, past serde: the check refuses it too, before any call to the agent.
    let source = SpireDelegatedSource {
        admin_socket: "unix:///run/spire/admin.sock".into(),
        selectors: vec![],
        spiffe_id: None,
    };
    assert_eq!(
        IdentitySource::SpireDelegated(source).check_paths(),
        Err(Error::Config {
            field: "spireDelegated.selectors".into(),
            reason: NO_SELECTORS.into(),
        })
    );
}

#[test]
fn the_admin_socket_must_be_an_absolute_unix_socket_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.conf");
    std::fs::write(&file, "").unwrap();
    for socket in [
        "tcp://127.0.0.1:8081".to_string(),
        "unix://relative.sock".into(),
        "/run/spire/admin.sock".into(),
        format!("unix://{}", dir.path().display()),
        format!("unix://{}/admin.sock", file.display()),
    ] {
        let source = IdentitySource::SpireDelegated(SpireDelegatedSource {
            admin_socket: socket.clone(),
            selectors: vec!["unix:uid:1001".parse().unwrap()],
            spiffe_id: None,
        });
        let err = source.check_paths().unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, .. } if field == "spireDelegated.adminSocket"),
            "{socket}: {err}"
        );
    }
}

#[test]
fn the_agents_bundle_value_is_split_into_its_der_certificates() {
    let a = rcgen::generate_simple_self_signed(vec!["a".into()])
        .unwrap()
        .cert;
    let b = rcgen::generate_simple_self_signed(vec!["b".into()])
        .unwrap()
        .cert;
    let joined = [a.der().as_ref(), b.der().as_ref()].concat();
    let roots = split_der(&joined, "example.org").unwrap();
    assert_eq!(roots, vec![a.der().clone(), b.der().clone()]);
    let err = split_der(&joined[..joined.len() - 1], "example.org").unwrap_err();
    assert!(err.to_string().contains("example.org"), "{err}");
}

/// What `SubscribeToX509SVIDs` sends for these SVIDs (issued by the dev CA), federating with
/// `federates_with`.
fn svids(issued: &[&crate::IssuedSvid], federates_with: &[&str]) -> SubscribeToX509sviDsResponse {
    use super::super::proto::delegated::X509svidWithKey;
    let x509_svids = issued
        .iter()
        .map(|svid| {
            let chain = crate::pem::parse_certificates(svid.cert_pem.as_bytes()).unwrap();
            let key = crate::pem::parse_private_key(svid.key_pem.as_bytes()).unwrap();
            let id = &svid.id;
            X509svidWithKey {
                x509_svid: Some(types::X509svid {
                    cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
                    id: Some(types::Spiffeid {
                        trust_domain: id.trust_domain().to_string(),
                        path: id.to_string()[format!("spiffe://{}", id.trust_domain()).len()..]
                            .to_string(),
                    }),
                    expires_at: svid.not_after.unix_timestamp(),
                    hint: String::new(),
                }),
                x509_svid_key: key.secret_der().to_vec(),
            }
        })
        .collect();
    SubscribeToX509sviDsResponse {
        x509_svids,
        federates_with: federates_with
            .iter()
            .map(|td| format!("spiffe://{td}"))
            .collect(),
    }
}

fn source(spiffe_id: Option<&str>) -> SpireDelegatedSource {
    SpireDelegatedSource {
        admin_socket: "unix:///run/spire/admin.sock".into(),
        selectors: vec!["unix:uid:1001".parse().unwrap()],
        spiffe_id: spiffe_id.map(|id| SpiffeId::new(id).unwrap()),
    }
}

fn bundles(cas: &[&crate::DevCa]) -> HashMap<String, Vec<u8>> {
    cas.iter()
        .map(|ca| {
            (
                format!("spiffe://{}", ca.trust_domain()),
                ca.root_der().to_vec(),
            )
        })
        .collect()
}

fn reason(result: Result<CredentialSet, Error>) -> String {
    match result {
        Err(Error::WorkloadApi { socket, reason }) => {
            assert_eq!(socket, "unix:///run/spire/admin.sock");
            reason
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_set_is_the_chosen_svid_with_its_own_and_its_federated_bundles_only() {
    let ttl = std::time::Duration::from_secs(3600);
    let home = crate::DevCa::generate("example.org").unwrap();
    let partner = crate::DevCa::generate("partner.org").unwrap();
    let stranger = crate::DevCa::generate("stranger.org").unwrap();
    let web = home.issue("shop", "web", ttl).unwrap();
    let db = home.issue("shop", "db", ttl).unwrap();
    let all = bundles(&[&home, &partner, &stranger]);
    let partner_td = TrustDomain::new("partner.org").unwrap();
    let stranger_td = TrustDomain::new("stranger.org").unwrap();

    // One SVID: it, with the local bundle and partner's (federated); never stranger's, which
    // the agent holds for some other entry.
    let set = to_set(&svids(&[&web], &["partner.org"]), &all, &source(None)).unwrap();
    assert_eq!(set.id(), &web.id);
    assert!(set.bundle().contains(home.trust_domain()));
    assert_eq!(
        set.bundle().roots(&partner_td),
        Some(&[partner.root_der().clone()][..])
    );
    assert!(!set.bundle().contains(&stranger_td));
    // Federating with nothing: the local bundle only.
    let alone = to_set(&svids(&[&web], &[]), &all, &source(None)).unwrap();
    assert_eq!(alone.bundle().trust_domains().count(), 1);
    // A federated bundle not sent yet is left out until it comes, not an error.
    let early = to_set(
        &svids(&[&web], &["partner.org"]),
        &bundles(&[&home]),
        &source(None),
    );
    assert!(!early.unwrap().bundle().contains(&partner_td));

    // Several SVIDs: spiffeId chooses.
    let both = svids(&[&web, &db], &[]);
    let chosen = to_set(&both, &all, &source(Some(&db.id.to_string()))).unwrap();
    assert_eq!(chosen.id(), &db.id);
}

#[test]
fn each_unusable_message_is_refused_with_its_reason() {
    let ttl = std::time::Duration::from_secs(3600);
    let home = crate::DevCa::generate("example.org").unwrap();
    let web = home.issue("shop", "web", ttl).unwrap();
    let db = home.issue("shop", "db", ttl).unwrap();
    let all = bundles(&[&home]);

    // Several SVIDs and no spiffeId: ambiguous, never the first by chance.
    let several = reason(to_set(&svids(&[&web, &db], &[]), &all, &source(None)));
    assert!(
        several.contains("several SVIDs") && several.contains("spiffeId"),
        "{several}"
    );
    // No entry matches the selectors (yet).
    let none = reason(to_set(&svids(&[], &[]), &all, &source(None)));
    assert!(
        none.contains(r#"no X.509-SVID for selectors ["unix:uid:1001"]"#),
        "{none}"
    );
    // The wanted ID is not among them.
    let other = "spiffe://example.org/ns/shop/sa/other";
    let missing = reason(to_set(&svids(&[&web], &[]), &all, &source(Some(other))));
    assert!(missing.contains("sa/web"), "{missing}");
    // No bundle for the SVID's own trust domain.
    let unbundled = reason(to_set(&svids(&[&web], &[]), &HashMap::new(), &source(None)));
    assert!(
        unbundled.contains("no bundle for example.org"),
        "{unbundled}"
    );
    // A bundle that does not sign the SVID.
    let foreign = crate::DevCa::generate("example.org").unwrap();
    let unsigned = to_set(&svids(&[&web], &[]), &bundles(&[&foreign]), &source(None));
    assert!(
        matches!(unsigned, Err(Error::UnknownIssuer { .. })),
        "{unsigned:?}"
    );
}
