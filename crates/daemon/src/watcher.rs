//! Reload on file change: watches the configuration directory recursively and calls back once
//! per burst of completed changes, and keeps track of which files are still being written.
//!
//! Every way configuration reaches a machine is a change here: a file written in place, an
//! editor's save-by-rename, a configuration-management tool's atomic rename, Kubernetes'
//! `..data` symlink swap, files and subdirectories added, removed or renamed. A reload is
//! triggered by a change that is complete: a file closed after writing (inotify
//! `IN_CLOSE_WRITE`), a rename (`IN_MOVED_FROM`/`IN_MOVED_TO`), a removal, a new directory or
//! symlink, a permission change. A write alone (`IN_MODIFY`) triggers nothing: it marks the file
//! as open for writing until it is closed, and [`crate::stable`] does not load a tree while a
//! file is marked. Fifty files written by one `cp -r` within the debounce window make one
//! reload.
//!
//! The directory itself may be deleted and recreated (a package upgrade, `rm -rf && cp -r`):
//! its parent is watched too, and when the directory comes back its recursive watch is armed
//! again (the daemon keeps the last good configuration meanwhile, since loading a missing
//! directory fails).
//!
//! Limits, as inotify has them: a file in a directory created a moment ago may be written before
//! the new directory's watch is armed, and such a write is not seen as open; the quiet window
//! of [`crate::stable`] still covers it. Copying a tree to a hidden name and renaming it into
//! place is atomic and needs none of this.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meshd_manifests::is_config_file_name;
use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// How long a burst of events is collected before the callback: long enough for an editor's
/// write-rename-chmod to arrive as one change, short enough to feel immediate. (The callback
/// comes once no event came for half of it.)
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// A file written to and neither written again nor closed for this long no longer counts as
/// open for writing: its close was lost (an inotify queue overflow) or there was never an open
/// to close (`truncate(2)` on a path). Far longer than any pause of a live writer between
/// writes; the stability check's fingerprints still guard the file.
pub const WRITER_IDLE: Duration = Duration::from_secs(30);

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

/// What the events say about writes in progress: recorded by the watcher as events arrive
/// (not after the debounce), read by reloads.
#[derive(Debug, Clone, Default)]
pub struct Writes(Arc<Mutex<WritesInner>>);

#[derive(Debug, Default)]
struct WritesInner {
    /// Configuration files written to (created or modified) and not closed since, with the
    /// time of the last write.
    open: HashMap<PathBuf, Instant>,
    /// Events that change what a load would read, counted.
    changes: u64,
}

impl Writes {
    fn lock(&self) -> std::sync::MutexGuard<'_, WritesInner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many changes were seen so far: equal counts before and after a window mean no
    /// change was seen within it.
    pub fn changes(&self) -> u64 {
        self.lock().changes
    }

    /// Configuration files open for writing as far as the events tell (sorted).
    pub fn open_for_writing(&self) -> Vec<PathBuf> {
        let mut open: Vec<PathBuf> = self
            .lock()
            .open
            .iter()
            .filter(|(_, last)| last.elapsed() < WRITER_IDLE)
            .map(|(path, _)| path.clone())
            .collect();
        open.sort();
        open
    }

    /// Records one event under `dir`; true when it completes a change (a reload is due).
    fn record(&self, event: &Event, dir: &Path) -> bool {
        let mut inner = self.lock();
        let config_file = |p: &PathBuf| p.file_name().is_some_and(is_config_file_name);
        match &event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                if !event.paths.iter().any(config_file) {
                    // A temporary file closed before its rename, a swap file: not read; the
                    // rename that follows is the change.
                    return false;
                }
                for path in &event.paths {
                    inner.open.remove(path);
                }
            }
            // Opens and reads, meshd's own loads among them, change nothing.
            EventKind::Access(_) => return false,
            EventKind::Modify(ModifyKind::Data(_)) => {
                let written: Vec<&PathBuf> =
                    event.paths.iter().filter(|p| config_file(p)).collect();
                if written.is_empty() {
                    // An editor's swap file, a log beside the configuration: not read.
                    return false;
                }
                for path in written {
                    inner.open.insert(path.clone(), Instant::now());
                }
                inner.changes += 1;
                return false;
            }
            EventKind::Create(CreateKind::File) => {
                // A regular file created by open(O_CREAT) is open for writing until its close,
                // which completes the change; a symlink, a hard link or a FIFO has no close to
                // wait for, and a symlink of any name may lead to a directory that is read.
                let mut completed = false;
                let mut counted = false;
                for path in &event.paths {
                    match std::fs::symlink_metadata(path) {
                        Ok(meta) if meta.is_file() && meta.nlink() == 1 => {
                            if config_file(path) {
                                inner.open.insert(path.clone(), Instant::now());
                                counted = true;
                            }
                        }
                        Ok(meta) if meta.is_file() => completed |= config_file(path),
                        _ => completed = true,
                    }
                }
                if completed || counted {
                    inner.changes += 1;
                }
                return completed;
            }
            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                for path in &event.paths {
                    inner.open.retain(|open, _| !open.starts_with(path));
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                // A file renamed while open stays open under its new name.
                if let [from, to] = event.paths.as_slice()
                    && let Some(last) = inner.open.remove(from)
                    && to.starts_with(dir)
                {
                    inner.open.insert(to.clone(), last);
                }
            }
            EventKind::Other if event.need_rescan() => {
                // Events were lost (queue overflow): what was open is unknown; the
                // fingerprints alone decide.
                inner.open.clear();
            }
            _ => {}
        }
        inner.changes += 1;
        true
    }
}

/// Watches until dropped.
pub struct DirWatcher {
    _thread: thread::JoinHandle<()>,
    stop: mpsc::Sender<Message>,
    writes: Writes,
}

impl DirWatcher {
    /// The writes in progress under the directory, as the events tell.
    pub fn writes(&self) -> Writes {
        self.writes.clone()
    }
}

impl Drop for DirWatcher {
    fn drop(&mut self) {
        let _ = self.stop.send(Message::Stop);
    }
}

/// From the notify thread to the burst collector.
enum Message {
    /// A completed change; true when it names the directory itself (or events were lost).
    Changed {
        touches_dir: bool,
    },
    Stop,
}

/// Watches `dir` (recursively) and its parent, calling `changed` once per debounced burst of
/// completed changes.
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
    let (tx, rx) = mpsc::channel::<Message>();
    let writes = Writes::default();
    let mut watcher = {
        let events = tx.clone();
        let writes = writes.clone();
        let watched = dir.clone();
        notify::recommended_watcher(move |result: notify::Result<Event>| {
            if let Some(touches_dir) = relevant(&result, &watched, &writes) {
                let _ = events.send(Message::Changed { touches_dir });
            }
        })
        .map_err(|e| WatchError::Watch {
            path: dir.clone(),
            reason: e.to_string(),
        })?
    };
    watcher
        .watch(&parent, RecursiveMode::NonRecursive)
        .map_err(|e| WatchError::Watch {
            path: parent.clone(),
            reason: e.to_string(),
        })?;
    let armed = arm(&mut watcher, &dir);
    let thread_dir = dir.clone();
    let thread = thread::Builder::new()
        .name("meshd-config-watch".into())
        .spawn(move || collect_bursts(rx, watcher, armed, &thread_dir, debounce, changed))
        .map_err(|e| WatchError::Watch {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
    Ok(DirWatcher {
        _thread: thread,
        stop: tx,
        writes,
    })
}

/// The watcher thread: one callback per burst, re-arming the directory's watch when it comes
/// back. The watcher lives on this thread, so re-arming needs no lock.
fn collect_bursts(
    rx: mpsc::Receiver<Message>,
    mut watcher: RecommendedWatcher,
    mut armed: bool,
    dir: &Path,
    debounce: Duration,
    changed: impl Fn(),
) {
    while let Ok(Message::Changed {
        touches_dir: mut touches,
    }) = rx.recv()
    {
        // Collect until none came for half a window: one burst, one reload.
        loop {
            match rx.recv_timeout(debounce / 2) {
                Ok(Message::Changed { touches_dir }) => touches |= touches_dir,
                Ok(Message::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
            }
        }
        // The directory itself was created, removed or replaced: its old inotify watch is
        // dead, so arm a new one (a directory deleted and recreated within one window looks
        // unchanged otherwise). Re-arming on every burst would not do: arming rescans the
        // tree, which reports changes of its own.
        if touches || !armed {
            let was_armed = armed;
            let _ = watcher.unwatch(dir);
            armed = arm(&mut watcher, dir);
            match (was_armed, armed) {
                (false, true) => {
                    tracing::info!(dir = %dir.display(), "configuration directory is back; watching it again")
                }
                (true, false) => {
                    tracing::warn!(dir = %dir.display(), "configuration directory is gone; keeping the last good configuration")
                }
                _ => {}
            }
        }
        changed();
    }
}

/// Whether an event completes a change under `dir` (`None`: it does not, such as meshd's own
/// reads, which must not trigger a reload, or a write still in progress), and if so whether
/// it names `dir` itself (created, removed, replaced) or events were lost.
fn relevant(result: &notify::Result<Event>, dir: &Path, writes: &Writes) -> Option<bool> {
    match result {
        Ok(event) => {
            // The parent is watched only to see `dir` itself come and go: a change to a
            // sibling (a log file written next to the configuration directory, say) is not a
            // configuration change, and reloading on it could feed itself through the reload's
            // own log line.
            let inside = event.paths.iter().any(|p| p.starts_with(dir));
            let lost = event.need_rescan();
            if !inside && !lost {
                return None;
            }
            writes
                .record(event, dir)
                .then(|| lost || event.paths.iter().any(|p| p == dir))
        }
        Err(e) => {
            tracing::warn!(error = %e, "configuration watch error; SIGHUP still reloads");
            Some(true)
        }
    }
}

/// Watches `dir` recursively if it exists; true when armed.
fn arm(watcher: &mut RecommendedWatcher, dir: &Path) -> bool {
    dir.is_dir() && watcher.watch(dir, RecursiveMode::Recursive).is_ok()
}
