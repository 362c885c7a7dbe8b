//! The last state accepted from istiod, kept on disk so that a meshd starting while istiod is
//! unreachable enforces what it last knew instead of nothing (ztunnel keeps no such state).
//!
//! The file is a sequence of length-delimited `DeltaDiscoveryResponse` messages, one per
//! resource type, each resource with its name, version and bytes exactly as istiod sent them:
//! loading it is decoding istiod's resources again, with the same checks. It is written whole
//! to a temporary file and renamed over the old one, so a crash leaves the old or the new
//! file, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshd_workloadapi::{MeshState, ResourceKind};
use meshd_xds::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, Resource as ProtoResource,
};
use prost::Message;
use tokio::sync::Notify;

use super::store::{Held, HeldResources};

/// The file's name in `controlPlane.certDir`.
pub const STATE_FILE: &str = "istiod-state.pb";

/// Writes happen at most this often: a burst of pushes (istiod sends a change per resource
/// when a deployment rolls) is written once, and a write of a large mesh (100 000 workloads
/// are ~20 MB) does not follow every one-workload delta.
const WRITE_EVERY: Duration = Duration::from_secs(1);

/// Largest state file read back: ztunnel's largest accepted xDS message, 200 MiB.
const MAX_FILE: u64 = 200 << 20;

/// What was read back.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) state: MeshState,
    pub(crate) held: HeldResources,
    /// When the file was written.
    pub(crate) written: Option<SystemTime>,
    /// Resources in the file that no longer decode (skipped, each logged).
    pub(crate) skipped: usize,
}

/// Reads a persisted state for tools (`meshd authz check --istiod-state`): a missing,
/// unreadable or damaged file is an error; resources that no longer decode are skipped and
/// counted.
pub fn read_state(path: &Path) -> std::io::Result<(MeshState, usize)> {
    let bytes = read(path)?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"))?;
    let loaded = decode(path, &bytes)
        .ok_or_else(|| std::io::Error::other("not a state meshd persisted (damaged?)"))?;
    Ok((loaded.state, loaded.skipped))
}

/// Reads the persisted state; a missing file is an empty state, an unreadable one too (with
/// a warning: meshd then waits for istiod as on a first start).
pub(crate) fn load(path: &Path) -> Loaded {
    let bytes = match read(path) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Loaded::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "cannot read the persisted istiod state, ignoring it: {e}");
            return Loaded::default();
        }
    };
    let Some(mut loaded) = decode(path, &bytes) else {
        return Loaded::default();
    };
    loaded.written = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    loaded
}

/// Decodes a state file's bytes; `None` when the file is damaged (then none of it is used).
fn decode(path: &Path, bytes: &[u8]) -> Option<Loaded> {
    let mut loaded = Loaded::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        let response = match DeltaDiscoveryResponse::decode_length_delimited(&mut rest) {
            Ok(response) => response,
            Err(e) => {
                tracing::warn!(path = %path.display(), "persisted istiod state is damaged, ignoring it: {e}");
                return None;
            }
        };
        let Some(kind) = ResourceKind::from_type_url(&response.type_url) else {
            continue;
        };
        for resource in response.resources {
            let body = resource.resource.map(|any| any.value).unwrap_or_default();
            match loaded.state.apply(kind, &resource.name, &body) {
                Ok(_) => {
                    loaded.held.entry(kind).or_default().insert(
                        resource.name,
                        Held {
                            version: resource.version,
                            body: body.into(),
                        },
                    );
                }
                Err(e) => {
                    loaded.skipped += 1;
                    tracing::warn!(name = %resource.name, "persisted istiod resource skipped: {e}");
                }
            }
        }
    }
    Some(loaded)
}

fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len > MAX_FILE {
        return Err(std::io::Error::other(format!(
            "{len} bytes, more than the {MAX_FILE} a state can be"
        )));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    std::io::Read::read_to_end(&mut std::io::BufReader::new(file), &mut bytes)?;
    Ok(Some(bytes))
}

/// Encodes what is held, one response per kind, in a stable order.
fn encode(held: &HeldResources) -> Vec<u8> {
    let mut out = Vec::new();
    for kind in [ResourceKind::Address, ResourceKind::Authorization] {
        let Some(of_kind) = held.get(&kind) else {
            continue;
        };
        let mut names: Vec<&String> = of_kind.keys().collect();
        names.sort();
        let response = DeltaDiscoveryResponse {
            type_url: kind.type_url().to_string(),
            resources: names
                .into_iter()
                .map(|name| {
                    let held = &of_kind[name];
                    ProtoResource {
                        name: name.clone(),
                        version: held.version.clone(),
                        resource: Some(prost_types::Any {
                            type_url: kind.type_url().to_string(),
                            value: held.body.to_vec(),
                        }),
                        ..ProtoResource::default()
                    }
                })
                .collect(),
            ..DeltaDiscoveryResponse::default()
        };
        // Encoding into a Vec cannot run out of room.
        let _ = response.encode_length_delimited(&mut out);
    }
    out
}

/// Writes `bytes` to `path` whole: a temporary file beside it, synced, then renamed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Keeps the file up to date: after each change (at most every [`WRITE_EVERY`]), on the
/// blocking pool. Runs until the daemon ends.
pub(crate) fn spawn_writer(path: PathBuf, held: Arc<Mutex<HeldResources>>, changed: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            changed.notified().await;
            tokio::time::sleep(WRITE_EVERY).await;
            let held = held.clone();
            let target = path.clone();
            let written = tokio::task::spawn_blocking(move || {
                // A copy taken under the lock (names and versions; bodies are shared `Bytes`),
                // encoded outside it: a push applied meanwhile waits for the copy only, not
                // for the encoding of the whole state (~20 MB at 10⁵ workloads).
                let snapshot = held.lock().unwrap_or_else(|e| e.into_inner()).clone();
                write_atomically(&target, &encode(&snapshot))
            })
            .await;
            match written {
                Ok(Ok(())) => tracing::debug!(path = %path.display(), "istiod state persisted"),
                Ok(Err(e)) => {
                    tracing::warn!(path = %path.display(), "cannot persist the istiod state: {e}")
                }
                Err(e) => tracing::warn!("persisting the istiod state panicked: {e}"),
            }
        }
    });
}
