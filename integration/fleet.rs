//! VMs joined to an istiod: meshd nodes of a [`Mesh`] on loopback, each started with
//! `meshd run --istio-bundle DIR` (the directory `istioctl x workload entry configure` writes,
//! [`VmBundle`]) against the istiod harness ([`Istiod`]), their workloads WorkloadEntries in the
//! harness's fake cluster. [`Fleet::web_db`] is the pair most tests use: web (node `a`, host .1)
//! reaches db's two echo servers (node `b`, host .2) through explicit listeners on its machine.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::istiod::Istiod;
use crate::mesh::{Mesh, Node};
use crate::resources::{NAMESPACE, Workload};
use crate::vm_bundle::VmBundle;
use crate::{Meshd, echo_roundtrip, echo_server};

/// The harness's host on the fleet's loopback range.
pub const ISTIOD_HOST: u8 = 9;
/// web's explicit listener to db's `pg` echo server.
pub const TO_PG: u16 = 16001;
/// web's explicit listener to db's `admin` echo server.
pub const TO_ADMIN: u16 = 16002;
/// How long a pushed change may take to be enforced here: the issue asks for 1 s; the bound
/// is generous for a loaded 2-core machine (tests print the time it took).
pub const PUSH_BOUND: Duration = Duration::from_secs(10);
/// How long meshd may take to reconnect to a restarted istiod: its backoff grows to 15 s
/// (ztunnel's), so a few seconds of downtime cost a few seconds more.
pub const RECONNECT_BOUND: Duration = Duration::from_secs(30);

/// The label istiod reads to mark a WorkloadEntry's workload as reached over HBONE
/// (`networking.istio.io/tunnel: http`, pilot's `setTunnelProtocol`).
pub fn in_ambient(workload: Workload) -> Workload {
    workload.label("networking.istio.io/tunnel", "http")
}

/// Nodes joined to one istiod harness.
pub struct Fleet {
    /// The nodes (their meshd.yaml and configuration directories) and the workspace.
    pub mesh: Mesh,
    /// The harness.
    pub istiod: Istiod,
    /// The WorkloadEntries applied to the harness at the start (the cluster's base state).
    pub workloads: Vec<Workload>,
    /// db's `pg` echo port.
    pub pg: u16,
    /// db's `admin` echo port.
    pub admin: u16,
}

impl Fleet {
    /// web (node `a`, service account web) and db (node `b`, service account db), both
    /// WorkloadEntries `app: <name>` in istiod; web's machine has listeners [`TO_PG`] and
    /// [`TO_ADMIN`] to db's echo servers. Nothing is started.
    pub fn web_db() -> Fleet {
        Fleet::web_db_with(|workload| workload)
    }

    /// [`Fleet::web_db`] with db's WorkloadEntry changed by `db` (e.g. a waypoint label).
    pub fn web_db_with(db: impl FnOnce(Workload) -> Workload) -> Fleet {
        let mut mesh = Mesh::new();
        let (web, db_ip) = (mesh.ip(1), mesh.ip(2));
        let istiod = Istiod::start(mesh.ip(ISTIOD_HOST));
        let pg = echo_server(SocketAddr::new(db_ip, 0)).port();
        let admin = echo_server(SocketAddr::new(db_ip, 0)).port();
        let workloads = vec![
            in_ambient(Workload::new("web", web).label("app", "web")),
            db(in_ambient(Workload::new("db", db_ip).label("app", "db"))),
        ];
        for (name, ip, sa) in [("a", web, "web"), ("b", db_ip, "db")] {
            let cert_dir = cert_dir(&mesh, name);
            let node = mesh.node(Node::new(name, ip, sa));
            // The workloads come from istiod; the machine serves the one at its address.
            node.workloads.clear();
            node.setting("local", &format!("{{addresses: ['{ip}']}}"));
            node.setting(
                "controlPlane",
                &format!("{{certDir: '{}', instanceIp: '{ip}'}}", cert_dir.display()),
            );
        }
        mesh.node_mut("a")
            .listener(TO_PG, SocketAddr::new(db_ip, pg))
            .listener(TO_ADMIN, SocketAddr::new(db_ip, admin));
        let fleet = Fleet {
            mesh,
            istiod,
            workloads,
            pg,
            admin,
        };
        fleet.istiod.apply(&fleet.cluster_yaml());
        for (name, sa) in [("a", "web"), ("b", "db")] {
            let ip = fleet.mesh.get(name).ip;
            VmBundle::for_istiod(&fleet.istiod, NAMESPACE, sa, sa, ip).write(&fleet.bundle(name));
        }
        fleet.mesh.write();
        fleet
    }

    /// The cluster's base state as YAML: the namespace and the WorkloadEntries (what a test
    /// restarting istiod "without the policies" passes to [`Istiod::restart_with`]).
    pub fn cluster_yaml(&self) -> String {
        let mut docs = vec![format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
        )];
        docs.extend(self.workloads.iter().map(Workload::yaml));
        docs.join("---\n")
    }

    /// Node `name`'s bundle directory.
    pub fn bundle(&self, name: &str) -> PathBuf {
        self.mesh.ws.path().join(format!("bundle-{name}"))
    }

    /// Node `name`'s `controlPlane.certDir` (the Istio CA's certificate and the persisted
    /// xDS state).
    pub fn cert_dir(&self, name: &str) -> PathBuf {
        cert_dir(&self.mesh, name)
    }

    /// Adds `extra` (YAML flow-map entries, e.g. `ttl: 60s`) to node `name`'s `controlPlane:`
    /// and rewrites its meshd.yaml.
    pub fn control_plane(&mut self, name: &str, extra: &str) {
        let ip = self.mesh.get(name).ip;
        let cert_dir = self.cert_dir(name);
        let node = self.mesh.node_mut(name);
        node.settings.retain(|(key, _)| key != "controlPlane");
        node.setting(
            "controlPlane",
            &format!(
                "{{certDir: '{}', instanceIp: '{ip}', {extra}}}",
                cert_dir.display()
            ),
        );
        self.mesh.write_node(name);
    }

    /// `meshd run --config <name>.yaml --istio-bundle <bundle>`, not started.
    pub fn command(&self, name: &str) -> Command {
        let mut command = self.mesh.command(name);
        command.arg("--istio-bundle").arg(self.bundle(name));
        command
    }

    /// Starts node `name` and waits until it is ready.
    pub fn start(&self, name: &str) -> Meshd {
        Meshd::spawn(self.command(name))
    }

    /// One echo round trip through `port` of web's machine; `None` when the mesh refused it.
    pub fn through(&self, port: u16, message: &[u8]) -> Option<Vec<u8>> {
        let web = self.mesh.get("a").ip;
        let mut stream = TcpStream::connect((web, port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        echo_roundtrip(&mut stream, message)
    }

    /// Polls until a round trip through `port` is `allowed` (or refused), up to `bound`;
    /// the time it took.
    ///
    /// # Panics
    /// When it does not happen within `bound`.
    pub fn until(&self, port: u16, allowed: bool, bound: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let got = self.through(port, b"ping").is_some();
            if got == allowed {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < bound,
                "port {port}: still {} after {bound:?}",
                if got { "allowed" } else { "refused" }
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// db's address.
    pub fn db_ip(&self) -> IpAddr {
        self.mesh.get("b").ip
    }
}

/// Node `name`'s `controlPlane.certDir` in `mesh`'s workspace.
fn cert_dir(mesh: &Mesh, name: &str) -> PathBuf {
    mesh.ws.path().join(format!("istio-certs-{name}"))
}
