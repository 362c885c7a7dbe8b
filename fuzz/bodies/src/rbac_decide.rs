//! Differential target: the indexed `Engine::decide` against the unindexed compile
//! (`Engine::compile_unindexed`, the oracle crates/rbac's laws test uses) and the naive
//! evaluator in [`crate::rbac_oracle`], on generated policy sets and connections.
//!
//! The generator draws every field of AuthorizationPolicy (L7 ones and `when` keys included),
//! empty lists, selectors, the four actions and dry-run, and PeerAuthentications, from small
//! value pools that connections also draw from, so rules match often. Policies go through the
//! real loader as YAML: a set the loader rejects is skipped (the engine only ever sees validated
//! sets). The whole decision is compared: verdict, deciding policy, reason, audit and dry-run
//! reports.

use arbitrary::{Arbitrary, Unstructured};
use meshd_manifests::{LoadOptions, load_str};
use meshd_rbac::{Connection, Destination, Engine, Peer};
use serde_json::{Map, Value, json};

use crate::rbac_oracle;

/// The mesh root namespace used for every generated set.
pub const ROOT: &str = "istio-system";
const NAMESPACES: [&str; 3] = [ROOT, "app", "other"];
const MAX_POLICIES: usize = 8;
const MAX_CONNECTIONS: usize = 8;

#[derive(Debug, Arbitrary)]
enum SourceField {
    Principals,
    NotPrincipals,
    RequestPrincipals,
    NotRequestPrincipals,
    Namespaces,
    NotNamespaces,
    ServiceAccounts,
    NotServiceAccounts,
    IpBlocks,
    NotIpBlocks,
    RemoteIpBlocks,
    NotRemoteIpBlocks,
    TrustDomains,
    NotTrustDomains,
}

impl SourceField {
    fn name(&self) -> &'static str {
        use SourceField::*;
        match self {
            Principals => "principals",
            NotPrincipals => "notPrincipals",
            RequestPrincipals => "requestPrincipals",
            NotRequestPrincipals => "notRequestPrincipals",
            Namespaces => "namespaces",
            NotNamespaces => "notNamespaces",
            ServiceAccounts => "serviceAccounts",
            NotServiceAccounts => "notServiceAccounts",
            IpBlocks => "ipBlocks",
            NotIpBlocks => "notIpBlocks",
            RemoteIpBlocks => "remoteIpBlocks",
            NotRemoteIpBlocks => "notRemoteIpBlocks",
            TrustDomains => "trustDomains",
            NotTrustDomains => "notTrustDomains",
        }
    }

    fn pool(&self) -> &'static [&'static str] {
        use SourceField::*;
        match self {
            Principals | NotPrincipals => &[
                "cluster.local/ns/app/sa/web",
                "cluster.local/ns/other/sa/api",
                "partner.example/ns/app/sa/web",
                "*",
                "cluster.local/*",
                "*/sa/web",
            ],
            RequestPrincipals | NotRequestPrincipals => &["issuer/subject", "*"],
            Namespaces | NotNamespaces => &["app", "other", ROOT, "*", "ap*", "*her"],
            ServiceAccounts | NotServiceAccounts => &["app/web", "other/api", "web"],
            IpBlocks | NotIpBlocks | RemoteIpBlocks | NotRemoteIpBlocks => &[
                "10.0.0.0/8",
                "10.1.2.3",
                "192.0.2.0/24",
                "::1/128",
                "2001:db8::/32",
            ],
            TrustDomains | NotTrustDomains => &["cluster.local", "partner.example", "*"],
        }
    }
}

#[derive(Debug, Arbitrary)]
enum OperationField {
    Ports,
    NotPorts,
    Hosts,
    NotHosts,
    Methods,
    NotMethods,
    Paths,
    NotPaths,
}

impl OperationField {
    fn name(&self) -> &'static str {
        use OperationField::*;
        match self {
            Ports => "ports",
            NotPorts => "notPorts",
            Hosts => "hosts",
            NotHosts => "notHosts",
            Methods => "methods",
            NotMethods => "notMethods",
            Paths => "paths",
            NotPaths => "notPaths",
        }
    }

    fn pool(&self) -> &'static [&'static str] {
        use OperationField::*;
        match self {
            Ports | NotPorts => &["80", "8080", "9090"],
            Hosts | NotHosts => &["example.com", "*.example.com"],
            Methods | NotMethods => &["GET", "POST"],
            Paths | NotPaths => &["/a", "/b*"],
        }
    }
}

const WHEN_KEYS: [(&str, &[&str]); 8] = [
    ("source.ip", &["10.0.0.0/8", "192.0.2.9", "::1"]),
    ("source.namespace", &["app", "other", "ap*"]),
    ("source.principal", &["cluster.local/ns/app/sa/web", "*"]),
    ("destination.ip", &["10.0.0.2", "10.0.0.0/8", "::1"]),
    ("destination.port", &["80", "8080", "9090"]),
    ("remote.ip", &["10.0.0.0/8"]),
    ("request.headers[x-user]", &["alice"]),
    ("request.auth.claims[iss]", &["issuer"]),
];

/// Indices into a pool; the list may be empty (an emptied list must never widen a rule).
#[derive(Debug, Arbitrary)]
struct Values(Vec<u8>);

impl Values {
    fn render(&self, pool: &[&str]) -> Value {
        let values: Vec<Value> = self
            .0
            .iter()
            .take(3)
            .map(|i| json!(pool[usize::from(*i) % pool.len()]))
            .collect();
        Value::Array(values)
    }
}

#[derive(Debug, Arbitrary)]
struct Condition {
    key: u8,
    values: Option<Values>,
    not_values: Option<Values>,
}

/// A `from` or `to` list: entries with (`Some`) or without (`None`) a source or operation.
type Entries<F> = Option<Vec<Option<Vec<(F, Values)>>>>;

#[derive(Debug, Arbitrary)]
struct Rule {
    from: Entries<SourceField>,
    to: Entries<OperationField>,
    when: Option<Vec<Condition>>,
}

fn fields<F>(
    fields: &[(F, Values)],
    name: impl Fn(&F) -> &'static str,
    pool: impl Fn(&F) -> &'static [&'static str],
) -> Value {
    let mut map = Map::new();
    for (field, values) in fields.iter().take(3) {
        map.insert(name(field).to_string(), values.render(pool(field)));
    }
    Value::Object(map)
}

impl Rule {
    fn render(&self) -> Value {
        let mut rule = Map::new();
        if let Some(from) = &self.from {
            let list = from.iter().take(2).map(|source| match source {
                Some(f) => json!({"source": fields(f, SourceField::name, SourceField::pool)}),
                None => json!({}),
            });
            rule.insert("from".into(), Value::Array(list.collect()));
        }
        if let Some(to) = &self.to {
            let list = to.iter().take(2).map(|op| match op {
                Some(f) => {
                    json!({"operation": fields(f, OperationField::name, OperationField::pool)})
                }
                None => json!({}),
            });
            rule.insert("to".into(), Value::Array(list.collect()));
        }
        if let Some(when) = &self.when {
            let list = when.iter().take(2).map(|c| {
                let (key, pool) = WHEN_KEYS[usize::from(c.key) % WHEN_KEYS.len()];
                let mut cond = Map::new();
                cond.insert("key".into(), json!(key));
                if let Some(v) = &c.values {
                    cond.insert("values".into(), v.render(pool));
                }
                if let Some(v) = &c.not_values {
                    cond.insert("notValues".into(), v.render(pool));
                }
                Value::Object(cond)
            });
            rule.insert("when".into(), Value::Array(list.collect()));
        }
        Value::Object(rule)
    }
}

#[derive(Debug, Arbitrary)]
struct Labels {
    app: Option<bool>,
    version: Option<bool>,
}

impl Labels {
    fn pairs(&self) -> Vec<(&'static str, &'static str)> {
        let mut pairs = Vec::new();
        if let Some(web) = self.app {
            pairs.push(("app", if web { "web" } else { "db" }));
        }
        if let Some(v1) = self.version {
            pairs.push(("version", if v1 { "v1" } else { "v2" }));
        }
        pairs
    }

    fn render(&self) -> Value {
        Value::Object(
            self.pairs()
                .into_iter()
                .map(|(k, v)| (k.to_string(), json!(v)))
                .collect(),
        )
    }
}

#[derive(Debug, Arbitrary)]
struct Policy {
    namespace: u8,
    action: Option<u8>,
    dry_run: bool,
    selector: Option<Labels>,
    rules: Option<Vec<Rule>>,
}

impl Policy {
    fn render(&self, index: usize) -> Value {
        let mut metadata = json!({
            "name": format!("p{index}"),
            "namespace": NAMESPACES[usize::from(self.namespace) % NAMESPACES.len()],
        });
        if self.dry_run {
            metadata["annotations"] = json!({"istio.io/dry-run": "true"});
        }
        let mut spec = Map::new();
        if let Some(action) = self.action {
            let actions = ["ALLOW", "DENY", "AUDIT", "CUSTOM"];
            spec.insert(
                "action".into(),
                json!(actions[usize::from(action) % actions.len()]),
            );
            if action % 4 == 3 {
                spec.insert("provider".into(), json!({"name": "ext-authz"}));
            }
        }
        if let Some(selector) = &self.selector {
            spec.insert("selector".into(), json!({"matchLabels": selector.render()}));
        }
        if let Some(rules) = &self.rules {
            spec.insert(
                "rules".into(),
                Value::Array(rules.iter().take(3).map(Rule::render).collect()),
            );
        }
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": metadata,
            "spec": spec,
        })
    }
}

#[derive(Debug, Arbitrary)]
struct PeerAuthentication {
    namespace: u8,
    selector: Option<Labels>,
    mode: Option<u8>,
    port_level: Option<(u8, u8)>,
}

const MODES: [&str; 4] = ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"];
const PORTS: [u16; 4] = [80, 8080, 9090, 15008];

impl PeerAuthentication {
    fn render(&self, index: usize) -> Value {
        let mut spec = Map::new();
        if let Some(selector) = &self.selector {
            spec.insert("selector".into(), json!({"matchLabels": selector.render()}));
        }
        if let Some(mode) = self.mode {
            spec.insert("mtls".into(), json!({"mode": MODES[usize::from(mode) % 4]}));
        }
        if let Some((port, mode)) = self.port_level {
            let port = PORTS[usize::from(port) % PORTS.len()].to_string();
            spec.insert(
                "portLevelMtls".into(),
                json!({port: {"mode": MODES[usize::from(mode) % 4]}}),
            );
        }
        json!({
            "apiVersion": "security.istio.io/v1",
            "kind": "PeerAuthentication",
            "metadata": {
                "name": format!("pa{index}"),
                "namespace": NAMESPACES[usize::from(self.namespace) % NAMESPACES.len()],
            },
            "spec": spec,
        })
    }
}

#[derive(Debug, Arbitrary)]
struct Conn {
    peer: Option<(u8, u8, bool)>,
    source_ip: u8,
    namespace: bool,
    labels: Labels,
    ip: u8,
    port: u8,
}

impl Conn {
    fn build(&self) -> Connection {
        let ips = [
            "10.1.2.3",
            "192.0.2.9",
            "203.0.113.1",
            "::1",
            "2001:db8::5",
            "10.0.0.2",
        ];
        let ip = |i: u8| {
            ips[usize::from(i) % ips.len()]
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let peer = self.peer.map(|(ns, sa, partner)| {
            let td = if partner {
                "partner.example"
            } else {
                "cluster.local"
            };
            Peer::new(
                td,
                NAMESPACES[usize::from(ns) % 3],
                ["web", "api"][usize::from(sa) % 2],
            )
        });
        Connection {
            peer,
            source_ip: ip(self.source_ip),
            destination: Destination {
                namespace: if self.namespace { "app" } else { "other" }.to_string(),
                labels: self
                    .labels
                    .pairs()
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ip: ip(self.ip),
                port: PORTS[usize::from(self.port) % PORTS.len()],
                bound_policies: Default::default(),
            },
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Input {
    policies: Vec<Policy>,
    peer_authentications: Vec<PeerAuthentication>,
    connections: Vec<Conn>,
}

/// The YAML a generated set renders to (JSON is YAML's flow style).
fn render(input: &Input) -> String {
    let docs: Vec<String> = input
        .policies
        .iter()
        .take(MAX_POLICIES)
        .enumerate()
        .map(|(i, p)| p.render(i).to_string())
        .chain(
            input
                .peer_authentications
                .iter()
                .take(2)
                .enumerate()
                .map(|(i, p)| p.render(i).to_string()),
        )
        .collect();
    docs.join("\n---\n")
}

/// Compares the three evaluations on one input; panics with the YAML and connection on a
/// disagreement.
pub fn run(data: &[u8]) {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let yaml = render(&input);
    let options = LoadOptions {
        root_namespace: ROOT.to_string(),
    };
    let Ok(snapshot) = load_str("generated.yaml", &yaml, &options) else {
        return;
    };
    let indexed = Engine::compile(snapshot.policies(), snapshot.peer_auths(), ROOT);
    let unindexed = Engine::compile_unindexed(snapshot.policies(), snapshot.peer_auths(), ROOT);
    let policies: Vec<_> = snapshot.policies().collect();
    for conn in input.connections.iter().take(MAX_CONNECTIONS) {
        let conn = conn.build();
        let fast = indexed.decide(&conn);
        let slow = unindexed.decide(&conn);
        assert_eq!(fast, slow, "indexed vs unindexed\n{yaml}\n{conn:?}");
        let naive = rbac_oracle::decide(&indexed, &policies, ROOT, &conn);
        assert_eq!(fast, naive, "indexed vs naive oracle\n{yaml}\n{conn:?}");
    }
}
