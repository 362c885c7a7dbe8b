//! Two meshd on loopback for reload tests: A (web) reaches B (db) through A's listener 16001;
//! B's policy directory (`mesh-b/policies`, an ALLOW of web to start with) decides.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{Meshd, Workspace, echo_roundtrip, echo_server, eventually, http};

/// B's ALLOW of web, written at the start.
pub const ALLOW: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
";

/// A (web, 127.10.`net`.1) and B (db, 127.10.`net`.2), their files in one workspace.
#[derive(Clone)]
pub struct Pair {
    /// The files: `a.yaml`, `b.yaml`, `mesh-a/`, `mesh-b/`.
    pub ws: Arc<Workspace>,
    /// A's address.
    pub a: IpAddr,
    /// B's address.
    pub b: IpAddr,
}

impl Pair {
    /// Writes both machines' files (not started).
    pub fn new(net: u8) -> Pair {
        let ws = Workspace::new();
        let a = IpAddr::V4(Ipv4Addr::new(127, 10, net, 1));
        let b = IpAddr::V4(Ipv4Addr::new(127, 10, net, 2));
        let port = echo_server(SocketAddr::new(b, 0)).port();
        let workloads = format!(
            "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: web, namespace: shop}}
spec: {{address: {a}, serviceAccount: web}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db, namespace: shop}}
spec: {{address: {b}, serviceAccount: db, labels: {{app: db}}, ports: {{pg: {port}}}}}
"
        );
        ws.write("mesh-a/workloads.yaml", &workloads);
        ws.write("mesh-b/workloads.yaml", &workloads);
        ws.write("mesh-b/policies/allow.yaml", ALLOW);
        let listener = format!("listeners:\n- {{listen: '{a}:16001', target: '{b}:{port}'}}\n");
        let a_config = ws.node_config("a", "web", "shop/web", &a.to_string(), "", &listener);
        rewrite(&a_config, "/mesh\n", "/mesh-a\n");
        let b_config = ws.node_config("b", "db", "shop/db", &b.to_string(), "", "");
        rewrite(&b_config, "/mesh\n", "/mesh-b\n");
        Pair {
            ws: Arc::new(ws),
            a,
            b,
        }
    }

    /// B's policy directory.
    pub fn policies(&self) -> PathBuf {
        self.ws.path().join("mesh-b/policies")
    }

    /// Starts B, then A.
    pub fn start(&self) -> (Meshd, Meshd) {
        let b = Meshd::start(&self.ws.path().join("b.yaml"));
        let a = Meshd::start(&self.ws.path().join("a.yaml"));
        (a, b)
    }

    /// Whether web's connection through A reaches db and echoes.
    pub fn allowed(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((self.a, 16001)) else {
            return false;
        };
        echo_roundtrip(&mut stream, b"ping").is_some()
    }

    /// B's `/config_dump`.
    pub fn dump(&self) -> Option<serde_json::Value> {
        let (_, body) = http(SocketAddr::new(self.b, 15000), "GET", "/config_dump")?;
        serde_json::from_str(&body).ok()
    }

    /// B's configuration generation (0 while it does not answer).
    pub fn generation(&self) -> u64 {
        self.dump()
            .and_then(|dump| dump["generation"].as_u64())
            .unwrap_or(0)
    }

    /// B's last rejected reload.
    pub fn last_reload_error(&self) -> Option<String> {
        self.dump()?["lastReloadError"].as_str().map(str::to_string)
    }

    /// Waits until B's generation passes `after`.
    pub fn wait_past(&self, after: u64, step: &str) -> u64 {
        eventually(&format!("a reload after {step}"), || {
            let g = self.generation();
            (g > after).then_some(g)
        })
    }

    /// Waits for B to apply a configuration past `after`, then checks the decision.
    pub fn expect(&self, after: u64, allowed: bool, step: &str) -> u64 {
        let generation = self.wait_past(after, step);
        assert_eq!(self.allowed(), allowed, "after {step}");
        generation
    }
}

/// Replaces `from` by `to` in a file.
pub fn rewrite(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read");
    std::fs::write(path, text.replace(from, to)).expect("write");
}
