//! Helpers for the end-to-end tests under `tests/`: the meshd binary as a child process, a
//! workspace with a development CA, echo servers, HTTP probes; and the fixture every test
//! builds on: [`mesh::Mesh`] (N nodes, their workloads, policies and listeners as typed values
//! from [`resources`]) on a range from [`loopback::Loopback`], the one address allocator;
//! [`pair::Pair`] (two nodes for reload tests), [`machines`] (three machines as network
//! namespaces), [`netns`] (what a test does inside one), [`certs`] (leaves meshd must refuse).
//!
//! The tests start real `meshd run` processes; [`meshd_bin`] builds the binary (once per test
//! process, with cargo) before the first one starts, so `cargo test -p meshd-integration
//! --test two_nodes` works from a clean target directory (docs/testing.md).

pub mod certs;
pub mod fleet;
pub mod istiod;
pub mod loopback;
pub mod machines;
pub mod mesh;
pub mod netns;
pub mod pair;
pub mod resources;
pub mod spire;
pub mod spire_build;
pub mod spire_watch;
pub mod traffic;
pub mod vm_bundle;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The `meshd` binary of this build: `target/<profile>/meshd`, next to the test executable's
/// `deps/` directory, built once per test process by [`build_meshd`] so it is never missing
/// or stale (`cargo test -p meshd-integration` alone builds no binary of another package).
/// `MESHD_BIN` names another binary instead (e.g. an installed one).
pub fn meshd_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("MESHD_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_meshd(),
    })
    .clone()
}

/// The `meshd` binary of the test executable's profile and target directory, built with
/// `cargo build -p meshd --bin meshd` when it is missing or older than a source file it is
/// built from. After `cargo test --workspace` (which builds it, with the workspace's unified
/// features) it is current and no cargo runs; a nested `cargo build` would select meshd's
/// features alone and rebuild. Under `cargo test` a nested cargo does not deadlock: cargo
/// releases its build-directory lock before it runs test executables, and concurrent test
/// processes wait for each other's build on that lock.
pub fn build_meshd() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        // Cargo's directory for the `dev` and `test` profiles.
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let bin = profile_dir.join("meshd");
    let workspace = workspace_root();
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let sources = meshd_sources(&workspace)
        .iter()
        .filter_map(|p| newest_mtime(p))
        .max();
    if built.is_some_and(|built| sources.is_none_or(|newest| newest <= built)) {
        return bin;
    }
    // `cargo test` passes its own path in CARGO; a test executable run by hand finds it on PATH.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = workspace.join("Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "meshd",
            "--bin",
            "meshd",
            "--profile",
            profile,
        ])
        // The binary the tests expect: with HBONE over QUIC when they test it.
        .args(if cfg!(feature = "quic") {
            &["--features", "quic"][..]
        } else {
            &[][..]
        })
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo build -p meshd");
    assert!(
        out.status.success(),
        "cargo build -p meshd failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bin.exists(),
        "{} is missing after cargo build",
        bin.display()
    );
    bin
}

/// The workspace this test runs in: the nearest directory above the running package's
/// (`CARGO_MANIFEST_DIR`, which cargo sets when it runs a test; else this crate's at compile
/// time) whose Cargo.toml declares `[workspace]`. The run-time value comes first: a test
/// executable cargo found fresh in a target directory shared with another checkout still has
/// the other checkout's compile-time path.
pub(crate) fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    start
        .ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map_or_else(|| start.join(".."), Path::to_path_buf)
}

/// `<target>/<name>/`: where a Go program the suite builds goes, beside the test executable's
/// profile directory, so it shares the Cargo target directory (and `cargo clean` removes it).
pub(crate) fn go_out_dir(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.ancestors()
        .nth(3)
        .expect("the test executable lives in target/<profile>/deps")
        .join(name)
}

/// Whether `bin` exists and is newer than each file of the Go module in `source` (its `.go`
/// files, go.mod and go.sum).
pub(crate) fn go_build_is_fresh(bin: &Path, source: &Path) -> bool {
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return false;
    };
    let Ok(entries) = std::fs::read_dir(source) else {
        return false;
    };
    entries.filter_map(Result::ok).all(|entry| {
        let path = entry.path();
        let relevant = path.extension().is_some_and(|e| e == "go")
            || path
                .file_name()
                .is_some_and(|n| n == "go.mod" || n == "go.sum");
        !relevant
            || std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|m| m <= built)
    })
}

/// What the meshd binary is built from: the workspace manifest and lock file, and each of
/// `bin/meshd` and `crates/*`: its manifest, build script and `src/` (not its tests or benches,
/// which cargo does not build into the binary).
fn meshd_sources(workspace: &Path) -> Vec<PathBuf> {
    let crates = std::fs::read_dir(workspace.join("crates"))
        .map(|dir| dir.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_else(|_| Vec::new());
    let mut sources = vec![workspace.join("Cargo.toml"), workspace.join("Cargo.lock")];
    for package in crates.into_iter().chain([workspace.join("bin/meshd")]) {
        for part in ["Cargo.toml", "build.rs", "src"] {
            sources.push(package.join(part));
        }
    }
    sources
}

/// The newest modification time of `path` and, for a directory, of every file under it
/// (`target/` and hidden directories left out).
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let own = meta.modified().ok();
    if !meta.is_dir() {
        return own;
    }
    let children = std::fs::read_dir(path)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            !name.starts_with('.') && name != "target"
        });
    children
        .filter_map(|e| newest_mtime(&e.path()))
        .chain(own)
        .max()
}

/// Runs `meshd` with arguments and returns its stdout, failing the test on a non-zero exit.
pub fn meshd(args: &[&str]) -> String {
    let out = Command::new(meshd_bin())
        .args(args)
        .output()
        .expect("run meshd");
    assert!(out.status.success(), "meshd {args:?} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `meshd run` child process, killed on drop; its stderr is collected for assertions.
pub struct Meshd {
    child: Child,
    stderr: Arc<Mutex<String>>,
    ready_line: Arc<Mutex<Option<String>>>,
    /// The `meshd ready ...` line (empty until it is printed, for [`Meshd::spawn_starting`]).
    pub ready: String,
}

impl Meshd {
    /// Starts `command` (a `meshd run` invocation) and waits for its ready line.
    pub fn spawn(command: Command) -> Meshd {
        let mut meshd = Meshd::spawn_starting(command);
        if !meshd.wait_ready(Duration::from_secs(30)) {
            let _ = meshd.child.kill();
            let _ = meshd.child.wait();
            panic!("meshd did not become ready; stderr:\n{}", meshd.stderr());
        }
        meshd
    }

    /// Starts `command` without waiting for it to be ready (a meshd that waits at start for
    /// its certificate or a port).
    pub fn spawn_starting(mut command: Command) -> Meshd {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshd");
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("stderr");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("lock")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let ready_line = Arc::new(Mutex::new(None));
        let seen = ready_line.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("meshd ready") {
                    *seen.lock().expect("lock") = Some(line);
                }
            }
        });
        Meshd {
            child,
            stderr,
            ready_line,
            ready: String::new(),
        }
    }

    /// Waits up to `timeout` for the ready line (kept in `ready`); whether it came.
    pub fn wait_ready(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.ready_line.lock().expect("lock").clone() {
                self.ready = line;
                return true;
            }
            // A meshd that exited will not print it (its last lines are read by now).
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                thread::sleep(Duration::from_millis(100));
                let line = self.ready_line.lock().expect("lock").clone();
                self.ready = line.unwrap_or_default();
                return !self.ready.is_empty();
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `meshd run --config <config>`.
    pub fn start(config: &Path) -> Meshd {
        let mut command = Command::new(meshd_bin());
        command.arg("run").arg("--config").arg(config);
        Meshd::spawn(command)
    }

    /// The process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Waits until its log contains `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.stderr();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log never contained {needle:?}:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit; its exit code (None if it is still
    /// running or died of a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends a signal (e.g. `HUP`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Meshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP echo server on `addr` (port 0 for any); each connection echoes until EOF.
pub fn echo_server(addr: SocketAddr) -> SocketAddr {
    echo_on(TcpListener::bind(addr).expect("bind echo server"))
}

/// Serves echo on an already bound listener (e.g. one bound inside a network namespace: the
/// socket stays in its namespace whatever thread serves it).
pub fn echo_on(listener: TcpListener) -> SocketAddr {
    let local = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            thread::spawn(move || {
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    local
}

/// How long [`echo_roundtrip`] waits for the echo or the end of the connection.
pub const ECHO_WAIT: Duration = Duration::from_secs(10);

/// Sends `message` on `stream` and reads the echo; `None` if the connection was cut instead
/// (closed or reset).
///
/// # Panics
/// When neither the echo nor the end arrives within [`ECHO_WAIT`]: a hang is neither an
/// allowed nor a refused connection, and a test that counted it as "closed" could not fail
/// when meshd stops cutting denied connections.
pub fn echo_roundtrip(stream: &mut TcpStream, message: &[u8]) -> Option<Vec<u8>> {
    stream.set_read_timeout(Some(ECHO_WAIT)).ok()?;
    stream.write_all(message).ok()?;
    let mut got = vec![0u8; message.len()];
    let mut read = 0;
    while read < got.len() {
        match stream.read(&mut got[read..]) {
            Ok(0) => return None,
            Ok(n) => read += n,
            Err(e) if is_timeout(&e) => panic!(
                "connection hung: neither echoed nor cut within {ECHO_WAIT:?} ({read} of {} bytes back)",
                got.len()
            ),
            Err(_) => return None,
        }
    }
    Some(got)
}

/// A blocking read's timeout, as the platform reports it.
fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A temporary directory holding a dev CA (`ca/`) and whatever configuration a test writes.
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    /// A new workspace with a CA for `cluster.local`.
    /// The CA is made in this process by the code behind `meshd ca init` (so a workspace
    /// needs no meshd binary: the benches use one too).
    pub fn new() -> Workspace {
        let dir = tempfile::TempDir::new().expect("tempdir");
        meshd_identity::DevCa::init(resources::TRUST_DOMAIN, &dir.path().join("ca"))
            .expect("meshd ca init");
        Workspace { dir }
    }

    /// The workspace path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The CA directory.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Writes a file (creating parent directories) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, text).expect("write");
        path
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace::new()
    }
}

/// One HTTP/1.1 request to a meshd endpoint: (status, body). `None` when nothing answers.
/// A POST carries `X-Meshd-Admin`, as the admin endpoint asks of every state change (and as
/// the README's curl commands do).
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let admin = if method == "POST" {
        "X-Meshd-Admin: 1\r\n"
    } else {
        ""
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{admin}Connection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    Some((status, body))
}

/// Polls `check` every 50 ms for up to 10 s; panics with `what` if it never holds.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// A test's `NOTIFY_SOCKET`: receives what meshd tells systemd (`READY=1`, `STATUS=…`).
pub struct NotifySocket {
    socket: std::os::unix::net::UnixDatagram,
    /// The socket's path, for meshd's `NOTIFY_SOCKET` environment variable.
    pub path: PathBuf,
    seen: Vec<String>,
}

impl NotifySocket {
    /// Binds `notify.sock` in `dir`.
    pub fn new(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind NOTIFY_SOCKET");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        NotifySocket {
            socket,
            path,
            seen: Vec::new(),
        }
    }

    /// Waits up to 15 s for a message containing `needle` and takes it (a later call waits
    /// for another); messages that did not match are kept for later calls.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(i) = self.seen.iter().position(|m| m.contains(needle)) {
                return self.seen.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in {:?}",
                self.seen
            );
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    }

    /// The messages received and not yet taken by [`NotifySocket::wait_for`].
    pub fn seen(&self) -> &[String] {
        &self.seen
    }
}
