//! docs/configuration.md's table of `meshd.yaml` keys, checked against the code so that the page
//! cannot drift from what meshd accepts.
//!
//! The code's keys are what [`MeshdConfig`] serializes: every struct of the schema is
//! `deny_unknown_fields` and serializes the field names it reads, so the dotted leaves of a
//! configuration with every optional part filled in (one list element, each identity source)
//! are exactly the keys a `meshd.yaml` may hold. The test fails on a key missing from either
//! side, a documented default other than the built-in one, and an environment variable name
//! that does not set its key (each is set for real, through figment's Jail).

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use figment::Jail;
use meshd_daemon::MeshdConfig;
use meshd_daemon::settings::{Base, Flags, load};
use meshd_identity::{
    DevCaSource, FilesSource, IdentitySource, IstioCaSource, SpiffeHelperSource, SpiffeId,
    SpireDelegatedSource, SpireSource, TrustDomain,
};
use meshd_proxy::ExplicitListener;
use meshd_proxy::plugins::PluginSpec;
use serde_json::Value;

/// The page, read at compile time so that editing it rebuilds this test.
const DOC: &str = include_str!("../../../docs/configuration.md");
/// The key table sits between these two lines of the page.
const BEGIN: &str = "<!-- meshd.yaml keys: begin -->";
const END: &str = "<!-- meshd.yaml keys: end -->";

/// Keys whose values are maps with user-chosen keys (trust domain → bundle file, label → value,
/// namespace → trust domain, service account → identity source): documented as one key, not
/// descended into.
const MAPS: [&str; 4] = [
    "federatedBundles",
    "labels",
    "trustDomains",
    "workloadIdentities",
];
/// Keys whose built-in default depends on the machine (`workerThreads`: 1 or 2 by CPU count),
/// so the page describes it in words.
const MACHINE_DEPENDENT: [&str; 1] = ["workerThreads"];
/// What the reload column may say: a reload applies the configuration directory only; every
/// `meshd.yaml` key is read at start (crates/daemon/src/settings.rs, `changed_keys`).
const RESTART: &str = "restart";

/// One row of the page's table.
#[derive(Debug)]
struct Row {
    default: String,
    env: String,
    reload: String,
}

/// The rows of the key table, by key; fails on a malformed or repeated row.
fn documented() -> BTreeMap<String, Row> {
    let start = DOC
        .find(BEGIN)
        .expect("docs/configuration.md has no key table start marker");
    let end = DOC
        .find(END)
        .expect("docs/configuration.md has no key table end marker");
    let mut rows = BTreeMap::new();
    for line in DOC[start..end].lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert!(cells.len() >= 5, "a key row needs 5 cells: {line}");
        let key = unquote(cells[0]);
        let row = Row {
            default: cells[1].to_string(),
            env: unquote(cells[2]),
            reload: cells[3].to_string(),
        };
        assert!(
            rows.insert(key.clone(), row).is_none(),
            "{key} is documented twice"
        );
    }
    assert!(!rows.is_empty(), "no key rows between the markers");
    rows
}

fn unquote(cell: &str) -> String {
    cell.trim_matches('`').to_string()
}

/// One configuration per identity source, each with every optional part present.
fn filled_in() -> Vec<MeshdConfig> {
    let td = TrustDomain::new("partner.example").unwrap();
    let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
    let federated = BTreeMap::from([(td, PathBuf::from("/partner.pem"))]);
    let sources = vec![
        IdentitySource::Files(FilesSource {
            cert: "/cert.pem".into(),
            key: "/key.pem".into(),
            bundle: "/ca.pem".into(),
            federated_bundles: federated.clone(),
            spiffe_id: Some(id.clone()),
        }),
        IdentitySource::SpiffeHelper(SpiffeHelperSource {
            dir: "/tls".into(),
            federated_bundles: federated,
            spiffe_id: Some(id),
        }),
        IdentitySource::DevCa(DevCaSource::new("/dev-ca")),
        IdentitySource::Spire(SpireSource {
            socket: "unix:///run/spire/agent.sock".into(),
            spiffe_id: Some(SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap()),
        }),
        IdentitySource::SpireDelegated(SpireDelegatedSource {
            admin_socket: "unix:///run/spire/admin.sock".into(),
            selectors: vec!["unix:uid:1001".parse().unwrap()],
            spiffe_id: Some(SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap()),
        }),
        IdentitySource::IstioCa(IstioCaSource {
            cert_dir: "/var/lib/meshd/istio-certs".into(),
            spiffe_id: Some(SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap()),
        }),
    ];
    for source in &sources {
        // A new source fails to compile here: add an instance of it to `sources` above.
        match source {
            IdentitySource::Files(_)
            | IdentitySource::SpiffeHelper(_)
            | IdentitySource::DevCa(_)
            | IdentitySource::IstioCa(_)
            | IdentitySource::Spire(_)
            | IdentitySource::SpireDelegated(_) => {}
        }
    }
    sources
        .into_iter()
        .map(|identity| MeshdConfig {
            identity,
            listeners: vec![ExplicitListener {
                listen: "127.0.0.1:9080".parse().unwrap(),
                target: "reviews.default:9080".into(),
                allow_remote: false,
                workload: Some("shop/web".into()),
            }],
            plugins: vec![PluginSpec {
                name: "connection_limit".into(),
                config: serde_json::json!({}),
            }],
            control_plane: Some(control_plane()),
            trust_domains: BTreeMap::from([("bank".into(), TrustDomain::new("td-b").unwrap())]),
            workload_identities: BTreeMap::from([(
                "shop/web".into(),
                meshd_identity::WorkloadSource::DevCa(meshd_identity::WorkloadDevCa {}),
            )]),
            ..MeshdConfig::default()
        })
        .collect()
}

/// A `controlPlane:` section with every optional key set.
fn control_plane() -> meshd_xds::ControlPlaneSettings {
    let mut cp =
        meshd_xds::ControlPlaneSettings::new("/etc/meshd/istio/root-cert.pem", "shop", "web");
    cp.hostname = Some("istiod.istio-system.svc".into());
    cp.connect_to = Some("10.0.0.1:15012".into());
    cp.token_file = Some("/etc/meshd/istio/istio-token".into());
    cp.mesh_id = Some("mesh1".into());
    cp.workload_name = Some("web".into());
    cp.name = Some("web-1".into());
    cp.labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    cp.auto_register_group = Some("web".into());
    cp.instance_ip = Some("10.0.0.2".parse().unwrap());
    cp.ca_address = Some("istiod.istio-system.svc:15012".into());
    cp.ca_connect_to = Some("10.0.0.1:15012".into());
    cp
}

/// The dotted leaves of a serialized configuration: `listen.admin`, `listeners[].target`.
fn leaves(value: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    let last = prefix.rsplit('.').next().unwrap_or_default();
    match value {
        Value::Object(map) if !map.is_empty() && !MAPS.contains(&last) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(v, &key, out);
            }
        }
        Value::Array(items) if items.first().is_some_and(Value::is_object) => {
            leaves(&items[0], &format!("{prefix}[]"), out);
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// Every key the code accepts.
fn accepted() -> BTreeSet<String> {
    let mut keys = BTreeMap::new();
    for config in filled_in() {
        leaves(&serde_json::to_value(&config).unwrap(), "", &mut keys);
    }
    keys.into_keys().collect()
}

/// The built-in default of every key that has one in the default configuration.
fn defaults() -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    leaves(
        &serde_json::to_value(MeshdConfig::default()).unwrap(),
        "",
        &mut out,
    );
    out
}

/// A value as the page writes it: strings bare, everything else as JSON (`null`, `[22]`).
fn written(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `listen.inboundPlaintext` → `MESHD_LISTEN__INBOUND_PLAINTEXT`; `None` where no variable
/// can name the key (list elements, user-named map keys).
fn env_name(key: &str) -> Option<String> {
    let last = key.rsplit('.').next().unwrap_or_default();
    if key.contains("[]") || MAPS.contains(&last) {
        return None;
    }
    let mut name = String::from("MESHD_");
    for (i, segment) in key.split('.').enumerate() {
        if i > 0 {
            name.push_str("__");
        }
        for c in segment.chars() {
            if c.is_ascii_uppercase() {
                name.push('_');
            }
            name.push(c.to_ascii_uppercase());
        }
    }
    Some(name)
}

#[test]
fn every_accepted_key_is_documented_and_every_documented_key_is_accepted() {
    let documented: BTreeSet<String> = documented().into_keys().collect();
    let accepted = accepted();
    let undocumented: Vec<_> = accepted.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/configuration.md is out of date.\nkeys meshd accepts that it does not document: \
         {undocumented:?}\nkeys it documents that meshd does not accept: {unknown:?}"
    );
}

#[test]
fn documented_defaults_are_the_built_in_ones() {
    let rows = documented();
    for (key, value) in defaults() {
        let Some(row) = rows.get(&key) else {
            continue; // reported by the key-set test
        };
        if MACHINE_DEPENDENT.contains(&key.as_str()) {
            continue;
        }
        let expected = format!("`{}`", written(&value));
        assert_eq!(
            row.default, expected,
            "docs/configuration.md: the default of {key}"
        );
    }
}

#[test]
fn documented_reload_behaviour_is_restart_for_every_key() {
    for (key, row) in documented() {
        assert_eq!(
            row.reload, RESTART,
            "docs/configuration.md: {key}: a reload applies only the configuration directory"
        );
    }
}

#[test]
fn documented_environment_variables_set_their_keys() {
    let rows = documented();
    for (key, row) in &rows {
        let expected = env_name(key).unwrap_or_else(|| "—".to_string());
        assert_eq!(
            row.env, expected,
            "docs/configuration.md: the environment variable of {key}"
        );
    }
    // Set each documented variable (to the key's default, so the values are valid) and check
    // that figment reports the environment as the key's source.
    let scalars: Vec<(String, String, String)> = defaults()
        .into_iter()
        .filter(|(_, v)| v.is_string() || v.is_number() || v.is_boolean())
        .filter_map(|(key, v)| {
            let env = rows.get(&key)?.env.clone();
            Some((key, env, written(&v)))
        })
        .collect();
    assert!(scalars.len() > 10, "too few keys to check: {scalars:?}");
    Jail::expect_with(|jail| {
        for (_, env, value) in &scalars {
            jail.set_env(env, value);
        }
        let settings = load(
            Base::Embedded {
                name: "<test>",
                text: "{}",
            },
            &Flags::default(),
        )
        .unwrap_or_else(|e| panic!("the documented variables do not load: {e}"));
        let shown = settings.show();
        for (key, env, _) in &scalars {
            let source = &shown.iter().find(|s| &s.key == key).unwrap().source;
            assert!(
                source.contains("environment"),
                "{env} did not set {key} (source: {source})"
            );
        }
        Ok(())
    });
}
