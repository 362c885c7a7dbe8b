//! The configuration directory watcher with real files: every way configuration lands is seen,
//! bursts coalesce, a deleted-then-recreated directory is watched again, and a file still being
//! written triggers nothing until it is closed.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use std::io::Write;

use meshd_daemon::watcher::{DirWatcher, watch_dir};

const WINDOW: Duration = Duration::from_millis(150);

struct Counter {
    count: Arc<AtomicUsize>,
    _watcher: DirWatcher,
}

impl Counter {
    fn new(dir: &Path) -> Counter {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let watcher = watch_dir(dir, WINDOW, move || {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        Counter {
            count,
            _watcher: watcher,
        }
    }

    fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Waits until the count passes `before`; fails after 10 s.
    fn changed_since(&self, before: usize, what: &str) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.get() <= before {
            assert!(Instant::now() < deadline, "no reload after {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.get()
    }

    /// Lets pending events settle, then returns the count.
    fn settle(&self) -> usize {
        std::thread::sleep(WINDOW * 4);
        self.get()
    }
}

#[test]
fn every_way_a_file_lands_triggers_a_reload() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    let c = Counter::new(&dir);
    let mut n = c.settle();

    std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
    n = c.changed_since(n, "a new file");
    n = c.settle().max(n);
    std::fs::write(dir.join("a.yaml"), "a: 2\n").unwrap();
    n = c.changed_since(n, "a write in place");
    n = c.settle().max(n);
    // An editor's save: write a temporary file, rename it over the original.
    std::fs::write(dir.join(".a.yaml.swp"), "a: 3\n").unwrap();
    std::fs::rename(dir.join(".a.yaml.swp"), dir.join("a.yaml")).unwrap();
    n = c.changed_since(n, "save-by-rename");
    n = c.settle().max(n);
    std::fs::rename(dir.join("a.yaml"), dir.join("b.yaml")).unwrap();
    n = c.changed_since(n, "a rename");
    n = c.settle().max(n);
    std::fs::create_dir(dir.join("sub")).unwrap();
    n = c.changed_since(n, "a new subdirectory");
    n = c.settle().max(n);
    std::fs::write(dir.join("sub/c.yaml"), "c: 1\n").unwrap();
    n = c.changed_since(n, "a file in the new subdirectory");
    n = c.settle().max(n);
    std::fs::remove_file(dir.join("b.yaml")).unwrap();
    c.changed_since(n, "a removal");
}

#[test]
fn a_kubernetes_style_data_symlink_swap_triggers_a_reload() {
    // conf.d/policy.yaml -> ..data/policy.yaml, ..data -> ..v1; the swap replaces ..data.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir_all(dir.join("..v1")).unwrap();
    std::fs::create_dir_all(dir.join("..v2")).unwrap();
    std::fs::write(dir.join("..v1/policy.yaml"), "v: 1\n").unwrap();
    std::fs::write(dir.join("..v2/policy.yaml"), "v: 2\n").unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/policy.yaml", dir.join("policy.yaml")).unwrap();
    let c = Counter::new(&dir);
    let n = c.settle();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    c.changed_since(n, "the ..data swap");
}

#[test]
fn fifty_files_in_one_burst_give_one_reload() {
    // `cp -r` of a whole configuration: one reload, not fifty.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    let c = Counter::new(&dir);
    let before = c.settle();
    for i in 0..50 {
        std::fs::write(dir.join(format!("p{i}.yaml")), "x: 1\n").unwrap();
    }
    c.changed_since(before, "fifty files");
    let after = c.settle();
    assert_eq!(after - before, 1, "one burst, one reload");
}

#[test]
fn a_deleted_then_recreated_directory_is_watched_again() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    let c = Counter::new(&dir);
    let mut n = c.settle();
    std::fs::remove_dir_all(&dir).unwrap();
    n = c.changed_since(n, "the directory's removal");
    n = c.settle().max(n);
    std::fs::create_dir(&dir).unwrap();
    n = c.changed_since(n, "the directory's return");
    n = c.settle().max(n);
    // The point: files in the recreated directory are seen.
    std::fs::write(dir.join("back.yaml"), "x: 1\n").unwrap();
    c.changed_since(n, "a file in the recreated directory");
}

#[test]
fn reading_the_directory_does_not_trigger_a_reload() {
    // Every reload reads every file: if reads counted, each reload would cause the next.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
    let c = Counter::new(&dir);
    let before = c.settle();
    for _ in 0..3 {
        let _ = std::fs::read_to_string(dir.join("a.yaml")).unwrap();
        let _ = std::fs::read_dir(&dir).unwrap().count();
    }
    assert_eq!(c.settle(), before);
}

#[test]
fn files_beside_the_directory_do_not_trigger_a_reload() {
    // The parent is watched to see the directory come and go; a log file written next to it
    // reloaded meshd on every line, and each reload logged a line (found by benches/e2e).
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    let c = Counter::new(&dir);
    let before = c.settle();
    for i in 0..5 {
        std::fs::write(root.path().join("meshd.log"), format!("line {i}\n")).unwrap();
        // A sibling whose name merely starts with the directory's.
        std::fs::write(root.path().join("conf.d-old"), "x\n").unwrap();
        std::fs::create_dir_all(root.path().join("conf.d.new/sub")).unwrap();
    }
    assert_eq!(c.settle(), before, "a sibling's change reloaded");
    std::fs::write(dir.join("a.yaml"), "a: 1\n").unwrap();
    c.changed_since(before, "a file in the directory");
}

#[test]
fn a_file_being_written_is_open_and_triggers_nothing_until_closed() {
    // A writer caught between two writes has written a prefix: loading it would enforce a
    // configuration nobody wrote. Only the close completes the change, for a new file and for
    // one rewritten in place.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("old.yaml"), "a: 1\n").unwrap();
    let c = Counter::new(&dir);
    let writes = c._watcher.writes();
    for path in [dir.join("new.yaml"), dir.join("old.yaml")] {
        let before = c.settle();
        let mut file = std::fs::File::create(&path).unwrap();
        for i in 0..6 {
            writeln!(file, "k{i}: v").unwrap();
            std::thread::sleep(WINDOW / 2);
        }
        assert_eq!(c.settle(), before, "{} reloaded while open", path.display());
        assert_eq!(writes.open_for_writing(), vec![path.clone()]);
        drop(file);
        let n = c.changed_since(before, "the close");
        assert_eq!(c.settle(), n, "one close, one reload");
        assert!(writes.open_for_writing().is_empty());
    }
}

#[test]
fn files_meshd_does_not_read_are_not_counted_as_open() {
    // vim keeps its swap file open and writes it while someone types: that must not hold up
    // reloads of the directory.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    let c = Counter::new(&dir);
    let writes = c._watcher.writes();
    let _ = c.settle();
    let mut swap = std::fs::File::create(dir.join(".a.yaml.swp")).unwrap();
    swap.write_all(b"swap").unwrap();
    let before = writes.changes();
    swap.write_all(b"more").unwrap();
    std::thread::sleep(WINDOW);
    assert!(writes.open_for_writing().is_empty());
    assert_eq!(
        writes.changes(),
        before,
        "a write to a file meshd does not read"
    );
}

#[test]
fn a_symlink_or_fifo_is_not_open_for_writing() {
    // Created without an open for writing, they have no close to wait for.
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("conf.d");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(root.path().join("target.yaml"), "a: 1\n").unwrap();
    let c = Counter::new(&dir);
    let writes = c._watcher.writes();
    let n = c.settle();
    std::os::unix::fs::symlink(root.path().join("target.yaml"), dir.join("link.yaml")).unwrap();
    let n = c.changed_since(n, "a new symlink");
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("pipe.yaml"))
        .status()
        .unwrap();
    assert!(status.success());
    c.changed_since(n, "a new FIFO");
    assert!(writes.open_for_writing().is_empty());
}
