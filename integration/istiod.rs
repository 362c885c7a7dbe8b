//! Real istiod code as the peer of meshd's tests: the Go program under `integration/istiod/`
//! runs Istio's discovery server (ambient index, Delta ADS for `istio.workload.Address` and
//! `istio.security.Authorization`) and Istio's CA server on one TLS port over a fake
//! Kubernetes cluster, as istiod serves both on 15012 (docs/testing.md, "The istiod harness").
//!
//! [`Istiod::start`] builds the program with `go build` when its sources changed (output in
//! `<target>/istiod-harness/`), starts it on a loopback address of the test's range and waits
//! until it serves. The test then drives the fake cluster: [`Istiod::apply`] Istio and
//! Kubernetes YAML, [`Istiod::delete`], [`Istiod::mint_token`] / [`Istiod::revoke`] service
//! account tokens (answered by the fake cluster's TokenReview as kube-apiserver would).
//! The root CA and the cluster's objects live in a state directory, so [`Istiod::restart`]
//! brings back the same istiod. [`crate::vm_bundle`] writes what `istioctl x workload entry
//! configure` writes for a VM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use meshd_redirect::netns::Netns;
use serde_json::{Value, json};

/// istiod's secure gRPC port (discovery and CA), where istioctl's bundle points a VM.
pub const ISTIOD_PORT: u16 = 15012;

/// The name istiod's certificate is issued for and a VM's `hosts` file maps to istiod.
pub const ISTIOD_HOST: &str = "istiod.istio-system.svc";

/// How long the harness may take to start serving: the fake cluster's informers sync and the
/// first push context is built (about a second on 2 cores; generous for a loaded machine).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one control request may take (an apply writes through the fake client at once).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of a harness that differ between tests.
#[derive(Debug, Clone)]
pub struct IstiodOptions {
    /// The mesh's trust domain (istiod's mesh config `trustDomain`).
    pub trust_domain: String,
    /// The cluster's ID (istiod's `CLUSTER_ID`); callers name it in the `clusterid` header.
    pub cluster_id: String,
    /// The port on the test's loopback address.
    pub port: u16,
}

impl Default for IstiodOptions {
    fn default() -> Self {
        IstiodOptions {
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            port: ISTIOD_PORT,
        }
    }
}

/// A running istiod harness, killed on drop.
pub struct Istiod {
    bin: PathBuf,
    /// The network namespace it runs in (its `ip netns` name), if not the test's own.
    netns: Option<String>,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    addr: SocketAddr,
    options: IstiodOptions,
    running: Option<Running>,
    next_id: AtomicI64,
}

/// The process of one run.
struct Running {
    child: Child,
    /// The request pipe and the reply stream, locked together so replies pair with requests.
    control: Mutex<(ChildStdin, Receiver<Value>)>,
    stderr: Arc<Mutex<String>>,
}

impl Istiod {
    /// Builds (if needed) and starts the harness on `ip`:15012 with a fresh state directory.
    ///
    /// # Panics
    /// When Go is missing, the build fails or the harness does not become ready (its log is
    /// in the message).
    pub fn start(ip: IpAddr) -> Istiod {
        Istiod::start_with(ip, IstiodOptions::default())
    }

    /// [`Istiod::start`] with other settings.
    pub fn start_with(ip: IpAddr, options: IstiodOptions) -> Istiod {
        Istiod::launch(None, ip, options)
    }

    /// Starts the harness inside network namespace `ns` on `ip` (an address of that
    /// namespace), for meshd processes in namespaces on the same link. `ns` must outlive the
    /// returned value (declare it first: fields and locals drop in reverse order).
    pub fn start_in(ns: &Netns, ip: IpAddr, options: IstiodOptions) -> Istiod {
        Istiod::launch(Some(ns.name().to_string()), ip, options)
    }

    fn launch(netns: Option<String>, ip: IpAddr, options: IstiodOptions) -> Istiod {
        let bin = harness_bin();
        let tmp = tempfile::TempDir::new().expect("tempdir for the istiod harness");
        let dir = tmp.path().join("istiod");
        let mut istiod = Istiod {
            bin,
            netns,
            dir,
            _tmp: tmp,
            addr: SocketAddr::new(ip, options.port),
            options,
            running: None,
            next_id: AtomicI64::new(1),
        };
        istiod.spawn(None);
        istiod
    }

    /// The TLS address (discovery and CA).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The state directory (root CA, token key, `state.yaml`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The trust domain the harness was started with.
    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    /// The cluster ID the harness was started with.
    pub fn cluster_id(&self) -> &str {
        &self.options.cluster_id
    }

    /// The root certificate (PEM) clients verify istiod with and workload certificates chain to.
    pub fn root_cert_pem(&self) -> String {
        let path = self.dir.join("root-cert.pem");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// Applies Istio/Kubernetes YAML (multi-document); the objects written, as
    /// `Kind/namespace/name`.
    ///
    /// # Panics
    /// When the harness refuses the YAML (see [`Istiod::try_apply`]).
    pub fn apply(&self, yaml: &str) -> Vec<String> {
        self.try_apply(yaml)
            .unwrap_or_else(|e| panic!("istiod harness refused the YAML: {e}\n{yaml}"))
    }

    /// Applies YAML; the harness's error when a document is refused (nothing is written then).
    pub fn try_apply(&self, yaml: &str) -> Result<Vec<String>, String> {
        let reply = self.request(json!({"op": "apply", "yaml": yaml}))?;
        Ok(reply["applied"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Deletes one object.
    ///
    /// # Panics
    /// When it does not exist or the kind is unknown.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        self.try_delete(kind, namespace, name)
            .unwrap_or_else(|e| panic!("delete {kind}/{namespace}/{name}: {e}"));
    }

    /// Deletes one object; the harness's error if it cannot.
    pub fn try_delete(&self, kind: &str, namespace: &str, name: &str) -> Result<(), String> {
        self.request(json!({"op": "delete", "kind": kind, "namespace": namespace, "name": name}))
            .map(drop)
    }

    /// A service-account token for `namespace`/`service_account`, audience `istio-ca`, valid
    /// one hour (what `istioctl x workload entry configure` writes to `istio-token`).
    pub fn mint_token(&self, namespace: &str, service_account: &str) -> String {
        self.mint_token_with(
            namespace,
            service_account,
            &["istio-ca"],
            Duration::from_secs(3600),
        )
    }

    /// A token with other audiences or lifetime (whole seconds, at least one).
    pub fn mint_token_with(
        &self,
        namespace: &str,
        service_account: &str,
        audiences: &[&str],
        ttl: Duration,
    ) -> String {
        let reply = self
            .request(json!({
                "op": "mint",
                "namespace": namespace,
                "serviceAccount": service_account,
                "audiences": audiences,
                "ttlSeconds": ttl.as_secs().max(1),
            }))
            .unwrap_or_else(|e| panic!("mint a token: {e}"));
        reply["token"].as_str().expect("token in reply").to_string()
    }

    /// Invalidates a token minted by this harness: TokenReview no longer authenticates it.
    pub fn revoke(&self, token: &str) {
        self.request(json!({"op": "revoke", "token": token}))
            .unwrap_or_else(|e| panic!("revoke a token: {e}"));
    }

    /// The proxies connected to the discovery server, with the nonce sent and acknowledged and
    /// the last NACK error per watched type (`istio.workload.Address`,
    /// `istio.security.Authorization`), as istiod tracks them.
    pub fn clients(&self) -> Vec<Value> {
        let reply = self
            .request(json!({"op": "clients"}))
            .unwrap_or_else(|e| panic!("list clients: {e}"));
        reply["clients"].as_array().cloned().unwrap_or_default()
    }

    /// Everything the harness logged on stderr so far (this run).
    pub fn stderr(&self) -> String {
        self.running
            .as_ref()
            .map(|r| r.stderr.lock().expect("lock").clone())
            .unwrap_or_default()
    }

    /// Kills the harness (SIGKILL: istiod gone without a goodbye).
    pub fn kill(&mut self) {
        if let Some(mut running) = self.running.take() {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }

    /// Kills (if running) and starts the harness again: same address, same root, the fake
    /// cluster's objects as they were.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(None);
    }

    /// Kills (if running) and starts the harness again with exactly the objects of `yaml`
    /// (e.g. the state minus objects deleted while istiod was away); same address and root.
    pub fn restart_with(&mut self, yaml: &str) {
        self.kill();
        let config = self._tmp.path().join("restart-config.yaml");
        std::fs::write(&config, yaml).expect("write the restart config");
        self.spawn(Some(&config));
    }

    fn spawn(&mut self, config: Option<&Path>) {
        let mut command = match &self.netns {
            None => Command::new(&self.bin),
            // As Netns::command does: `ip netns exec` execs the program, so the child is the
            // harness itself and kill() reaches it.
            Some(name) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", name]).arg(&self.bin);
                command
            }
        };
        command
            .arg("--dir")
            .arg(&self.dir)
            .arg("--addr")
            .arg(self.addr.to_string())
            .arg("--trust-domain")
            .arg(&self.options.trust_domain)
            .arg("--cluster-id")
            .arg(&self.options.cluster_id);
        if let Some(config) = config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            // Set here too (the program re-executes itself with it otherwise): istio's
            // packages read it when they initialise.
            .env("PILOT_ENABLE_AMBIENT", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let replies = json_lines(child.stdout.take().expect("stdout"));
        let stdin = child.stdin.take().expect("stdin");
        if let Err(e) = wait_ready(&replies, self.addr) {
            let _ = child.kill();
            let status = child.wait();
            // The log's last lines arrive after the exit.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "istiod harness did not become ready: {e} ({status:?}); its log:\n{}",
                stderr.lock().expect("lock")
            );
        }
        self.running = Some(Running {
            child,
            control: Mutex::new((stdin, replies)),
            stderr,
        });
    }

    /// Sends one request and waits for its reply; the harness's error text when it failed.
    fn request(&self, mut body: Value) -> Result<Value, String> {
        let running = self
            .running
            .as_ref()
            .ok_or("the istiod harness is not running")?;
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        body["id"] = json!(id);
        let mut line = body.to_string();
        line.push('\n');
        let mut control = running.control.lock().expect("lock");
        let (stdin, replies) = &mut *control;
        stdin
            .write_all(line.as_bytes())
            .map_err(|e| format!("write to the harness: {e}"))?;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match replies.recv_timeout(left) {
                Ok(reply) if reply["id"] == json!(id) => {
                    return if reply["ok"] == json!(true) {
                        Ok(reply)
                    } else {
                        Err(reply["error"]
                            .as_str()
                            .unwrap_or("no error text")
                            .to_string())
                    };
                }
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("no reply within {REPLY_TIMEOUT:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the harness exited; its log:\n{}",
                        running.stderr.lock().expect("lock")
                    ));
                }
            }
        }
    }
}

impl Drop for Istiod {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits for the `{"ready":true,...}` line and checks the address it bound.
fn wait_ready(replies: &Receiver<Value>, want: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match replies.recv_timeout(left) {
            Ok(line) if line["ready"] == json!(true) => {
                let got = line["address"].as_str().unwrap_or_default();
                return if got == want.to_string() {
                    Ok(())
                } else {
                    Err(format!("it bound {got}, not {want}"))
                };
            }
            Ok(_) => continue,
            Err(RecvTimeoutError::Timeout) => return Err(format!("not within {READY_TIMEOUT:?}")),
            Err(RecvTimeoutError::Disconnected) => return Err("it exited".into()),
        }
    }
}

/// Reads JSON lines from the harness's reply stream into a channel (lines that are not JSON
/// are skipped: the stream carries only replies, but a reader must not trust that).
fn json_lines(stdout: impl Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<Value>(&line)
                && tx.send(value).is_err()
            {
                break;
            }
        }
    });
    rx
}

/// Collects a pipe's text in the background.
fn collect(mut pipe: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .expect("lock")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// The harness binary, built once per test process by [`build_harness`] (`ISTIOD_HARNESS_BIN`
/// names another binary instead).
pub fn harness_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("ISTIOD_HARNESS_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_harness(&harness_source(), &harness_out_dir()),
    })
    .clone()
}

/// The Go module of the harness.
pub fn harness_source() -> PathBuf {
    crate::workspace_root().join("integration").join("istiod")
}

/// `<target>/istiod-harness/`: beside the test executable's profile directory, so it shares
/// the Cargo target directory (and is removed by `cargo clean`).
pub fn harness_out_dir() -> PathBuf {
    crate::go_out_dir("istiod-harness")
}

/// Builds `source` into `out/istiod-harness` with `go build` unless the binary is newer than
/// every Go source, go.mod and go.sum. Concurrent test processes take turns on a lock file;
/// the binary is written under another name and renamed, so none runs a half-written one.
///
/// # Panics
/// When `go` is not installed or the build fails (Go's output in the message).
pub fn build_harness(source: &Path, out: &Path) -> PathBuf {
    let bin = out.join("istiod-harness");
    std::fs::create_dir_all(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let lock = std::fs::File::create(out.join("build.lock")).expect("create the build lock");
    lock.lock().expect("lock the istiod harness build");
    if crate::go_build_is_fresh(&bin, source) {
        return bin;
    }
    let partial = out.join(format!("istiod-harness.{}.partial", std::process::id()));
    let output = Command::new("go")
        .args(["build", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(source)
        // The go.mod's toolchain, never a download of another one.
        .env("GOTOOLCHAIN", "local")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the istiod harness needs Go 1.26 (`go` on PATH) to build {}: {e}",
                source.display()
            )
        });
    assert!(
        output.status.success(),
        "go build of the istiod harness ({}) failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &bin).expect("move the built harness into place");
    bin
}
