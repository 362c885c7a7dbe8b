//! Reloads that never load half a file: real meshd processes (two per test, on a loopback range
//! of its own, `meshd_integration::pair`), real writers
//! (slow chunks through one descriptor and through many, `cp -r`), traffic checked all along.
//! A prefix of a DENY list is valid YAML that denies less; a tree caught mid-copy is a valid
//! smaller configuration: neither may ever be enforced, and the generation that would have
//! enforced it never appears. Also: FIFOs and devices named `*.yaml` are refused without
//! hanging the reload (or SIGTERM), and a rejected reload reaches systemd as one bounded line.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meshd_integration::pair::{ALLOW, Pair};
use meshd_integration::{Meshd, NotifySocket, eventually};

/// A DENY of `count` principals `<prefix>N` and then web, one per line: every prefix of it
/// that reaches the list is valid YAML and denies less than the whole.
fn deny_list(prefix: &str, count: usize) -> String {
    let mut text = String::from(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from:
    - source:
        principals:
",
    );
    for i in 0..count {
        text.push_str(&format!("        - cluster.local/ns/shop/sa/{prefix}{i}\n"));
    }
    text.push_str("        - cluster.local/ns/shop/sa/web\n");
    text
}

/// Polls `check` every 100 ms for up to `limit`; panics with `what` if it never holds.
fn eventually_within<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(100));
    }
}

/// Checks traffic and B's generation over and over until stopped: what a write in progress
/// lets through, and every generation that was ever in force.
struct Watchdog {
    stop: Arc<AtomicBool>,
    allowed: Arc<Mutex<usize>>,
    generations: Arc<Mutex<BTreeSet<u64>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(pair: &Pair) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let allowed = Arc::new(Mutex::new(0));
        let generations = Arc::new(Mutex::new(BTreeSet::new()));
        let thread = {
            let (pair, stop) = (pair.clone(), stop.clone());
            let (allowed, generations) = (allowed.clone(), generations.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    if pair.allowed() {
                        *allowed.lock().unwrap() += 1;
                    }
                    generations.lock().unwrap().insert(pair.generation());
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Watchdog {
            stop,
            allowed,
            generations,
            thread: Some(thread),
        }
    }

    /// Stops; (connections allowed, generations seen).
    fn finish(mut self) -> (usize, BTreeSet<u64>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        let allowed = *self.allowed.lock().unwrap();
        let generations = self.generations.lock().unwrap().clone();
        (allowed, generations)
    }
}

/// `text` in 100-byte chunks `pause` apart, through one descriptor (`reopen` false: an editor
/// or a program writing as it goes) or opening, appending and closing for each chunk (`reopen`
/// true: a shell loop of `>>`, each close looking like a finished file). `halfway` runs once,
/// midway.
fn write_slowly(path: &Path, text: &str, reopen: bool, pause: Duration, halfway: impl FnOnce()) {
    let chunks: Vec<&[u8]> = text.as_bytes().chunks(100).collect();
    let mut halfway = Some(halfway);
    let mut file = Some(std::fs::File::create(path).unwrap());
    for (i, chunk) in chunks.iter().enumerate() {
        let open = match file.as_mut() {
            Some(open) => open,
            None => file.insert(std::fs::OpenOptions::new().append(true).open(path).unwrap()),
        };
        open.write_all(chunk).unwrap();
        if reopen {
            file = None; // closed
        }
        if i == chunks.len() / 2
            && let Some(f) = halfway.take()
        {
            f();
        }
        thread::sleep(pause);
    }
}

#[test]
fn a_policy_written_in_slow_chunks_is_never_enforced_half_written() {
    let pair = Pair::new();
    let policy = pair.policies().join("deny.yaml");
    std::fs::write(&policy, deny_list("old", 40)).unwrap();
    let (_a, b) = pair.start();
    assert!(!pair.allowed(), "the first DENY holds");
    let first = pair.generation();

    // Rewritten in place: through one descriptor with an operator's SIGHUP halfway (the file
    // is open for writing, so even the SIGHUP waits for its close); by a `>>` loop (every
    // chunk closed: the quiet window sees the size still moving); through one descriptor with
    // pauses longer than a debounce window (only the open-for-writing mark holds it back).
    let fast = Duration::from_millis(50);
    let slow = Duration::from_millis(250);
    let steps = [
        ("one descriptor and SIGHUP", false, fast, 40),
        ("a >> loop", true, fast, 40),
        ("one descriptor, long pauses", false, slow, 12),
    ];
    // Each step is one reload: the generation before step i is first + i.
    for (g, (step, reopen, pause, principals)) in (first..).zip(steps) {
        let watchdog = Watchdog::start(&pair);
        let text = deny_list(&format!("new{g}-"), principals);
        write_slowly(&policy, &text, reopen, pause, || {
            if step == "one descriptor and SIGHUP" {
                b.signal("HUP");
            }
        });
        let next = pair.wait_past(g, step);
        // Whatever else the events would start is given time to show.
        thread::sleep(Duration::from_secs(2));
        let (allowed, generations) = watchdog.finish();
        assert_eq!(
            allowed, 0,
            "{step}: a connection the file denies was let through"
        );
        assert_eq!(next, g + 1, "{step}: one reload");
        assert_eq!(
            pair.generation(),
            g + 1,
            "{step}: one reload, of the whole file"
        );
        assert_eq!(
            generations,
            BTreeSet::from([g, g + 1]),
            "{step}: an intermediate generation was in force"
        );
        assert!(!pair.allowed());
        assert_eq!(pair.last_reload_error(), None);
    }
}

/// Makes a FIFO (the `mkfifo` tool, so the test needs no unsafe code).
fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

#[test]
fn a_tree_copied_by_cp_r_under_traffic_is_loaded_once_complete() {
    // Thirty harmless policies and a DENY for web. The DENY's source is a FIFO that
    // `cp --copy-contents` reads: the test decides when its bytes arrive, as a slow disk or
    // network filesystem would, while the other files are already copied and closed. The
    // target directory exists beforehand, so its watch is armed before cp writes into it.
    let pair = Pair::new();
    let source = pair.ws.path().join("release");
    std::fs::create_dir(&source).unwrap();
    for i in 0..30 {
        std::fs::write(
            source.join(format!("p{i:02}.yaml")),
            ALLOW
                .replace("db-allow-web", &format!("db-allow-{i}"))
                .replace("sa/web", &format!("sa/other{i}")),
        )
        .unwrap();
    }
    mkfifo(&source.join("deny.yaml"));
    let target = pair.policies().join("release");
    std::fs::create_dir(&target).unwrap();
    let (_a, b) = pair.start();
    assert!(pair.allowed());
    let g = pair.generation();

    let watchdog = Watchdog::start(&pair);
    let fifo = source.join("deny.yaml");
    let feeder = thread::spawn(move || {
        // Blocks until cp opens the FIFO; cp then creates the target file and waits for bytes.
        let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        thread::sleep(Duration::from_secs(1));
        writer.write_all(deny_list("x", 3).as_bytes()).unwrap();
    });
    let copied = Command::new("cp")
        .args(["-r", "--copy-contents"])
        .arg(source.join("."))
        .arg(&target)
        .status()
        .unwrap();
    assert!(copied.success());
    feeder.join().unwrap();
    let next = pair.wait_past(g, "the copy");
    thread::sleep(Duration::from_secs(2));
    let (_, generations) = watchdog.finish();
    assert_eq!(next, g + 1, "one reload");
    assert_eq!(pair.generation(), g + 1, "one reload, of the whole tree");
    assert_eq!(
        generations,
        BTreeSet::from([g, g + 1]),
        "a partial tree was in force"
    );
    assert!(!pair.allowed(), "the copied DENY is in force");
    let log = b.stderr();
    let loaded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("configuration loaded:"))
        .collect();
    assert_eq!(loaded.len(), 2, "the start and one reload: {loaded:#?}");
    assert!(
        loaded[1].contains("32 AuthorizationPolicies"),
        "the whole tree: {loaded:#?}"
    );
}

#[test]
fn a_fifo_or_a_device_named_yaml_is_refused_and_sigterm_still_stops() {
    let pair = Pair::new();
    let (_a, mut b) = pair.start();
    assert!(pair.allowed());
    let dir = pair.policies();

    // A FIFO: opening it would block until a writer came, and the reload with it.
    mkfifo(&dir.join("pipe.yaml"));
    let error = eventually("the FIFO's rejection", || pair.last_reload_error());
    assert!(
        error.contains(&format!(
            "{}: a FIFO, not a regular file",
            dir.join("pipe.yaml").display()
        )),
        "{error}"
    );
    assert!(pair.allowed(), "the last good configuration stays");
    std::fs::remove_file(dir.join("pipe.yaml")).unwrap();
    eventually("the FIFO's removal", || {
        pair.last_reload_error().is_none().then_some(())
    });

    // /dev/zero behind a symlink: it reads forever.
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let error = eventually("the device's rejection", || pair.last_reload_error());
    assert!(
        error.contains(&format!(
            "{}: a character device, not a regular file",
            dir.join("zero.yaml").display()
        )),
        "{error}"
    );

    // meshd.yaml itself replaced by a FIFO: a SIGHUP re-reads it, and must not block.
    let config = pair.mesh.config("b");
    let fifo = pair.ws.path().join("b.fifo");
    mkfifo(&fifo);
    std::fs::rename(&fifo, &config).unwrap();
    b.signal("HUP");
    b.wait_for_log("daemon configuration file:");
    b.wait_for_log("a FIFO, not a regular file: meshd reads only regular files");
    assert!(pair.allowed(), "still serving");

    b.signal("TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(10)),
        Some(0),
        "SIGTERM did not stop meshd"
    );
}

#[test]
fn a_file_held_open_is_not_loaded_the_reload_is_postponed_and_sigterm_cuts_the_wait() {
    // A complete, valid DENY, but its writer has not closed it: as far as meshd can tell more
    // may come. It is not loaded; after the bound (10 s) the reload is postponed with the
    // reason shown, and the close loads it.
    let pair = Pair::new();
    let (_a, mut b) = pair.start();
    assert!(pair.allowed());
    let g = pair.generation();
    let held = pair.policies().join("held.yaml");
    let mut file = std::fs::File::create(&held).unwrap();
    file.write_all(deny_list("x", 2).as_bytes()).unwrap();
    b.signal("HUP");
    let started = Instant::now();
    let error = loop {
        if let Some(error) = pair.last_reload_error() {
            break error;
        }
        assert!(pair.allowed(), "a file still open for writing was loaded");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never postponed"
        );
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        error.starts_with(
            "reload postponed, the configuration directory is still being written after 10"
        ),
        "{error}"
    );
    assert!(
        error.ends_with(&format!("s: {}", held.display())),
        "{error}"
    );
    assert_eq!(pair.generation(), g);
    assert!(pair.allowed(), "the last good configuration stays");
    drop(file);
    pair.wait_past(g, "the close");
    assert!(!pair.allowed(), "the closed DENY is in force");
    assert_eq!(pair.last_reload_error(), None);

    // Held again, postponed again; the held file deleted: the tree is what was last loaded,
    // so nothing loads and the postponement is no longer reported.
    let again = pair.policies().join("again.yaml");
    let mut file = std::fs::File::create(&again).unwrap();
    file.write_all(b"# more to come\n").unwrap();
    b.signal("HUP");
    let error = eventually_within(Duration::from_secs(30), "the second postponement", || {
        pair.last_reload_error()
    });
    assert!(
        error.ends_with(&format!("s: {}", again.display())),
        "{error}"
    );
    std::fs::remove_file(&again).unwrap();
    eventually("the postponement cleared", || {
        pair.last_reload_error().is_none().then_some(())
    });
    assert_eq!(pair.generation(), g + 1, "nothing new was loaded");
    drop(file);

    // A SIGHUP waiting for a held file is cut short by SIGTERM: meshd stops well before the
    // 10 s bound the wait would otherwise run to.
    let mut file = std::fs::File::create(pair.policies().join("held2.yaml")).unwrap();
    file.write_all(b"# more to come\n").unwrap();
    b.signal("HUP");
    thread::sleep(Duration::from_secs(1));
    b.signal("TERM");
    assert_eq!(
        b.wait_exit(Duration::from_secs(5)),
        Some(0),
        "SIGTERM waited for the reload"
    );
}

#[test]
fn a_rejected_reload_reaches_sd_notify_status_as_one_bounded_line() {
    let pair = Pair::new();
    let mut notify = NotifySocket::new(pair.ws.path());
    let mut command = pair.mesh.command("b");
    command.env("NOTIFY_SOCKET", &notify.path);
    let b = Meshd::spawn(command);
    notify.wait_for("READY=1");

    // Twenty bad files (a line of error each) and one whose name carries newlines and what
    // would be notify assignments of their own.
    let staging = pair.ws.path().join("staging");
    std::fs::create_dir(&staging).unwrap();
    let bad = "kind: AuthorizationPolicy\nspec: {action: NOPE}\n";
    std::fs::write(staging.join("a\nMAINPID=1\nSTATUS=forged\n.yaml"), bad).unwrap();
    for i in 0..20 {
        std::fs::write(staging.join(format!("bad{i:02}.yaml")), bad).unwrap();
    }
    std::fs::rename(&staging, pair.policies().join("bad")).unwrap();
    // READY=1 comes before the watcher is armed: SIGHUP makes the reload certain.
    b.signal("HUP");
    let message = notify.wait_for("last reload rejected");
    let lines: Vec<&str> = message.lines().collect();
    assert_eq!(lines.len(), 2, "{message:?}");
    assert_eq!(lines[0], "READY=1", "{message:?}");
    let status = lines[1].strip_prefix("STATUS=").expect("STATUS");
    assert!(!status.chars().any(char::is_control), "{status:?}");
    assert!(
        status.chars().count() <= meshd_daemon::systemd::MAX_STATUS_CHARS,
        "{} characters",
        status.chars().count()
    );
    assert!(
        status.starts_with(
            "serving configuration generation 1; last reload rejected: configuration rejected with "
        ),
        "{status}"
    );
    assert!(
        status.contains("/bad/a MAINPID=1 STATUS=forged .yaml"),
        "the name, on the STATUS line: {status}"
    );
    assert!(status.ends_with('…'), "{status}");
}
