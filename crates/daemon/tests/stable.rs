//! The stability check on real files written by real writers: a tree is returned only once it
//! stopped changing and nothing is open for writing, and a tree that never settles is given up
//! on within the bound instead of loaded.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meshd_daemon::stable::{Fingerprint, Stability, Unstable};
use meshd_daemon::watcher::{DEBOUNCE, DirWatcher, watch_dir};

const QUIET: Duration = Duration::from_millis(300);

fn conf_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("base.yaml"), "a: 1\n").unwrap();
    (root, dir)
}

fn watched(dir: &Path) -> (DirWatcher, Stability) {
    let watcher = watch_dir(dir, DEBOUNCE, || {}).unwrap();
    let stability = Stability {
        quiet: QUIET,
        max_wait: Duration::from_secs(10),
        writes: Some(watcher.writes()),
    };
    (watcher, stability)
}

/// Appends `chunks` lines to `path` one open-write-close at a time, `pause` apart, then sets
/// `done`: every close is a complete-looking file.
fn append_slowly(path: PathBuf, chunks: usize, pause: Duration, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        for i in 0..chunks {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap();
            writeln!(file, "k{i}: v").unwrap();
            drop(file);
            std::thread::sleep(pause);
        }
        done.store(true, Ordering::SeqCst);
    });
}

#[tokio::test]
async fn a_still_tree_is_returned_after_one_quiet_window() {
    let (_root, dir) = conf_dir();
    let (_watcher, stability) = watched(&dir);
    let fingerprint = stability.wait(&dir).await.unwrap();
    assert_eq!(fingerprint, Fingerprint::of(&dir));
}

#[tokio::test]
async fn a_file_appended_in_chunks_is_waited_for() {
    // Each chunk is closed: the events alone would call every prefix complete; the quiet
    // window sees the size still moving.
    let (_root, dir) = conf_dir();
    let (_watcher, stability) = watched(&dir);
    let done = Arc::new(AtomicBool::new(false));
    append_slowly(
        dir.join("slow.yaml"),
        20,
        Duration::from_millis(50),
        done.clone(),
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let fingerprint = stability.wait(&dir).await.unwrap();
    assert!(done.load(Ordering::SeqCst), "returned while still written");
    assert_eq!(fingerprint, Fingerprint::of(&dir));
}

#[tokio::test]
async fn without_a_watcher_the_fingerprints_alone_wait_for_the_writer() {
    // SIGHUP-only reloads (the directory could not be watched).
    let (_root, dir) = conf_dir();
    let stability = Stability {
        quiet: QUIET,
        max_wait: Duration::from_secs(10),
        writes: None,
    };
    let done = Arc::new(AtomicBool::new(false));
    append_slowly(
        dir.join("slow.yaml"),
        20,
        Duration::from_millis(50),
        done.clone(),
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    stability.wait(&dir).await.unwrap();
    assert!(done.load(Ordering::SeqCst), "returned while still written");
}

#[tokio::test]
async fn a_file_held_open_for_writing_is_given_up_on_within_the_bound() {
    // The writer wrote once and paused (its size and times do not move), but has not closed
    // the file: the tree is not still, and after the bound the wait fails rather than load.
    let (_root, dir) = conf_dir();
    let (_watcher, mut stability) = watched(&dir);
    stability.max_wait = Duration::from_secs(1);
    let path = dir.join("held.yaml");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(b"a: 1\n").unwrap();
    let started = std::time::Instant::now();
    let error = stability.wait(&dir).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "unbounded wait");
    let Unstable::Writing { paths, .. } = &error else {
        panic!("{error:?}");
    };
    assert_eq!(paths, &vec![path.clone()]);
    assert!(
        error.to_string().starts_with("still being written after "),
        "{error}"
    );
    // Once closed, the same tree is still.
    drop(file);
    stability.max_wait = Duration::from_secs(10);
    stability.wait(&dir).await.unwrap();
}

#[tokio::test]
async fn a_tree_that_keeps_changing_is_given_up_on_naming_the_file() {
    let (_root, dir) = conf_dir();
    let (_watcher, mut stability) = watched(&dir);
    stability.max_wait = Duration::from_secs(1);
    let done = Arc::new(AtomicBool::new(false));
    append_slowly(
        dir.join("busy.yaml"),
        60,
        Duration::from_millis(50),
        done.clone(),
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    let error = stability.wait(&dir).await.unwrap_err();
    assert!(!done.load(Ordering::SeqCst));
    assert!(error.to_string().contains("busy.yaml"), "{error}");
}
