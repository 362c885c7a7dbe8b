//! Two meshd on loopback for reload tests: A (web) reaches B (db) through A's listener 16001;
//! B's policy directory (`mesh-b/policies`, an ALLOW of web to start with) decides.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::mesh::Mesh;
use crate::{Meshd, Workspace, echo_roundtrip, eventually, http};

/// B's ALLOW of web, written at the start.
pub const ALLOW: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-allow-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
";

/// A (web, host .1 of its loopback range) and B (db, host .2), built on [`Mesh::web_db`].
#[derive(Clone)]
pub struct Pair {
    /// The mesh: `a.yaml`, `b.yaml`, `mesh-a/`, `mesh-b/` in its workspace.
    pub mesh: Mesh,
    /// The files (the mesh's workspace).
    pub ws: Arc<Workspace>,
    /// A's address.
    pub a: IpAddr,
    /// B's address.
    pub b: IpAddr,
}

impl Pair {
    /// Writes both machines' files (not started).
    pub fn new() -> Pair {
        let mut mesh = Mesh::web_db();
        let (a, b) = (mesh.ip(Mesh::WEB), mesh.ip(Mesh::DB));
        let port = mesh.serve_echo("db", "pg");
        mesh.node_mut("a").listener(16001, SocketAddr::new(b, port));
        mesh.write();
        mesh.ws.write("mesh-b/policies/allow.yaml", ALLOW);
        Pair {
            ws: Arc::clone(&mesh.ws),
            mesh,
            a,
            b,
        }
    }

    /// B's policy directory.
    pub fn policies(&self) -> PathBuf {
        self.mesh.config_dir("b").join("policies")
    }

    /// Starts B, then A.
    pub fn start(&self) -> (Meshd, Meshd) {
        let b = self.mesh.start("b");
        let a = self.mesh.start("a");
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

impl Default for Pair {
    fn default() -> Self {
        Pair::new()
    }
}
