//! What the SPIRE tests observe of meshd's identity: the caller's uid (what the agent's `unix`
//! attestor sees), an identity manager started once the agent has the entry, a rotation
//! awaited, and the identity a running meshd presents (`meshd status certs`).

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshd_identity::{CredentialSet, Error, IdentityHandle, IdentityManager, IdentitySource};

use crate::spire::{ENTRY_PROPAGATION, Spire};

/// This test process's uid: what the agent's `unix` attestor reads from the caller's socket
/// credentials (a meshd or `spire-agent api fetch` it runs inherits it).
pub fn my_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .expect("stat /proc/self")
        .uid()
}

/// A runtime whose workers run the identity manager's task while the test thread waits.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Starts a manager on `source`, retrying while the agent has not synced the entries yet
/// (the daemon retries the same way, not ready); the last refusal and the agent's log if
/// none succeeds within [`ENTRY_PROPAGATION`].
pub fn start_when_synced(
    rt: &tokio::runtime::Runtime,
    source: &IdentitySource,
    spire: &Spire,
) -> IdentityManager {
    let deadline = Instant::now() + ENTRY_PROPAGATION;
    loop {
        let err: Error = match rt.block_on(IdentityManager::start(source)) {
            Ok(manager) => return manager,
            Err(e) => e,
        };
        assert!(
            err.curable_by_new_files() && Instant::now() < deadline,
            "no identity from {source:?}: {err}\nagent log:\n{}",
            spire.agent_log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits up to `limit` for `handle`'s SVID to differ from `serial`; the new set.
pub fn wait_new_serial(
    handle: &IdentityHandle,
    serial: &[u8],
    limit: Duration,
    spire: &Spire,
) -> Arc<CredentialSet> {
    let deadline = Instant::now() + limit;
    loop {
        let current = handle.current();
        if current.credentials().serial() != serial {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "the SVID was not renewed within {limit:?}; agent log:\n{}",
            spire.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `meshd status certs` against a meshd's admin port: the identity and serial it presents.
pub fn presented(admin: SocketAddr) -> Option<(String, String)> {
    let out = Command::new(crate::meshd_bin())
        .args(["status", "certs", "--admin"])
        .arg(admin.to_string())
        .env_remove("MESHD_ADMIN")
        .env_remove("MESHD_CONFIG")
        .output()
        .expect("run meshd status");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
    };
    Some((field("identity")?, field("serial")?))
}

/// How long a registered entry may take to give a meshd process its SVID: the agent's sync,
/// then the daemon's one-second identity retry.
pub fn spire_sync_wait() -> Duration {
    ENTRY_PROPAGATION + Duration::from_secs(5)
}

/// Polls `check` every 200 ms for up to `limit` (an agent sync takes up to 5 s, so SPIRE's
/// changes need more than [`crate::eventually`]'s 10 s on a loaded machine); panics with
/// `what` and the agent's log if it never holds.
pub fn within<T>(
    what: &str,
    limit: Duration,
    spire: &Spire,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "never happened within {limit:?}: {what}\nagent log:\n{}",
            spire.agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts `names` of `mesh` in that order (`meshd run --config <name>.yaml`), then waits for
/// each to be ready within [`spire_sync_wait`]: an SVID from SPIRE may take an agent sync.
///
/// # Panics
/// When one is not ready in time (its stderr in the message).
pub fn start_ready(mesh: &crate::mesh::Mesh, names: &[&str]) -> Vec<crate::Meshd> {
    let mut nodes: Vec<crate::Meshd> = (names.iter())
        .map(|name| crate::Meshd::spawn_starting(mesh.command(name)))
        .collect();
    for meshd in &mut nodes {
        assert!(meshd.wait_ready(spire_sync_wait()), "{}", meshd.stderr());
    }
    nodes
}
