//! Files that are not plain configuration text: FIFOs, devices and sockets named `*.yaml` are
//! refused without being opened (a FIFO's open blocks, `/dev/zero` reads forever), symlinks to
//! regular files still load, and a YAML alias bomb by bytes is refused; each refusal names the
//! file. Every load runs on a thread with a deadline, so a hang is a failure, not a stuck suite.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use meshd_manifests::{LoadOptions, Snapshot, load_dir, parse_file};
use tempfile::TempDir;

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web, namespace: foo}
spec:
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/a/sa/b]
";

/// Loads `dir` on another thread; a load that does not return within 10 s fails the test.
fn load(dir: &Path) -> Result<Snapshot, Vec<String>> {
    let dir = dir.to_path_buf();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = load_dir(&dir, &LoadOptions::default())
            .map_err(|e| e.problems.iter().map(ToString::to_string).collect());
        let _ = tx.send(result);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the load hung")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

fn with_policy() -> (TempDir, PathBuf) {
    let dir = TempDir::new().unwrap();
    fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let path = dir.path().to_path_buf();
    (dir, path)
}

#[test]
fn a_fifo_named_yaml_is_refused_without_blocking() {
    let (_tmp, dir) = with_policy();
    mkfifo(&dir.join("pipe.yaml"));
    let problems = load(&dir).expect_err("a FIFO is refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(
        problems[0],
        format!(
            "{}: a FIFO, not a regular file: meshd reads only regular files (it is not opened)",
            dir.join("pipe.yaml").display()
        )
    );
}

#[test]
fn a_symlink_to_dev_zero_named_yaml_is_refused() {
    let (_tmp, dir) = with_policy();
    std::os::unix::fs::symlink("/dev/zero", dir.join("zero.yaml")).unwrap();
    let problems = load(&dir).expect_err("a device is refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with(&format!(
            "{}: a character device, not a regular file",
            dir.join("zero.yaml").display()
        )),
        "{problems:?}"
    );
}

#[test]
fn a_socket_named_yaml_is_refused() {
    let (_tmp, dir) = with_policy();
    let _listener = std::os::unix::net::UnixListener::bind(dir.join("sock.yaml")).unwrap();
    let problems = load(&dir).expect_err("a socket is refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("sock.yaml: a socket, not a regular file"),
        "{problems:?}"
    );
}

#[test]
fn special_files_with_other_names_are_ignored_and_symlinks_to_files_still_load() {
    // Only names meshd reads count: a FIFO called `notes` is none of its business.
    let (_tmp, dir) = with_policy();
    mkfifo(&dir.join("notes"));
    fs::create_dir(dir.join("..v1")).unwrap();
    fs::write(
        dir.join("..v1/linked.yaml"),
        POLICY.replace("name: web", "name: db"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v1/linked.yaml", dir.join("linked.yaml")).unwrap();
    let snapshot = load(&dir).expect("loads");
    assert_eq!(snapshot.authorization_policies.len(), 2);
}

#[test]
fn the_daemon_configuration_file_as_a_fifo_is_refused_without_blocking() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("meshd.yaml");
    mkfifo(&path);
    let (tx, rx) = mpsc::channel();
    let thread_path = path.clone();
    std::thread::spawn(move || {
        let parsed = parse_file::<serde::de::IgnoredAny>(&thread_path);
        let _ = tx.send(parsed.map_err(|p| p.to_string()));
    });
    let error = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("parsing a FIFO hung")
        .expect_err("refused");
    assert!(
        error.starts_with(&format!("{}: a FIFO, not a regular file", path.display())),
        "{error}"
    );
}

#[test]
fn an_alias_bomb_by_bytes_is_refused_naming_the_file() {
    // Few nodes, many bytes: a 4 MiB scalar repeated 40 times by alias is 160 MiB of text,
    // which the node bound (4 000 000) lets through.
    let dir = TempDir::new().unwrap();
    let mut text = format!("a: &big \"{}\"\nb:\n", "x".repeat(4 << 20));
    for _ in 0..40 {
        text.push_str("- *big\n");
    }
    fs::write(dir.path().join("bomb.yaml"), text).unwrap();
    let problems = load(dir.path()).expect_err("refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    let file = format!("{}:", dir.path().join("bomb.yaml").display());
    let message = format!(
        ": YAML syntax error: more than {} bytes of text (aliases expanded)",
        meshd_manifests::yaml::MAX_EXPANDED_BYTES
    );
    assert!(
        problems[0].starts_with(&file) && problems[0].ends_with(&message),
        "{problems:?}"
    );
}
