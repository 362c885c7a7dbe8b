//! The Istio resources of a test mesh as typed values, rendered to the YAML meshd loads:
//! WorkloadEntry ([`Workload`]), ServiceEntry ([`Service`]), AuthorizationPolicy
//! ([`Policy`]) and PeerAuthentication ([`PeerAuth`]). They model what the end-to-end tests
//! use; a test about the YAML itself (a broken file, an exotic field) writes its YAML.

use std::fmt::Write;
use std::net::IpAddr;

/// The namespace of every test workload unless a test says otherwise.
pub const NAMESPACE: &str = "shop";

/// The trust domain of the workspace's dev CA (`Workspace::new`).
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The SPIFFE principal of service account `sa` in [`NAMESPACE`], as policies name it.
pub fn principal(sa: &str) -> String {
    format!("{TRUST_DOMAIN}/ns/{NAMESPACE}/sa/{sa}")
}

/// `{k: v, ...}` of label-like pairs.
fn flow_map(pairs: &[(String, String)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// A WorkloadEntry: a workload at an address with a service account, labels and named ports.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its name (also its service account unless [`Workload::service_account`] says other).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// Its address.
    pub address: IpAddr,
    /// Its labels.
    pub labels: Vec<(String, String)>,
    /// Its named ports (none: it serves every port).
    pub ports: Vec<(String, u16)>,
    /// Its annotations (e.g. `meshd.io/tunnel: quic`).
    pub annotations: Vec<(String, String)>,
}

impl Workload {
    /// Workload `name` in [`NAMESPACE`] at `address`, service account `name`, no labels.
    pub fn new(name: &str, address: IpAddr) -> Workload {
        Workload {
            name: name.into(),
            namespace: NAMESPACE.into(),
            service_account: name.into(),
            address,
            labels: Vec::new(),
            ports: Vec::new(),
            annotations: Vec::new(),
        }
    }

    /// Sets its service account.
    pub fn service_account(mut self, sa: &str) -> Workload {
        self.service_account = sa.into();
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Workload {
        self.labels.push((key.into(), value.into()));
        self
    }

    /// Adds a named port.
    pub fn port(mut self, name: &str, number: u16) -> Workload {
        self.ports.push((name.into(), number));
        self
    }

    /// Adds an annotation.
    pub fn annotation(mut self, key: &str, value: &str) -> Workload {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// `namespace/name`, as `local.workloads` names it.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let annotations = if self.annotations.is_empty() {
            String::new()
        } else {
            format!(", annotations: {}", flow_map(&self.annotations))
        };
        let mut spec = format!(
            "address: {}, serviceAccount: {}",
            self.address, self.service_account
        );
        if !self.labels.is_empty() {
            let _ = write!(spec, ", labels: {}", flow_map(&self.labels));
        }
        if !self.ports.is_empty() {
            let ports: Vec<(String, String)> = (self.ports.iter())
                .map(|(n, p)| (n.clone(), p.to_string()))
                .collect();
            let _ = write!(spec, ", ports: {}", flow_map(&ports));
        }
        format!(
            "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {}, namespace: {}{annotations}}}\nspec: {{{spec}}}\n",
            self.name, self.namespace
        )
    }
}

/// A ServiceEntry: host names and a VIP whose ports are served by the workloads its selector
/// picks.
#[derive(Clone, Debug)]
pub struct Service {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its host names.
    pub hosts: Vec<String>,
    /// Its VIPs.
    pub addresses: Vec<String>,
    /// Its ports: (number, name, targetPort).
    pub ports: Vec<(u16, String, Option<u16>)>,
    /// `resolution:` when set (e.g. `STATIC`).
    pub resolution: Option<String>,
    /// The labels of the workloads that serve it.
    pub selector: Vec<(String, String)>,
}

impl Service {
    /// Service `name` in [`NAMESPACE`] with host `host`.
    pub fn new(name: &str, host: &str) -> Service {
        Service {
            name: name.into(),
            namespace: NAMESPACE.into(),
            hosts: vec![host.into()],
            addresses: Vec::new(),
            ports: Vec::new(),
            resolution: None,
            selector: Vec::new(),
        }
    }

    /// Adds a VIP.
    pub fn address(mut self, vip: &str) -> Service {
        self.addresses.push(vip.into());
        self
    }

    /// Adds a port, served on the workloads' port of the same name.
    pub fn port(mut self, number: u16, name: &str) -> Service {
        self.ports.push((number, name.into(), None));
        self
    }

    /// Adds a port served on `target` of the workloads.
    pub fn port_to(mut self, number: u16, name: &str, target: u16) -> Service {
        self.ports.push((number, name.into(), Some(target)));
        self
    }

    /// Sets `resolution:`.
    pub fn resolution(mut self, resolution: &str) -> Service {
        self.resolution = Some(resolution.into());
        self
    }

    /// Selects the workloads labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> Service {
        self.selector.push((key.into(), value.into()));
        self
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let ports: Vec<String> = (self.ports.iter())
            .map(|(number, name, target)| match target {
                Some(t) => format!("{{number: {number}, name: {name}, targetPort: {t}}}"),
                None => format!("{{number: {number}, name: {name}}}"),
            })
            .collect();
        let mut out = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {}, namespace: {}}}\nspec:\n  hosts: [{}]\n",
            self.name,
            self.namespace,
            self.hosts.join(", ")
        );
        if !self.addresses.is_empty() {
            let _ = writeln!(out, "  addresses: [{}]", self.addresses.join(", "));
        }
        let _ = writeln!(out, "  ports: [{}]", ports.join(", "));
        if let Some(resolution) = &self.resolution {
            let _ = writeln!(out, "  resolution: {resolution}");
        }
        if !self.selector.is_empty() {
            let _ = writeln!(
                out,
                "  workloadSelector: {{labels: {}}}",
                flow_map(&self.selector)
            );
        }
        out
    }
}

/// An AuthorizationPolicy's action.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// ALLOW (the default, left out of the YAML).
    Allow,
    /// DENY.
    Deny,
}

/// One rule of a [`Policy`]; an empty rule (`{}`) matches every connection.
#[derive(Clone, Debug, Default)]
pub struct Rule {
    /// `from.source.principals`.
    pub principals: Vec<String>,
    /// `from.source.ipBlocks`.
    pub ip_blocks: Vec<String>,
    /// `to.operation.ports`.
    pub ports: Vec<u16>,
    /// `to.operation.paths` (an L7 condition: meshd, an L4 proxy, never matches it).
    pub paths: Vec<String>,
}

impl Rule {
    /// The rule matching every connection.
    pub fn any() -> Rule {
        Rule::default()
    }

    /// A rule matching connections from `principal`.
    pub fn from(principal: impl Into<String>) -> Rule {
        Rule {
            principals: vec![principal.into()],
            ..Rule::default()
        }
    }

    /// A rule matching connections from addresses in `block` (an address or CIDR).
    pub fn from_ip(block: impl Into<String>) -> Rule {
        Rule {
            ip_blocks: vec![block.into()],
            ..Rule::default()
        }
    }

    /// A rule matching connections to `port`.
    pub fn to_port(port: u16) -> Rule {
        Rule::any().port(port)
    }

    /// Also requires destination port `port` (any of the rule's ports).
    pub fn port(mut self, port: u16) -> Rule {
        self.ports.push(port);
        self
    }

    /// Also requires path `path`.
    pub fn path(mut self, path: &str) -> Rule {
        self.paths.push(path.into());
        self
    }

    fn yaml(&self) -> String {
        let mut fields = Vec::new();
        let mut source = Vec::new();
        if !self.principals.is_empty() {
            source.push(format!("principals: [{}]", self.principals.join(", ")));
        }
        if !self.ip_blocks.is_empty() {
            source.push(format!("ipBlocks: [{}]", self.ip_blocks.join(", ")));
        }
        if !source.is_empty() {
            fields.push(format!("from: [{{source: {{{}}}}}]", source.join(", ")));
        }
        let mut operation = Vec::new();
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(|p| format!("'{p}'")).collect();
            operation.push(format!("ports: [{}]", ports.join(", ")));
        }
        if !self.paths.is_empty() {
            operation.push(format!("paths: [{}]", self.paths.join(", ")));
        }
        if !operation.is_empty() {
            fields.push(format!("to: [{{operation: {{{}}}}}]", operation.join(", ")));
        }
        if fields.is_empty() {
            return "  - {}\n".into();
        }
        format!("  - {}\n", fields.join("\n    "))
    }
}

/// An AuthorizationPolicy.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// ALLOW or DENY.
    pub action: Action,
    /// The labels of the workloads it applies to (none: all of its namespace).
    pub selector: Vec<(String, String)>,
    /// Its rules.
    pub rules: Vec<Rule>,
    /// `istio.io/dry-run: 'true'`: decided and reported, never enforced.
    pub dry_run: bool,
}

impl Policy {
    /// An ALLOW policy `name` in [`NAMESPACE`] with no rules yet.
    pub fn allow(name: &str) -> Policy {
        Policy {
            name: name.into(),
            namespace: NAMESPACE.into(),
            action: Action::Allow,
            selector: Vec::new(),
            rules: Vec::new(),
            dry_run: false,
        }
    }

    /// A DENY policy `name` in [`NAMESPACE`] with no rules yet.
    pub fn deny(name: &str) -> Policy {
        Policy {
            action: Action::Deny,
            ..Policy::allow(name)
        }
    }

    /// Applies it to workloads labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> Policy {
        self.selector.push((key.into(), value.into()));
        self
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Policy {
        self.rules.push(rule);
        self
    }

    /// Marks it dry-run.
    pub fn dry_run(mut self) -> Policy {
        self.dry_run = true;
        self
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let metadata = if self.dry_run {
            format!(
                "metadata:\n  name: {}\n  namespace: {}\n  annotations: {{istio.io/dry-run: 'true'}}\n",
                self.name, self.namespace
            )
        } else {
            format!(
                "metadata: {{name: {}, namespace: {}}}\n",
                self.name, self.namespace
            )
        };
        let mut out = format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n{metadata}spec:\n"
        );
        if !self.selector.is_empty() {
            let _ = writeln!(
                out,
                "  selector: {{matchLabels: {}}}",
                flow_map(&self.selector)
            );
        }
        if self.action == Action::Deny {
            out.push_str("  action: DENY\n");
        }
        out.push_str("  rules:\n");
        for rule in &self.rules {
            out.push_str(&rule.yaml());
        }
        out
    }
}

/// A PeerAuthentication: the mTLS mode of the workloads it selects, per port.
#[derive(Clone, Debug)]
pub struct PeerAuth {
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The labels of the workloads it applies to.
    pub selector: Vec<(String, String)>,
    /// `mtls.mode` (STRICT, PERMISSIVE, DISABLE).
    pub mode: String,
    /// `portLevelMtls`: (port, mode).
    pub ports: Vec<(u16, String)>,
}

impl PeerAuth {
    /// PeerAuthentication `name` in [`NAMESPACE`] with mode `mode`.
    pub fn new(name: &str, mode: &str) -> PeerAuth {
        PeerAuth {
            name: name.into(),
            namespace: NAMESPACE.into(),
            selector: Vec::new(),
            mode: mode.into(),
            ports: Vec::new(),
        }
    }

    /// Applies it to workloads labelled `key: value`.
    pub fn selector(mut self, key: &str, value: &str) -> PeerAuth {
        self.selector.push((key.into(), value.into()));
        self
    }

    /// Sets port `port`'s mode.
    pub fn port(mut self, port: u16, mode: &str) -> PeerAuth {
        self.ports.push((port, mode.into()));
        self
    }

    /// The YAML document.
    pub fn yaml(&self) -> String {
        let mut out = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {}, namespace: {}}}\nspec:\n",
            self.name, self.namespace
        );
        if !self.selector.is_empty() {
            let _ = writeln!(
                out,
                "  selector: {{matchLabels: {}}}",
                flow_map(&self.selector)
            );
        }
        let _ = writeln!(out, "  mtls: {{mode: {}}}", self.mode);
        if !self.ports.is_empty() {
            let ports: Vec<String> = (self.ports.iter())
                .map(|(p, m)| format!("'{p}': {{mode: {m}}}"))
                .collect();
            let _ = writeln!(out, "  portLevelMtls: {{{}}}", ports.join(", "));
        }
        out
    }
}
