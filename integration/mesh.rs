//! The typed fixture of the end-to-end tests: a mesh of N meshd nodes on one loopback range,
//! each with its identity, local workloads, listen addresses, explicit listeners and plugins as
//! values; the mesh's workloads, services and policies likewise. [`Mesh::write`] renders each
//! node's `<name>.yaml` (meshd's configuration) and its configuration directory
//! (`mesh-<name>/resources.yaml`) into one [`Workspace`]; [`Mesh::start`] runs a node.
//!
//! ```no_run
//! use meshd_integration::mesh::Mesh;
//! use meshd_integration::resources::{Policy, Rule, principal};
//!
//! let mut mesh = Mesh::web_db();
//! let port = mesh.serve_echo("db", "pg");
//! mesh.policy(Policy::allow("db-allow-web").selector("app", "db").rule(Rule::from(principal("web"))));
//! let target = mesh.addr(Mesh::DB, port);
//! mesh.node_mut("a").listener(16001, target);
//! mesh.write();
//! let (_b, _a) = (mesh.start("b"), mesh.start("a"));
//! ```

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use crate::loopback::Loopback;
use crate::resources::{NAMESPACE, PeerAuth, Policy, Service, Workload};
use crate::{Meshd, Workspace, echo_server, meshd_bin};

/// One of meshd's own listen addresses (`listen.<key>`), with the port the tests use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `hbone`: HBONE over HTTP/2 (15008, as Istio).
    Hbone,
    /// `hboneQuic`: HBONE over HTTP/3 (UDP 15008).
    HboneQuic,
    /// `admin` (15000, as Envoy's and ztunnel's admin).
    Admin,
    /// `metrics` (15020, as Istio's merged metrics port).
    Metrics,
    /// `readiness` (15021, as Istio's health port).
    Readiness,
    /// `socks5` (15080, as ztunnel's SOCKS5 port).
    Socks5,
    /// `outbound`: captured outbound connections (15001, as Istio).
    Outbound,
    /// `inboundPlaintext`: captured inbound plaintext (15006, as Istio).
    InboundPlaintext,
}

impl Port {
    /// The key under `listen:`.
    pub fn key(self) -> &'static str {
        match self {
            Port::Hbone => "hbone",
            Port::HboneQuic => "hboneQuic",
            Port::Admin => "admin",
            Port::Metrics => "metrics",
            Port::Readiness => "readiness",
            Port::Socks5 => "socks5",
            Port::Outbound => "outbound",
            Port::InboundPlaintext => "inboundPlaintext",
        }
    }

    /// The port number the tests put it on.
    pub fn number(self) -> u16 {
        match self {
            Port::Hbone | Port::HboneQuic => 15008,
            Port::Admin => 15000,
            Port::Metrics => 15020,
            Port::Readiness => 15021,
            Port::Socks5 => 15080,
            Port::Outbound => 15001,
            Port::InboundPlaintext => 15006,
        }
    }
}

/// Where a node's SVID comes from.
#[derive(Clone, Debug)]
pub enum Identity {
    /// Issued by the workspace's dev CA for its service account.
    DevCa,
    /// Read from a spiffe-helper directory (`svid.pem`, `svid_key.pem`, `svid_bundle.pem`).
    SpiffeHelper(PathBuf),
    /// Read from a spiffe-helper directory, with `federatedBundles`: (trust domain, roots PEM).
    Federated(PathBuf, Vec<(String, PathBuf)>),
    /// From a SPIRE agent's Workload API at this socket, the SVID with this SPIFFE ID.
    Spire {
        /// The agent's Workload API socket.
        socket: PathBuf,
        /// `identity.spire.spiffeId`.
        spiffe_id: String,
    },
    /// From a SPIRE agent's Delegated Identity API at this admin socket, the SVID of the
    /// workload these selectors name.
    SpireDelegated {
        /// The agent's admin socket.
        admin_socket: PathBuf,
        /// `identity.spireDelegated.selectors`.
        selectors: Vec<String>,
    },
}

/// An explicit listener: connections to `listen` go to `target` through the mesh.
#[derive(Clone, Debug)]
pub struct Listener {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Where it sends: an address or `host:port` of a service.
    pub target: String,
}

impl Listener {
    /// A listener on `listen` to `target`.
    pub fn new(listen: SocketAddr, target: impl ToString) -> Listener {
        Listener {
            listen,
            target: target.to_string(),
        }
    }
}

/// A connection plugin and its settings (`plugins: [{name, config}]`).
#[derive(Clone, Debug)]
pub struct Plugin {
    /// Its name (e.g. `connection_limit`).
    pub name: String,
    /// Its settings: (key, value) pairs rendered as `config: {key: value, ...}`.
    pub config: Vec<(String, String)>,
}

impl Plugin {
    /// Plugin `name` with no settings.
    pub fn new(name: &str) -> Plugin {
        Plugin {
            name: name.into(),
            config: Vec::new(),
        }
    }

    /// Adds a setting.
    pub fn with(mut self, key: &str, value: impl ToString) -> Plugin {
        self.config.push((key.into(), value.to_string()));
        self
    }
}

/// One meshd: its configuration as values.
#[derive(Clone, Debug)]
pub struct Node {
    /// Its name: files `<name>.yaml` and `mesh-<name>/`.
    pub name: String,
    /// Its address on the mesh's loopback range.
    pub ip: IpAddr,
    /// Its identity's service account (namespace [`NAMESPACE`]).
    pub service_account: String,
    /// Where its identity comes from.
    pub identity: Identity,
    /// `local.workloads`: the workloads it serves (`namespace/name`; none: no `local:`).
    pub workloads: Vec<String>,
    /// `admin: {allowRemote: true}`: set by [`Node::new`] for an address that is not loopback
    /// (inside a test's network namespace), where the admin endpoint may listen only when the
    /// configuration says so.
    pub remote_admin: bool,
    /// `listen:` entries; hbone, admin, metrics and readiness on its address to start with.
    pub listen: Vec<(Port, String)>,
    /// `listeners:`.
    pub listeners: Vec<Listener>,
    /// `plugins:`.
    pub plugins: Vec<Plugin>,
    /// Other top-level keys of meshd.yaml, each with its YAML value (e.g. `pool`,
    /// `{unusedReleaseTimeout: 1s}`), for settings only one test uses.
    pub settings: Vec<(String, String)>,
}

impl Node {
    /// Node `name` on `ip`, identity `shop/<sa>` from the dev CA, serving workload `shop/<sa>`,
    /// with HBONE, admin, metrics and readiness on `ip`.
    pub fn new(name: &str, ip: IpAddr, sa: &str) -> Node {
        let listen = [Port::Hbone, Port::Admin, Port::Metrics, Port::Readiness]
            .into_iter()
            .map(|p| (p, SocketAddr::new(ip, p.number()).to_string()))
            .collect();
        Node {
            name: name.into(),
            ip,
            service_account: sa.into(),
            identity: Identity::DevCa,
            workloads: vec![format!("{NAMESPACE}/{sa}")],
            remote_admin: !ip.is_loopback(),
            listen,
            listeners: Vec::new(),
            plugins: Vec::new(),
            settings: Vec::new(),
        }
    }

    /// Also serves `port` on its address at the tests' number.
    pub fn serve(&mut self, port: Port) -> &mut Node {
        self.listen_on(port, SocketAddr::new(self.ip, port.number()))
    }

    /// Sets `listen.<port>` to `value` (any text: tests of bad values use this).
    pub fn listen_on(&mut self, port: Port, value: impl ToString) -> &mut Node {
        self.listen.retain(|(p, _)| *p != port);
        self.listen.push((port, value.to_string()));
        self
    }

    /// Adds an explicit listener on `port` of its address.
    pub fn listener(&mut self, port: u16, target: impl ToString) -> &mut Node {
        let listen = SocketAddr::new(self.ip, port);
        self.listeners.push(Listener::new(listen, target));
        self
    }

    /// Adds a plugin.
    pub fn plugin(&mut self, plugin: Plugin) -> &mut Node {
        self.plugins.push(plugin);
        self
    }

    /// Sets a top-level key of meshd.yaml to a YAML value.
    pub fn setting(&mut self, key: &str, yaml: &str) -> &mut Node {
        self.settings.push((key.into(), yaml.into()));
        self
    }

    /// Where `port` listens (its address unless set otherwise).
    pub fn addr(&self, port: Port) -> SocketAddr {
        (self.listen.iter())
            .find(|(p, _)| *p == port)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(SocketAddr::new(self.ip, port.number()))
    }

    /// meshd.yaml for this node, its configuration directory `config_dir`, the CA `ca`.
    pub fn yaml(&self, config_dir: &Path, ca: &Path) -> String {
        let identity = match &self.identity {
            Identity::DevCa => format!(
                "devCa: {{dir: {}, namespace: {NAMESPACE}, serviceAccount: {}}}",
                ca.display(),
                self.service_account
            ),
            Identity::SpiffeHelper(dir) => format!("spiffeHelper: {{dir: {}}}", dir.display()),
            Identity::Federated(dir, bundles) => {
                let bundles: Vec<String> = (bundles.iter())
                    .map(|(td, path)| format!("{td}: {}", path.display()))
                    .collect();
                format!(
                    "spiffeHelper: {{dir: {}, federatedBundles: {{{}}}}}",
                    dir.display(),
                    bundles.join(", ")
                )
            }
            Identity::Spire { socket, spiffe_id } => format!(
                "spire: {{socket: \"unix://{}\", spiffeId: \"{spiffe_id}\"}}",
                socket.display()
            ),
            Identity::SpireDelegated {
                admin_socket,
                selectors,
            } => format!(
                "spireDelegated: {{adminSocket: \"unix://{}\", selectors: {selectors:?}}}",
                admin_socket.display()
            ),
        };
        let mut out = format!(
            "configDir: {}\nidentity:\n  {identity}\n",
            config_dir.display()
        );
        if !self.workloads.is_empty() {
            let _ = writeln!(out, "local: {{workloads: [{}]}}", self.workloads.join(", "));
        }
        out.push_str("listen:\n");
        for (port, value) in &self.listen {
            let _ = writeln!(out, "  {}: {value}", port.key());
        }
        if self.remote_admin {
            out.push_str("admin: {allowRemote: true}\n");
        }
        if !self.listeners.is_empty() {
            out.push_str("listeners:\n");
            for l in &self.listeners {
                let _ = writeln!(out, "- {{listen: '{}', target: '{}'}}", l.listen, l.target);
            }
        }
        if !self.plugins.is_empty() {
            out.push_str("plugins:\n");
            for p in &self.plugins {
                let _ = writeln!(out, "- name: {}", p.name);
                if !p.config.is_empty() {
                    let items: Vec<String> =
                        p.config.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                    let _ = writeln!(out, "  config: {{{}}}", items.join(", "));
                }
            }
        }
        for (key, yaml) in &self.settings {
            let _ = writeln!(out, "{key}: {yaml}");
        }
        out
    }
}

/// A mesh of meshd nodes on one loopback range, its files in one workspace.
#[derive(Clone)]
pub struct Mesh {
    /// The files: the dev CA, `<node>.yaml`, `mesh-<node>/`.
    pub ws: Arc<Workspace>,
    /// The loopback range its nodes and applications live on (none for a mesh of network
    /// namespaces, whose addresses the test made).
    pub net: Option<Arc<Loopback>>,
    /// Its nodes.
    pub nodes: Vec<Node>,
    /// Its WorkloadEntries, in every node's configuration directory.
    pub workloads: Vec<Workload>,
    /// Its ServiceEntries, likewise.
    pub services: Vec<Service>,
    /// Its AuthorizationPolicies, likewise.
    pub policies: Vec<Policy>,
    /// Its PeerAuthentications, likewise.
    pub peer_auths: Vec<PeerAuth>,
    /// Whether all nodes read one directory (`mesh/`) instead of one each.
    pub shared_dir: bool,
}

impl Mesh {
    /// Host of the web machine in [`Mesh::web_db`].
    pub const WEB: u8 = 1;
    /// Host of the db machine in [`Mesh::web_db`].
    pub const DB: u8 = 2;

    /// An empty mesh on a fresh loopback range, with a fresh workspace and dev CA.
    pub fn new() -> Mesh {
        Mesh {
            net: Some(Arc::new(Loopback::take())),
            ..Mesh::in_namespaces()
        }
    }

    /// An empty mesh whose nodes live in network namespaces at addresses the test made (no
    /// loopback range: [`Mesh::ip`] panics), with a fresh workspace and dev CA.
    pub fn in_namespaces() -> Mesh {
        Mesh {
            ws: Arc::new(Workspace::new()),
            net: None,
            nodes: Vec::new(),
            workloads: Vec::new(),
            services: Vec::new(),
            policies: Vec::new(),
            peer_auths: Vec::new(),
            shared_dir: false,
        }
    }

    /// The two machines most tests use: node `a` runs workload web (host .1, identity
    /// shop/web), node `b` runs db (host .2, shop/db, label `app: db`). No ports, policies
    /// or listeners yet.
    pub fn web_db() -> Mesh {
        let mut mesh = Mesh::new();
        let (web, db) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
        mesh.workload(Workload::new("web", web));
        mesh.workload(Workload::new("db", db).label("app", "db"));
        mesh.node(Node::new("a", web, "web"));
        mesh.node(Node::new("b", db, "db"));
        mesh
    }

    /// [`Mesh::web_db`] with echo servers on db's ports `pg` and `admin` (their numbers
    /// returned), web labelled `app: web`, and one configuration directory (`mesh/`) for both
    /// nodes: the mesh of the tests where web may use one port of db and not the other.
    pub fn web_db_pg_admin() -> (Mesh, u16, u16) {
        let mut mesh = Mesh::web_db();
        mesh.shared_dir = true;
        let pg = mesh.serve_echo("db", "pg");
        let admin = mesh.serve_echo("db", "admin");
        mesh.label("web", "app", "web");
        (mesh, pg, admin)
    }

    /// Host `n` of the mesh's loopback range.
    ///
    /// # Panics
    /// For a mesh made by [`Mesh::in_namespaces`].
    pub fn ip(&self, n: u8) -> IpAddr {
        let net = self
            .net
            .as_ref()
            .expect("a mesh in namespaces has no loopback range");
        net.host(n)
    }

    /// `port` on host `n`.
    pub fn addr(&self, n: u8, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(n), port)
    }

    /// An echo server on host `n` (any port); its port.
    pub fn echo(&self, n: u8) -> u16 {
        echo_server(SocketAddr::new(self.ip(n), 0)).port()
    }

    /// Starts an echo server on workload `workload`'s address and declares it as the
    /// workload's port `name`; the port number.
    pub fn serve_echo(&mut self, workload: &str, name: &str) -> u16 {
        let entry = self.workload_mut(workload);
        let port = echo_server(SocketAddr::new(entry.address, 0)).port();
        entry.ports.push((name.into(), port));
        port
    }

    /// Adds label `key: value` to workload `workload`.
    pub fn label(&mut self, workload: &str, key: &str, value: &str) -> &mut Mesh {
        (self.workload_mut(workload).labels).push((key.into(), value.into()));
        self
    }

    /// Adds a node; returns it, to change further.
    pub fn node(&mut self, node: Node) -> &mut Node {
        self.nodes.push(node);
        let last = self.nodes.len() - 1;
        &mut self.nodes[last]
    }

    /// Adds a WorkloadEntry.
    pub fn workload(&mut self, workload: Workload) -> &mut Mesh {
        self.workloads.push(workload);
        self
    }

    /// Adds a ServiceEntry.
    pub fn service(&mut self, service: Service) -> &mut Mesh {
        self.services.push(service);
        self
    }

    /// Adds an AuthorizationPolicy.
    pub fn policy(&mut self, policy: Policy) -> &mut Mesh {
        self.policies.push(policy);
        self
    }

    /// Adds a PeerAuthentication.
    pub fn peer_auth(&mut self, peer_auth: PeerAuth) -> &mut Mesh {
        self.peer_auths.push(peer_auth);
        self
    }

    /// Node `name`, to change before [`Mesh::write`].
    ///
    /// # Panics
    /// When there is no such node.
    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        (self.nodes.iter_mut())
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Node `name`.
    pub fn get(&self, name: &str) -> &Node {
        (self.nodes.iter())
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// WorkloadEntry `name`, to change before [`Mesh::write`].
    pub fn workload_mut(&mut self, name: &str) -> &mut Workload {
        (self.workloads.iter_mut())
            .find(|w| w.name == name)
            .unwrap_or_else(|| panic!("no workload {name}"))
    }

    /// The resources every node reads, as one multi-document YAML file.
    pub fn resources_yaml(&self) -> String {
        let docs: Vec<String> = (self.workloads.iter().map(Workload::yaml))
            .chain(self.services.iter().map(Service::yaml))
            .chain(self.policies.iter().map(Policy::yaml))
            .chain(self.peer_auths.iter().map(PeerAuth::yaml))
            .collect();
        docs.join("---\n")
    }

    /// Node `name`'s configuration directory.
    pub fn config_dir(&self, name: &str) -> PathBuf {
        if self.shared_dir {
            self.ws.path().join("mesh")
        } else {
            self.ws.path().join(format!("mesh-{name}"))
        }
    }

    /// Node `name`'s meshd.yaml.
    pub fn config(&self, name: &str) -> PathBuf {
        self.ws.path().join(format!("{name}.yaml"))
    }

    /// Writes every node's meshd.yaml and configuration directory.
    pub fn write(&self) {
        for node in &self.nodes {
            self.write_node(&node.name);
        }
    }

    /// Writes node `name`'s meshd.yaml and its configuration directory's `resources.yaml`
    /// (other files there, written by the test, are left alone). A file whose text would not
    /// change is not touched, so a running meshd watching it sees no change.
    pub fn write_node(&self, name: &str) -> PathBuf {
        let dir = self.config_dir(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write_if_changed(&dir.join("resources.yaml"), &self.resources_yaml());
        let node = self.get(name);
        let path = self.config(name);
        write_if_changed(&path, &node.yaml(&dir, &self.ws.ca()));
        path
    }

    /// `meshd run --config <name>.yaml`, not started.
    pub fn command(&self, name: &str) -> Command {
        let mut command = Command::new(meshd_bin());
        command.arg("run").arg("--config").arg(self.config(name));
        command
    }

    /// Starts node `name` (written by [`Mesh::write`]) and waits until it is ready.
    pub fn start(&self, name: &str) -> Meshd {
        assert!(
            self.config(name).exists(),
            "{name}.yaml is not written: call Mesh::write first"
        );
        Meshd::spawn(self.command(name))
    }
}

/// Writes `text` to `path` unless the file already holds it.
fn write_if_changed(path: &Path, text: &str) {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return;
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh::new()
    }
}
