//! Reload on file change: watches the configuration directory recursively and calls back once
//! per burst of changes.
//!
//! Every way configuration reaches a machine is a change here: a file written in place, an
//! editor's save-by-rename, a configuration-management tool's atomic rename, Kubernetes'
//! `..data` symlink swap, files and subdirectories added, removed or renamed. Events are not
//! interpreted, only debounced: the reload loads the whole directory anyway, and fifty files
//! written by one `cp -r` within the debounce window make one reload.
//!
//! The directory itself may be deleted and recreated (a package upgrade, `rm -rf && cp -r`):
//! its parent is watched too, and when the directory comes back its recursive watch is armed
//! again (the daemon keeps the last good configuration meanwhile, since loading a missing
//! directory fails).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};

/// How long each file's events are held before they count: long enough for an editor's
/// write-rename-chmod to arrive as one change, short enough to feel immediate.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Why the directory cannot be watched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The watcher could not be created or a directory not watched.
    #[error("cannot watch {path}: {reason}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Watches until dropped.
pub struct DirWatcher {
    _thread: thread::JoinHandle<()>,
    stop: mpsc::Sender<Option<DebounceEventResult>>,
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        let _ = self.stop.send(None);
    }
}

type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Watches `dir` (recursively) and its parent, calling `changed` once per debounced burst.
pub fn watch_dir(
    dir: &Path,
    debounce: Duration,
    changed: impl Fn() + Send + 'static,
) -> Result<DirWatcher, WatchError> {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let parent = dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.clone());
    let (tx, rx) = mpsc::channel::<Option<DebounceEventResult>>();
    let events = tx.clone();
    let mut watcher = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        let _ = events.send(Some(result));
    })
    .map_err(|e| WatchError::Watch {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    watcher
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(|e| WatchError::Watch {
            path: parent.clone(),
            reason: e.to_string(),
        })?;
    let mut armed = arm(&mut watcher, &dir);
    let spawn_error = |e: std::io::Error| WatchError::Watch {
        path: dir.clone(),
        reason: e.to_string(),
    };
    let thread_dir = dir.clone();
    let thread = thread::Builder::new()
        .name("meshd-config-watch".into())
        .spawn(move || {
            let dir = thread_dir;
            // The watcher lives on this thread, so re-arming needs no lock.
            while let Ok(Some(first)) = rx.recv() {
                let Some(mut touches_dir) = relevant(&first, &dir) else {
                    continue;
                };
                // The debouncer releases each path's events separately once they are a window
                // old (checking every quarter window); a burst over many files arrives as
                // batches a tick or two apart. Collect until none came for half a window: one
                // burst, one reload, without adding a whole second window to every reload.
                loop {
                    match rx.recv_timeout(debounce / 2) {
                        Ok(Some(more)) => {
                            touches_dir |= relevant(&more, &dir).unwrap_or(false);
                        }
                        Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                    }
                }
                // The directory itself was created, removed or replaced: its old inotify watch
                // is dead, so arm a new one (a directory deleted and recreated within one
                // window looks unchanged otherwise). Re-arming on every burst would not do:
                // arming rescans the tree, which reports changes of its own.
                if touches_dir || !armed {
                    let was_armed = armed;
                    let _ = watcher.unwatch(&dir);
                    armed = arm(&mut watcher, &dir);
                    match (was_armed, armed) {
                        (false, true) => tracing::info!(dir = %dir.display(), "configuration directory is back; watching it again"),
                        (true, false) => tracing::warn!(dir = %dir.display(), "configuration directory is gone; keeping the last good configuration"),
                        _ => {}
                    }
                }
                changed();
            }
        })
        .map_err(spawn_error)?;
    Ok(DirWatcher {
        _thread: thread,
        stop: tx,
    })
}

/// Whether a batch changes anything (`None`: only reads, such as meshd's own loads of the
/// directory, which must not trigger a reload), and if so whether it names `dir` itself
/// (created, removed, replaced) or lost events.
fn relevant(result: &DebounceEventResult, dir: &Path) -> Option<bool> {
    match result {
        Ok(events) => {
            // The parent is watched only to see `dir` itself come and go: a change to a
            // sibling (a log file written next to the configuration directory, say) is not a
            // configuration change, and reloading on it could feed itself through the reload's
            // own log line.
            let changes: Vec<_> = events
                .iter()
                .filter(|e| !matches!(e.kind, EventKind::Access(_)))
                .filter(|e| e.paths.iter().any(|p| p.starts_with(dir)))
                .collect();
            (!changes.is_empty()).then(|| changes.iter().any(|e| e.paths.iter().any(|p| p == dir)))
        }
        Err(errors) => {
            for e in errors {
                tracing::warn!(error = %e, "configuration watch error; SIGHUP still reloads");
            }
            Some(true)
        }
    }
}

/// Watches `dir` recursively if it exists; true when armed.
fn arm(watcher: &mut Watcher, dir: &Path) -> bool {
    dir.is_dir() && watcher.watch(dir, RecursiveMode::Recursive).is_ok()
}
