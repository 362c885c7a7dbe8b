//! Loading only a complete tree. A file caught mid-write, or a directory caught mid-copy, can
//! parse as a valid smaller configuration (a DENY list cut short denies less; a tree without its
//! only ALLOW allows everything), so before a reload loads, the tree must be still: a
//! [`Fingerprint`] of every configuration file (path, kind, size, times, inode, mode) taken,
//! the quiet window waited, taken again; the two must agree, no change event may have come in
//! between and no file may be open for writing as far as the watcher's events tell
//! ([`Writes`]). A tree that never settles within [`MAX_WAIT`] is not loaded at all: the last
//! good configuration stays, the reason is logged and the reload is tried again later.
//!
//! The fingerprint is taken from metadata only: nothing is opened, so a FIFO or a device
//! named `*.yaml` cannot block it (the loader refuses those).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshd_manifests::tree::{self, Entry};

use crate::watcher::Writes;

/// How long the tree must stay unchanged before it is loaded: longer than the pauses of a
/// writer that is still going (a `cp -r` between two files, a tool writing in chunks), short
/// enough that a reload still feels immediate.
pub const QUIET: Duration = Duration::from_millis(300);

/// How long a reload waits for the tree to settle before giving up on this attempt (the last
/// good configuration stays; see [`RETRY`]): far longer than writing any real configuration.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// When a reload that found the tree still changing is tried again (a change seen meanwhile
/// tries sooner).
pub const RETRY: Duration = Duration::from_secs(2);

/// What a load would read, from metadata: equal fingerprints mean an unchanged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, Option<Stamp>)>);

/// One entry's metadata (`None` in the fingerprint: it could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    mode: u32,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// A directory counts by identity only: its entries that matter are in the fingerprint
    /// themselves, and its times move with every temporary file an editor makes in it.
    fn dir(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            len: 0,
            mtime: (0, 0),
            ctime: (0, 0),
        }
    }

    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            mode: meta.mode(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

impl Fingerprint {
    /// The fingerprint of `dir`: its subdirectories and configuration files, reached as the
    /// loader reaches them (hidden entries skipped, symlinks followed, loops cut), blocking.
    pub fn of(dir: &Path) -> Fingerprint {
        let mut entries = Vec::new();
        tree::walk(dir, &mut |entry| match entry {
            Entry::Dir(dir, meta) => entries.push((dir.to_path_buf(), meta.map(Stamp::dir))),
            Entry::File(path, meta) => {
                entries.push((path.to_path_buf(), meta.ok().map(Stamp::of)));
            }
            Entry::Unlistable(..) | Entry::TooDeep(..) => {}
        });
        Fingerprint(entries)
    }

    /// Paths whose entries differ between two fingerprints (for messages).
    fn differences(&self, other: &Fingerprint) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = self
            .0
            .iter()
            .filter(|entry| !other.0.contains(entry))
            .chain(other.0.iter().filter(|entry| !self.0.contains(entry)))
            .map(|(path, _)| path.clone())
            .collect();
        paths.sort();
        paths.dedup();
        paths
    }
}

/// Why a tree was not loaded: it did not settle within [`MAX_WAIT`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unstable {
    /// Files were still open for writing.
    #[error("still being written after {waited:?}: {}", list(paths))]
    Writing {
        /// The files.
        paths: Vec<PathBuf>,
        /// How long the reload waited.
        waited: Duration,
    },
    /// Files kept changing (or change events kept coming).
    #[error("still changing after {waited:?}: {}", list(paths))]
    Changing {
        /// The files that changed in the last window (empty: only events were seen).
        paths: Vec<PathBuf>,
        /// How long the reload waited.
        waited: Duration,
    },
}

fn list(paths: &[PathBuf]) -> String {
    /// Enough names to find the writer; the rest are counted.
    const SHOWN: usize = 5;
    if paths.is_empty() {
        return "change events kept coming".to_string();
    }
    let mut text = paths
        .iter()
        .take(SHOWN)
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if paths.len() > SHOWN {
        text.push_str(&format!(" and {} more", paths.len() - SHOWN));
    }
    text
}

/// How long to wait and what the events tell.
#[derive(Debug, Clone)]
pub struct Stability {
    /// The quiet window.
    pub quiet: Duration,
    /// The bound on the whole wait.
    pub max_wait: Duration,
    /// Writes in progress, when the directory is watched (SIGHUP-only reloads have none).
    pub writes: Option<Writes>,
}

impl Stability {
    /// Waits until `dir` is still (see the module documentation) and returns its fingerprint,
    /// or gives up after `max_wait`. Fingerprints are taken off the async workers; the waiting
    /// is a timer, so dropping the future (a SIGTERM) ends it at once.
    pub async fn wait(&self, dir: &Path) -> Result<Fingerprint, Unstable> {
        let started = tokio::time::Instant::now();
        let changes = || self.writes.as_ref().map_or(0, Writes::changes);
        let mut seen = changes();
        let mut previous = fingerprint(dir).await;
        loop {
            tokio::time::sleep(self.quiet).await;
            let now_seen = changes();
            let current = fingerprint(dir).await;
            let writing = self
                .writes
                .as_ref()
                .map(Writes::open_for_writing)
                .unwrap_or_default();
            if let Some(still) = &current
                && Some(still) == previous.as_ref()
                && writing.is_empty()
                && now_seen == seen
            {
                return Ok(still.clone());
            }
            let waited = started.elapsed();
            if waited >= self.max_wait {
                return Err(if writing.is_empty() {
                    Unstable::Changing {
                        paths: match (&previous, &current) {
                            (Some(previous), Some(current)) => previous.differences(current),
                            _ => Vec::new(),
                        },
                        waited,
                    }
                } else {
                    Unstable::Writing {
                        paths: writing,
                        waited,
                    }
                });
            }
            previous = current;
            seen = now_seen;
        }
    }
}

/// [`Fingerprint::of`] on the blocking pool: a directory of thousands of files is thousands of
/// `stat` calls. `None` if the walk could not finish, which never counts as still.
async fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || Fingerprint::of(&dir))
        .await
        .ok()
}
