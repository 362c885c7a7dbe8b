//! Three "machines" for the multi-host suite: network namespaces on one bridge, each running a
//! real `meshd` process with its own SVID (issued by `meshd ca issue` from the workspace's dev
//! CA) and its own copy of the same configuration directory, with both directions of traffic
//! captured by the rules `meshd redirect install` writes.
//!
//! The bridge lives in a namespace of its own, so nothing is added to the host's network.
//! Every namespace is a [`Netns`] and every meshd a [`Meshd`], both cleaned up on drop, so a
//! failing or panicking test leaves nothing behind; a machine that cannot be built panics with
//! the reason (the suite fails, never skips).
//!
//! Addresses are 10.215.0.N/16 (N = 1, 2, 3). Each cluster is its own set of namespaces, so
//! concurrently running tests use the same addresses without meeting; the /16 prefix makes any
//! 10.215.x.y (a ServiceEntry VIP, say) routable on the link, so a connect() to it reaches the
//! capture rules.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ipnet::IpNet;
use meshd_redirect::netns::{Netns, VethEnd, veth_pair};

use crate::mesh::{Identity, Node, Port};
use crate::resources::Workload;
use crate::{Meshd, Workspace, http, meshd, netns};

/// The Istio namespace of every workload in the cluster.
pub const NAMESPACE: &str = "ambient-demo";

/// One machine to build: its workload's name (also the WorkloadEntry's), service account and
/// labels.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Workload (and WorkloadEntry) name.
    pub name: &'static str,
    /// Service account: the machine's identity is `cluster.local/ns/ambient-demo/sa/<sa>`.
    pub sa: &'static str,
    /// WorkloadEntry labels.
    pub labels: &'static [(&'static str, &'static str)],
}

/// The seed documents' cast: `sleep` (the allowed client), `httpbin` (the protected server) and
/// `notsleep` (any other source).
pub const SEED_CAST: [Spec; 3] = [
    Spec {
        name: "sleep",
        sa: "sleep",
        labels: &[("app", "sleep")],
    },
    Spec {
        name: "httpbin",
        sa: "httpbin",
        labels: &[("app", "httpbin"), ("tier", "backend")],
    },
    Spec {
        name: "notsleep",
        sa: "notsleep",
        labels: &[("app", "notsleep"), ("tier", "backend")],
    },
];

/// One machine: a namespace on the bridge, its meshd (when running) and its files.
pub struct Machine {
    // Field order is drop order: the process goes before its namespace.
    meshd: Option<Meshd>,
    /// The machine's network namespace.
    pub ns: Netns,
    /// Its workload's name.
    pub name: &'static str,
    /// Its service account.
    pub sa: &'static str,
    /// Its WorkloadEntry's labels.
    labels: &'static [(&'static str, &'static str)],
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    /// Its own directory: `meshd.yaml`, `mesh/` (configuration directory), `tls/` (SVID).
    pub dir: PathBuf,
}

impl Machine {
    /// The configuration directory this machine's meshd watches.
    pub fn config_dir(&self) -> PathBuf {
        self.dir.join("mesh")
    }

    /// The spiffe-helper directory this machine's identity comes from.
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.join("tls")
    }

    /// The daemon configuration file.
    pub fn config_file(&self) -> PathBuf {
        self.dir.join("meshd.yaml")
    }

    /// `ip:port` on this machine.
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    /// Its principal, as AuthorizationPolicies name it.
    pub fn principal(&self) -> String {
        format!("cluster.local/ns/{NAMESPACE}/sa/{}", self.sa)
    }

    /// A command running `meshd ARGS` inside this machine.
    pub fn meshd_command(&self, args: &[&str]) -> Command {
        netns::meshd_in(&self.ns, args)
    }

    /// Starts this machine's meshd and waits until it is ready.
    pub fn start(&mut self) {
        assert!(self.meshd.is_none(), "{}: meshd already running", self.name);
        self.meshd = Some(Meshd::spawn(netns::run_in(&self.ns, &self.config_file())));
    }

    /// Kills this machine's meshd at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let meshd = self.meshd.take();
        assert!(meshd.is_some(), "{}: meshd is not running", self.name);
        drop(meshd);
    }

    /// The running meshd.
    pub fn meshd(&self) -> &Meshd {
        self.meshd
            .as_ref()
            .unwrap_or_else(|| panic!("{}: meshd is not running", self.name))
    }

    /// Installs the capture rules for this machine's configuration, then checks they are there.
    fn install_capture(&self) {
        let shown = netns::install_capture(&self.ns, &self.config_file());
        assert!(
            shown.contains("redirect to :15006"),
            "{}: {shown}",
            self.name
        );
        assert!(
            shown.contains("redirect to :15001"),
            "{}: {shown}",
            self.name
        );
    }

    /// A request to this machine's admin endpoint (127.0.0.1:15000 inside the namespace).
    pub fn admin(&self, method: &str, path: &str) -> Option<(u16, String)> {
        let (method, path) = (method.to_string(), path.to_string());
        self.ns
            .run(move || http("127.0.0.1:15000".parse().ok()?, &method, &path))
    }

    /// `/config_dump`, parsed.
    pub fn config_dump(&self) -> serde_json::Value {
        let (status, body) = self
            .admin("GET", "/config_dump")
            .unwrap_or_else(|| panic!("{}: admin endpoint did not answer", self.name));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("config_dump: {e}: {body}"))
    }

    /// `/metrics` from this machine's metrics endpoint (127.0.0.1:15020 inside the namespace).
    pub fn metrics(&self) -> String {
        self.ns
            .run(|| http("127.0.0.1:15020".parse().ok()?, "GET", "/metrics"))
            .map(|(_, body)| body)
            .unwrap_or_else(|| panic!("{}: metrics endpoint did not answer", self.name))
    }

    /// The configuration generation in force.
    pub fn generation(&self) -> u64 {
        self.config_dump()["generation"].as_u64().unwrap_or(0)
    }

    /// The serial of the certificate in force.
    pub fn serial(&self) -> String {
        self.config_dump()["certificate"]["serial"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// An application's plain `connect()` from this machine (captured by its meshd when `to`
    /// is another machine).
    pub fn connect(&self, to: SocketAddr) -> io::Result<TcpStream> {
        let stream = netns::connect_in(&self.ns, to)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    }

    /// A connection from this machine that bypasses its meshd (a socket carrying meshd's mark,
    /// so capture skips it): plaintext arriving at the destination.
    pub fn connect_plaintext(&self, to: SocketAddr) -> io::Result<TcpStream> {
        let stream = netns::connect_marked_in(&self.ns, to)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    }

    /// A listener on this machine's address (the socket stays in the namespace).
    pub fn listen(&self, port: u16) -> TcpListener {
        netns::listen_in(&self.ns, self.addr(port))
    }
}

/// Three machines on a bridge, sharing one dev CA, each with a running meshd and capture.
pub struct Cluster {
    // Field order is drop order: machines (processes, then their namespaces), then the
    // bridge's namespace, then the files.
    /// The machines, in the order of their specs; machine `i` has address 10.215.0.`i+1`.
    pub machines: Vec<Machine>,
    _bridge: Netns,
    /// The files: the CA (`ca/`) and one directory per machine.
    pub ws: Workspace,
}

impl Cluster {
    /// Builds the machines of `specs` (namespaces labelled `mh-<label>-…`), issues each its
    /// SVID, writes the same WorkloadEntries plus `mesh` (more YAML documents, may be empty)
    /// into each one's configuration directory, starts every meshd and installs capture.
    pub fn new(label: &str, specs: &[Spec], mesh: &str) -> Cluster {
        let ws = Workspace::new();
        let bridge = Netns::new(&format!("mh-{label}-br"));
        bridge
            .ip(&["link", "add", "br0", "type", "bridge"])
            .and_then(|_| bridge.ip(&["link", "set", "br0", "up"]))
            .unwrap_or_else(|e| panic!("cannot create the test bridge: {e}"));
        let mut machines = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let n = u8::try_from(i + 1).expect("a handful of machines");
            machines.push(machine(&ws, &bridge, label, *spec, n));
        }
        let workloads = workload_entries(&machines);
        let cluster = Cluster {
            machines,
            _bridge: bridge,
            ws,
        };
        cluster.write_all("workloads.yaml", &workloads);
        if !mesh.is_empty() {
            cluster.write_all("mesh.yaml", mesh);
        }
        let mut cluster = cluster;
        std::thread::scope(|scope| {
            for m in &mut cluster.machines {
                scope.spawn(|| m.start());
            }
        });
        for m in &cluster.machines {
            m.install_capture();
        }
        cluster
    }

    /// Machine `i` (0-based).
    pub fn m(&self, i: usize) -> &Machine {
        &self.machines[i]
    }

    /// Machine `i`, mutably (to stop or start its meshd).
    pub fn m_mut(&mut self, i: usize) -> &mut Machine {
        &mut self.machines[i]
    }

    /// Writes `name` into every machine's configuration directory, each by an atomic rename
    /// (through a hidden temporary name the loader ignores), as configuration management would.
    pub fn write_all(&self, name: &str, text: &str) {
        for m in &self.machines {
            write_atomic(&m.config_dir().join(name), text);
        }
    }

    /// Removes `name` from every machine's configuration directory.
    pub fn remove_all(&self, name: &str) {
        for m in &self.machines {
            std::fs::remove_file(m.config_dir().join(name))
                .unwrap_or_else(|e| panic!("remove {name} on {}: {e}", m.name));
        }
    }
}

/// Writes `path` through a hidden temporary file and a rename.
pub fn write_atomic(path: &Path, text: &str) {
    let dir = path.parent().expect("a file inside a directory");
    std::fs::create_dir_all(dir).expect("mkdir");
    let name = path.file_name().expect("file name").to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write temporary file");
    std::fs::rename(&tmp, path).expect("rename into place");
}

/// Builds machine `n` (address 10.215.0.n): namespace, veth to the bridge, SVID, meshd.yaml.
fn machine(ws: &Workspace, bridge: &Netns, label: &str, spec: Spec, n: u8) -> Machine {
    let ns = Netns::new(&format!("mh-{label}-{}", spec.name));
    let ip = Ipv4Addr::new(10, 215, 0, n);
    let port = format!("p{n}");
    let addrs = [IpNet::new_assert(IpAddr::V4(ip), 16)];
    veth_pair(
        VethEnd {
            ns: bridge,
            name: &port,
            addrs: &[],
        },
        VethEnd {
            ns: &ns,
            name: "eth0",
            addrs: &addrs,
        },
    )
    .and_then(|()| bridge.ip(&["link", "set", &port, "master", "br0"]))
    .unwrap_or_else(|e| panic!("cannot wire {} to the bridge: {e}", spec.name));
    let dir = ws.path().join(spec.name);
    let tls = dir.join("tls");
    issue_svid(ws, spec.sa, &tls);
    let mut node = Node::new(spec.name, IpAddr::V4(ip), spec.sa);
    node.identity = Identity::SpiffeHelper(tls);
    node.workloads = vec![format!("{NAMESPACE}/{}", spec.name)];
    node.remote_admin = false;
    // Capture on every address of the machine; the operator endpoints inside it only.
    node.listen_on(Port::Outbound, "0.0.0.0:15001")
        .listen_on(Port::InboundPlaintext, "0.0.0.0:15006");
    for port in [Port::Admin, Port::Metrics, Port::Readiness] {
        node.listen_on(port, format!("127.0.0.1:{}", port.number()));
    }
    node.setting("redirect", "{inboundPort: 15006}");
    ws.write(
        &format!("{}/meshd.yaml", spec.name),
        &node.yaml(&dir.join("mesh"), &ws.ca()),
    );
    Machine {
        meshd: None,
        ns,
        name: spec.name,
        sa: spec.sa,
        labels: spec.labels,
        ip,
        dir,
    }
}

/// Issues the SVID of `<NAMESPACE>/<sa>` from the workspace's CA into `out` (a spiffe-helper
/// directory), with `meshd ca issue`.
pub fn issue_svid(ws: &Workspace, sa: &str, out: &Path) {
    meshd(&[
        "ca",
        "issue",
        "--ca",
        &ws.ca().display().to_string(),
        "--namespace",
        NAMESPACE,
        "--service-account",
        sa,
        "--out",
        &out.display().to_string(),
    ]);
}

/// One WorkloadEntry per machine.
fn workload_entries(machines: &[Machine]) -> String {
    (machines.iter())
        .map(|m| {
            let mut workload = Workload::new(m.name, IpAddr::V4(m.ip)).service_account(m.sa);
            workload.namespace = NAMESPACE.into();
            for (key, value) in m.labels {
                workload = workload.label(key, value);
            }
            workload.yaml()
        })
        .collect::<Vec<_>>()
        .join("---\n")
}
