//! meshd under systemd, without systemd: what the unit (config/meshd.service) and the journal
//! see. Real meshd processes; journald is a Unix datagram socket this test binds, mounted over
//! /run/systemd in a mount namespace of meshd's own (`unshare`, as root), so the records meshd
//! sends are read exactly as journald would receive them.

// Test code: a panic is how a failure is reported.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use meshd_integration::pair::Pair;
use meshd_integration::{Meshd, eventually, meshd_bin};

const DENY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: db-deny-web, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/web]}}]
";

/// One journal record: its fields (a field sent twice keeps the last value).
type Record = BTreeMap<String, String>;

/// A journald stand-in: `<dir>/journal/socket`, `<dir>` mounted as meshd's /run/systemd. A
/// thread drains the socket as journald does: a full queue would block meshd's logging.
struct Journal {
    records: Arc<Mutex<Vec<Record>>>,
    /// Datagrams received, the empty probe meshd sends at start included.
    datagrams: Arc<AtomicUsize>,
}

impl Journal {
    fn bind(dir: &Path) -> Journal {
        std::fs::create_dir_all(dir.join("journal")).unwrap();
        let socket = UnixDatagram::bind(dir.join("journal/socket")).unwrap();
        let records = Arc::new(Mutex::new(Vec::new()));
        let datagrams = Arc::new(AtomicUsize::new(0));
        let (sink, count) = (Arc::clone(&records), Arc::clone(&datagrams));
        thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while let Ok(n) = socket.recv(&mut buf) {
                count.fetch_add(1, Ordering::SeqCst);
                // The probe is empty: journald discards it, and so do we.
                if n > 0 {
                    sink.lock().unwrap().push(parse_native(&buf[..n]));
                }
            }
        });
        Journal { records, datagrams }
    }

    /// Waits up to 15 s for a record for which `pred` holds, and returns it.
    fn wait_for(&self, what: &str, pred: impl Fn(&Record) -> bool) -> Record {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(r) = self.records.lock().unwrap().iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no journal record {what} in {:#?}",
                self.records.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// journald's native protocol (systemd.io/JOURNAL_NATIVE_PROTOCOL): `KEY=value\n`, or, for a
/// value that may hold a newline, `KEY\n` then its length (64-bit little endian), the value, `\n`.
fn parse_native(mut data: &[u8]) -> Record {
    let mut record = Record::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').unwrap();
        let line = &data[..end];
        data = &data[end + 1..];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let key = String::from_utf8(line[..eq].to_vec()).unwrap();
            record.insert(key, String::from_utf8_lossy(&line[eq + 1..]).into_owned());
        } else {
            let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
            let value = String::from_utf8_lossy(&data[8..8 + len]).into_owned();
            assert_eq!(data[8 + len], b'\n', "a binary field ends with a newline");
            data = &data[8 + len + 1..];
            record.insert(String::from_utf8(line.to_vec()).unwrap(), value);
        }
    }
    record
}

/// `journalctl -o verbose`-like: the priority, identifier and message, then the other fields.
fn show(r: &Record) -> String {
    let mut out = format!(
        "PRIORITY={} {}: {}\n",
        r["PRIORITY"], r["SYSLOG_IDENTIFIER"], r["MESSAGE"]
    );
    for (k, v) in r {
        if !matches!(k.as_str(), "PRIORITY" | "SYSLOG_IDENTIFIER" | "MESSAGE") {
            out.push_str(&format!("    {k}={v}\n"));
        }
    }
    out
}

/// `meshd run` for node `node` of `pair`, in a mount namespace whose /run/systemd is `run`
/// (holding the test's journal socket), stderr to `stderr` and `JOURNAL_STREAM` set to
/// `journal_stream`; `env` is added to its environment.
fn spawn_under_journal(
    pair: &Pair,
    node: &str,
    run: &Path,
    stderr: &Path,
    journal_stream: &str,
    env: &[(&str, &str)],
) -> Meshd {
    assert!(
        Path::new("/run/systemd").is_dir(),
        "this test mounts over /run/systemd, which this machine lacks"
    );
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$0" /run/systemd && exec env "$@" 2>"$STDERR""#)
        .arg(run)
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(meshd_bin())
        .arg("run")
        .arg("--config")
        .arg(pair.mesh.config(node))
        .env("STDERR", stderr)
        .env("JOURNAL_STREAM", journal_stream);
    Meshd::spawn(command)
}

/// `device:inode` of a file, as systemd writes `JOURNAL_STREAM`.
fn device_inode(path: &Path) -> String {
    let meta = std::fs::metadata(path).unwrap();
    format!("{}:{}", meta.dev(), meta.ino())
}

// With stderr the journal stream, every record goes over the native protocol: its priority
// (error 3, warning 4, info 6, debug 7), no timestamp of meshd's own, the target and the access
// log's connection fields as journal fields; nothing is written to stderr.
#[test]
fn journal_records_carry_priority_and_fields() {
    let pair = Pair::new();
    let run = pair.ws.path().join("run");
    let journal = Journal::bind(&run);
    let stderr = pair.ws.write("b.stderr", "");
    let env = [
        ("RUST_LOG", "info,meshd_daemon=debug"),
        // Not a key: meshd warns and runs (settings.rs).
        ("MESHD_LOG", "debug"),
    ];
    let _b = spawn_under_journal(&pair, "b", &run, &stderr, &device_inode(&stderr), &env);
    let _a = pair.mesh.start("a");
    let g = pair.generation();
    assert!(pair.allowed());
    std::fs::write(pair.policies().join("deny.yaml"), DENY).unwrap();
    pair.expect(g, false, "a DENY policy");
    std::fs::write(pair.policies().join("broken.yaml"), "kind: [unclosed\n").unwrap();

    let debug = journal.wait_for("at debug", |r| r["PRIORITY"] == "7");
    let warning = journal.wait_for("warning of MESHD_LOG", |r| {
        r["PRIORITY"] == "4" && r["MESSAGE"].contains("MESHD_LOG")
    });
    let allowed = journal.wait_for("of an allowed connection", |r| {
        r.get("TARGET").is_some_and(|t| t == "access") && r["DECISION"] == "allow"
    });
    let denied = journal.wait_for("of a denied connection", |r| {
        r.get("TARGET").is_some_and(|t| t == "access") && r["DECISION"] == "deny"
    });
    let error = journal.wait_for("of the rejected reload", |r| {
        r["PRIORITY"] == "3" && r["MESSAGE"].contains("reload rejected")
    });
    for r in [&debug, &warning, &allowed, &denied, &error] {
        eprintln!("{}", show(r));
        assert_eq!(r["SYSLOG_IDENTIFIER"], "meshd");
        assert!(
            r.contains_key("TARGET") && r.contains_key("CODE_FILE"),
            "{r:#?}"
        );
        // journald stamps each record; a time of meshd's own in the message would be a second.
        assert!(!r["MESSAGE"].starts_with("20"), "{r:#?}");
    }
    assert_eq!(allowed["PRIORITY"], "6");
    assert!(allowed["POLICY"].contains("db-allow-web"), "{allowed:#?}");
    assert_eq!(denied["PRIORITY"], "6");
    assert!(denied["POLICY"].contains("db-deny-web"), "{denied:#?}");
    for field in [
        "SRC_ADDR",
        "SRC_IDENTITY",
        "DST_ADDR",
        "DST_WORKLOAD",
        "BYTES_SENT",
    ] {
        assert!(allowed.contains_key(field), "no {field} in {allowed:#?}");
    }
    assert!(allowed["SRC_IDENTITY"].ends_with("cluster.local/ns/shop/sa/web"));
    let text = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        !text.contains("INFO") && !text.contains("connection"),
        "logs went to stderr too:\n{text}"
    );
}

// `JOURNAL_STREAM` names a stream that is not meshd's stderr (a meshd whose stderr a script
// redirected, inheriting the variable): text lines on stderr, as without systemd, and nothing
// to the journal socket.
#[test]
fn a_journal_stream_that_is_not_stderr_logs_text() {
    let pair = Pair::new();
    let run = pair.ws.path().join("run");
    let journal = Journal::bind(&run);
    let stderr = pair.ws.write("b.stderr", "");
    let other = pair.ws.write("other", "");
    let _b = spawn_under_journal(&pair, "b", &run, &stderr, &device_inode(&other), &[]);
    let _a = pair.mesh.start("a");
    assert!(pair.allowed());
    let text = eventually("an access log line on stderr", || {
        let text = std::fs::read_to_string(&stderr).unwrap();
        text.contains("connection complete").then_some(text)
    });
    assert!(text.contains(" INFO access: connection complete"), "{text}");
    assert_eq!(
        journal.datagrams.load(Ordering::SeqCst),
        0,
        "meshd sent to the journal"
    );
}

/// The unit's `ExecReload=` command lines, in order, as systemd runs them (no shell; these
/// lines quote nothing), with the packaged paths made this test's: the binary this suite
/// built, node `node`'s meshd.yaml for /etc/meshd/meshd.yaml, `pid` for `$MAINPID`.
fn reload_commands(pair: &Pair, node: &str, pid: u32) -> Vec<Vec<String>> {
    let unit = std::fs::read_to_string(repo().join("config/meshd.service")).unwrap();
    let commands: Vec<Vec<String>> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ExecReload="))
        .map(|l| {
            l.split_whitespace()
                .map(|word| match word {
                    "/usr/bin/meshd" => meshd_bin().display().to_string(),
                    "/etc/meshd/meshd.yaml" => pair.mesh.config(node).display().to_string(),
                    "$MAINPID" => pid.to_string(),
                    _ => word.to_string(),
                })
                .collect()
        })
        .collect();
    assert!(!commands.is_empty(), "the unit has no ExecReload=");
    commands
}

/// Runs the reload commands as systemd does: one after the other, stopping at the first that
/// fails. The reload's exit status (that of the last command run) and everything they printed.
fn systemctl_reload(commands: &[Vec<String>]) -> (i32, String) {
    let mut printed = String::new();
    for command in commands {
        let out = Command::new(&command[0])
            .args(&command[1..])
            .output()
            .unwrap();
        printed.push_str(&String::from_utf8_lossy(&out.stdout));
        printed.push_str(&String::from_utf8_lossy(&out.stderr));
        let status = out.status.code().unwrap();
        if status != 0 {
            return (status, printed);
        }
    }
    (0, printed)
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// `systemctl reload meshd` with the unit's commands: on a configuration that loads it succeeds
// and meshd reloads (SIGHUP reached the running process); on a broken file it fails, prints
// the problem with its file and line, sends no signal, and meshd keeps serving.
#[test]
fn systemctl_reload_validates_then_signals_and_fails_visibly() {
    let pair = Pair::new();
    let (_a, b) = pair.start();
    let commands = reload_commands(&pair, "b", b.pid());

    let g = pair.generation();
    let (status, printed) = systemctl_reload(&commands);
    assert_eq!(status, 0, "a good configuration: {printed}");
    assert!(printed.contains(": OK: "), "{printed}");
    pair.wait_past(g, "systemctl reload");
    b.wait_for_log("trigger=\"SIGHUP\"");
    assert!(pair.allowed());

    let broken = pair.policies().join("broken.yaml");
    std::fs::write(&broken, "kind: [unclosed\n").unwrap();
    // meshd sees the file change itself and rejects it; then the operator's reload.
    b.wait_for_log("trigger=\"file change\"");
    let g = pair.generation();
    let (status, printed) = systemctl_reload(&commands);
    eprintln!("systemctl reload meshd (exit {status}):\n{printed}");
    assert_ne!(status, 0, "a broken file fails the reload: {printed}");
    assert!(
        printed.contains(&format!("{}:1:7: YAML syntax error", broken.display())),
        "{printed}"
    );
    assert!(printed.contains("INVALID"), "{printed}");
    // No signal was sent: no SIGHUP reload after the first, and the configuration in force is
    // the one before the broken file.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.stderr().matches("trigger=\"SIGHUP\"").count(), 1);
    assert_eq!(pair.generation(), g);
    assert!(pair.allowed(), "meshd kept serving");
}
