//! A real SPIRE server and agent as the identity provider of meshd's tests: `spire-server`
//! and `spire-agent` v1.13.3, built from the Go module proxy by the Go module under
//! `integration/spire/` (its `go.mod` pins them as tools; output in `<target>/spire/`).
//!
//! [`Spire::start`] starts the server on a loopback address of the test's range (a temporary
//! directory holds its config, sqlite datastore, disk-kept CA key and admin socket), creates a
//! join token, and starts the agent with join-token node attestation and the `unix` workload
//! attestor, its Workload API socket in the same directory. The test then registers workloads
//! ([`Spire::create_entry`], parented to the agent as `spire-server entry create` does), reads
//! the bundle ([`Spire::bundle_pem`]) and fetches SVIDs as a workload would
//! ([`Spire::fetch_x509`], through `spire-agent api fetch x509`). Both are killed on drop.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

pub use crate::spire_build::{build_spire, spire_bin_dir, spire_out_dir, spire_source};

/// The server's port: SPIRE's default `bind_port` (each test has its own loopback address).
pub const SPIRE_SERVER_PORT: u16 = 8081;

/// The SPIRE release the harness builds (integration/spire/go.mod pins the same).
pub const SPIRE_VERSION: &str = "1.13.3";

/// How long the server or the agent may take to answer its health check after start: the
/// server creates its CA and datastore (about a second on 2 cores), the agent attests; generous
/// for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new registration entry may take to reach the agent: the agent syncs with the
/// server every 5 s (SPIRE's `defaultSyncInterval`), so a few rounds on a loaded machine.
pub const ENTRY_PROPAGATION: Duration = Duration::from_secs(30);

/// Settings of a harness that differ between tests.
#[derive(Debug, Clone)]
pub struct SpireOptions {
    /// The server's trust domain.
    pub trust_domain: String,
    /// The server's `default_x509_svid_ttl`: the lifetime of the SVIDs it signs (workloads'
    /// and the agent's own); short, so rotation can be watched.
    pub x509_svid_ttl: Duration,
    /// The server's port on the test's loopback address.
    pub port: u16,
    /// When set, the agent serves its admin API (the Delegated Identity API) on
    /// [`Spire::admin_socket`] to callers whose SPIFFE ID is in this list (its
    /// `authorized_delegates`; may be empty: nobody is).
    pub authorized_delegates: Option<Vec<String>>,
}

/// What an entry has beyond its SPIFFE ID and selectors.
#[derive(Debug, Clone, Default)]
pub struct EntryOptions {
    /// The entry's own X.509-SVID lifetime (`-x509SVIDTTL`), else the server's default.
    pub x509_svid_ttl: Option<Duration>,
    /// Trust domains whose bundles the workload receives (`-federatesWith spiffe://<td>`).
    pub federates_with: Vec<String>,
}

impl Default for SpireOptions {
    fn default() -> Self {
        SpireOptions {
            trust_domain: "spire.test".into(),
            // Five minutes: no rotation during a test that does not ask for one.
            x509_svid_ttl: Duration::from_secs(300),
            port: SPIRE_SERVER_PORT,
            authorized_delegates: None,
        }
    }
}

/// A running SPIRE server and agent, killed on drop.
pub struct Spire {
    bins: PathBuf,
    tmp: tempfile::TempDir,
    addr: SocketAddr,
    options: SpireOptions,
    agent_id: String,
    server: Option<Running>,
    agent: Option<Running>,
}

/// One process and its log (SPIRE logs to stderr).
struct Running {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Running {
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Spire {
    /// Builds (if needed) SPIRE and starts its server on `ip`:8081 and an agent attested to it.
    ///
    /// # Panics
    /// When Go is missing, the build fails, or the server or agent does not become healthy
    /// (its log is in the message).
    pub fn start(ip: IpAddr) -> Spire {
        Spire::start_with(ip, SpireOptions::default())
    }

    /// [`Spire::start`] with other settings.
    pub fn start_with(ip: IpAddr, options: SpireOptions) -> Spire {
        let tmp = tempfile::TempDir::new().expect("tempdir for SPIRE");
        let mut spire = Spire {
            bins: spire_bin_dir(),
            addr: SocketAddr::new(ip, options.port),
            tmp,
            options,
            agent_id: String::new(),
            server: None,
            agent: None,
        };
        for dir in ["server/data", "agent/data", "agent/public", "agent/admin"] {
            std::fs::create_dir_all(spire.dir().join(dir)).expect("create SPIRE directories");
        }
        spire.start_server();
        std::fs::write(spire.dir().join("agent/bootstrap.pem"), spire.bundle_pem())
            .expect("write the agent's bootstrap bundle");
        let token = spire.generate_token();
        spire.agent_id = format!(
            "spiffe://{}/spire/agent/join_token/{token}",
            spire.options.trust_domain
        );
        spire.start_agent(Some(&token));
        spire
    }

    /// The temporary directory holding both configurations, data and sockets.
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The trust domain the server was started with.
    pub fn trust_domain(&self) -> &str {
        &self.options.trust_domain
    }

    /// The server's TCP address (where the agent connects).
    pub fn address(&self) -> SocketAddr {
        self.addr
    }

    /// The agent's SPIFFE ID, the parent of every entry this harness creates.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The agent's Workload API socket.
    pub fn workload_socket(&self) -> PathBuf {
        self.dir().join("agent/public/api.sock")
    }

    /// The agent's admin socket (the Delegated Identity API), when
    /// [`SpireOptions::authorized_delegates`] is set; SPIRE wants it outside the Workload
    /// API socket's directory.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir().join("agent/admin/admin.sock")
    }

    /// The server's admin API socket (what `spire-server` subcommands talk to).
    pub fn server_socket(&self) -> PathBuf {
        self.dir().join("server/api.sock")
    }

    /// `spire-server <args…> -socketPath <admin socket>`; its output, whatever its status.
    pub fn server_cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(self.bins.join("spire-server"));
        command
            .args(args)
            .arg("-socketPath")
            .arg(self.server_socket());
        output(command)
    }

    /// `spire-agent <args…> -socketPath <Workload API socket>`; its output.
    pub fn agent_cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(self.bins.join("spire-agent"));
        command
            .args(args)
            .arg("-socketPath")
            .arg(self.workload_socket());
        output(command)
    }

    /// Registers `spiffe_id` for workloads of this agent matching every selector (such as
    /// `unix:uid:0`); the entry's ID.
    ///
    /// # Panics
    /// When the server refuses it (its message in the panic).
    pub fn create_entry(&self, spiffe_id: &str, selectors: &[&str]) -> String {
        self.create_entry_with(spiffe_id, selectors, &EntryOptions::default())
    }

    /// [`Spire::create_entry`] with a TTL of its own or federated trust domains.
    pub fn create_entry_with(
        &self,
        spiffe_id: &str,
        selectors: &[&str],
        options: &EntryOptions,
    ) -> String {
        let mut args: Vec<String> = ["entry", "create", "-parentID", &self.agent_id]
            .into_iter()
            .chain(["-spiffeID", spiffe_id])
            .map(String::from)
            .collect();
        for selector in selectors {
            args.extend(["-selector".into(), selector.to_string()]);
        }
        if let Some(ttl) = options.x509_svid_ttl {
            args.extend(["-x509SVIDTTL".into(), ttl.as_secs().max(1).to_string()]);
        }
        for td in &options.federates_with {
            args.extend(["-federatesWith".into(), format!("spiffe://{td}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = success(self.server_cli(&args), "spire-server entry create");
        // "Entry ID         : 9a3b…" (the CLI's pretty output).
        out.lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "Entry ID").then(|| value.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no entry ID in spire-server's output:\n{out}"))
    }

    /// Rewrites entry `entry_id` (same parent) with these selectors and federated trust
    /// domains, as `spire-server entry update` wants every field.
    pub fn update_entry(
        &self,
        entry_id: &str,
        spiffe_id: &str,
        selectors: &[&str],
        federates_with: &[&str],
    ) {
        let mut args: Vec<String> = ["entry", "update", "-entryID", entry_id]
            .into_iter()
            .chain(["-parentID", &self.agent_id, "-spiffeID", spiffe_id])
            .map(String::from)
            .collect();
        for selector in selectors {
            args.extend(["-selector".into(), selector.to_string()]);
        }
        for td in federates_with {
            args.extend(["-federatesWith".into(), format!("spiffe://{td}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        success(self.server_cli(&args), "spire-server entry update");
    }

    /// Deletes a registration entry.
    pub fn delete_entry(&self, entry_id: &str) {
        success(
            self.server_cli(&["entry", "delete", "-entryID", entry_id]),
            "spire-server entry delete",
        );
    }

    /// Makes `other`'s trust domain a federated one here: its bundle, set on this server
    /// (`spire-server bundle set`), reaches the agent with entries that federate with it.
    pub fn trust_bundle_of(&self, other: &Spire) {
        let pem = self.dir().join(format!("{}.pem", other.trust_domain()));
        std::fs::write(&pem, other.bundle_pem()).expect("write the federated bundle");
        let id = format!("spiffe://{}", other.trust_domain());
        let path = pem.to_str().expect("a UTF-8 path");
        success(
            self.server_cli(&["bundle", "set", "-format", "pem", "-id", &id, "-path", path]),
            "spire-server bundle set",
        );
    }

    /// The server's X.509 bundle (the roots of its trust domain), PEM.
    pub fn bundle_pem(&self) -> String {
        success(
            self.server_cli(&["bundle", "show", "-format", "pem"]),
            "spire-server bundle show",
        )
    }

    /// Fetches the caller's X.509-SVIDs from the agent's Workload API as a workload does
    /// (`spire-agent api fetch x509 -write <out>`: `svid.N.pem`, `svid.N.key`, `bundle.N.pem`),
    /// retrying until the agent has one or [`ENTRY_PROPAGATION`] passes; the CLI's stdout.
    ///
    /// # Panics
    /// When none arrives in time (the agent's last answer and log in the message).
    pub fn fetch_x509(&self, out: &Path) -> String {
        let deadline = Instant::now() + ENTRY_PROPAGATION;
        loop {
            match self.try_fetch_x509(out) {
                Ok(stdout) => return stdout,
                Err(e) if Instant::now() >= deadline => panic!(
                    "no X.509-SVID from the agent within {ENTRY_PROPAGATION:?}: {e}\nagent log:\n{}",
                    self.agent_log()
                ),
                Err(_) => thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// One `spire-agent api fetch x509 -write <out>`; its stdout, or its error output.
    pub fn try_fetch_x509(&self, out: &Path) -> Result<String, String> {
        std::fs::create_dir_all(out).expect("create the SVID directory");
        let out = out.to_str().expect("a UTF-8 path");
        let result = self.agent_cli(&["api", "fetch", "x509", "-timeout", "5s", "-write", out]);
        if result.status.success() {
            Ok(String::from_utf8_lossy(&result.stdout).into_owned())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&result.stdout),
                String::from_utf8_lossy(&result.stderr)
            ))
        }
    }

    /// Everything the server logged so far (this run).
    pub fn server_log(&self) -> String {
        self.server.as_ref().map(log_of).unwrap_or_default()
    }

    /// Everything the agent logged so far (this run).
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(log_of).unwrap_or_default()
    }

    /// Kills the agent (SIGKILL): its Workload API goes away without a goodbye.
    pub fn kill_agent(&mut self) {
        if let Some(agent) = self.agent.take() {
            agent.kill();
        }
    }

    /// Kills (if running) and starts the agent again: it comes back with the SVID it keeps
    /// in its data directory (a join token attests once), same ID and socket.
    pub fn restart_agent(&mut self) {
        self.kill_agent();
        self.start_agent(None);
    }

    fn start_server(&mut self) {
        let conf = self.dir().join("server/server.conf");
        std::fs::write(&conf, self.server_conf()).expect("write server.conf");
        let mut command = Command::new(self.bins.join("spire-server"));
        command.arg("run").arg("-config").arg(&conf);
        let running = spawn(command, "spire-server");
        let socket = self.server_socket();
        let bin = self.bins.join("spire-server");
        self.server = Some(wait_healthy(running, "spire-server", || {
            let mut check = Command::new(&bin);
            check.args(["healthcheck", "-socketPath"]).arg(&socket);
            output(check)
        }));
    }

    fn start_agent(&mut self, join_token: Option<&str>) {
        let conf = self.dir().join("agent/agent.conf");
        std::fs::write(&conf, self.agent_conf()).expect("write agent.conf");
        let mut command = Command::new(self.bins.join("spire-agent"));
        command.arg("run").arg("-config").arg(&conf);
        if let Some(token) = join_token {
            command.arg("-joinToken").arg(token);
        }
        let running = spawn(command, "spire-agent");
        self.agent = Some(wait_healthy(running, "spire-agent", || {
            self.agent_cli(&["healthcheck"])
        }));
    }

    /// A join token (valid ten minutes) for the agent; the token.
    fn generate_token(&self) -> String {
        let out = success(
            self.server_cli(&["token", "generate", "-ttl", "600"]),
            "spire-server token generate",
        );
        // "Token: 2c4e…"
        out.lines()
            .find_map(|line| line.strip_prefix("Token:").map(|t| t.trim().to_string()))
            .unwrap_or_else(|| panic!("no token in spire-server's output:\n{out}"))
    }

    fn server_conf(&self) -> String {
        let dir = self.dir().display();
        format!(
            r#"server {{
    bind_address = "{ip}"
    bind_port = "{port}"
    socket_path = "{dir}/server/api.sock"
    trust_domain = "{td}"
    data_dir = "{dir}/server/data"
    log_level = "DEBUG"
    default_x509_svid_ttl = "{ttl}s"
}}

plugins {{
    DataStore "sql" {{
        plugin_data {{
            database_type = "sqlite3"
            connection_string = "{dir}/server/data/datastore.sqlite3"
        }}
    }}
    KeyManager "disk" {{
        plugin_data {{
            keys_path = "{dir}/server/data/keys.json"
        }}
    }}
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
}}
"#,
            ip = self.addr.ip(),
            port = self.addr.port(),
            td = self.options.trust_domain,
            ttl = self.options.x509_svid_ttl.as_secs().max(1),
        )
    }

    fn agent_conf(&self) -> String {
        let dir = self.dir().display();
        format!(
            r#"agent {{
    data_dir = "{dir}/agent/data"
    log_level = "DEBUG"
    server_address = "{ip}"
    server_port = "{port}"
    socket_path = "{dir}/agent/public/api.sock"
    trust_bundle_path = "{dir}/agent/bootstrap.pem"
    trust_domain = "{td}"
{admin}}}

plugins {{
    NodeAttestor "join_token" {{
        plugin_data {{}}
    }}
    KeyManager "disk" {{
        plugin_data {{
            directory = "{dir}/agent/data"
        }}
    }}
    WorkloadAttestor "unix" {{
        plugin_data {{}}
    }}
}}
"#,
            ip = self.addr.ip(),
            port = self.addr.port(),
            td = self.options.trust_domain,
            admin = self.admin_conf(),
        )
    }
}

impl Spire {
    /// The agent's admin socket and delegates, when asked for.
    fn admin_conf(&self) -> String {
        let Some(delegates) = &self.options.authorized_delegates else {
            return String::new();
        };
        let quoted: Vec<String> = delegates.iter().map(|d| format!("{d:?}")).collect();
        format!(
            "    admin_socket_path = \"{}\"\n    authorized_delegates = [{}]\n",
            self.admin_socket().display(),
            quoted.join(", ")
        )
    }
}

impl Drop for Spire {
    fn drop(&mut self) {
        self.kill_agent();
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }
}

fn log_of(running: &Running) -> String {
    running.log.lock().expect("lock").clone()
}

/// Starts `command` with its stderr and stdout collected into one log.
fn spawn(mut command: Command, what: &str) -> Running {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    collect(child.stdout.take().expect("stdout"), log.clone());
    collect(child.stderr.take().expect("stderr"), log.clone());
    Running { child, log }
}

/// Polls `check` (a `healthcheck` subcommand) until it succeeds; kills the process and
/// panics with its log when it exits or [`READY_TIMEOUT`] passes first.
fn wait_healthy(mut running: Running, what: &str, check: impl Fn() -> Output) -> Running {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let exited = matches!(running.child.try_wait(), Ok(Some(_)));
        if !exited && check().status.success() {
            return running;
        }
        if exited || Instant::now() >= deadline {
            let _ = running.child.kill();
            let status = running.child.wait();
            // The log's last lines arrive after the exit.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "{what} did not become healthy within {READY_TIMEOUT:?} ({status:?}); its log:\n{}",
                log_of(&running)
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

fn output(mut command: Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {command:?}: {e}"))
}

/// The stdout of a command that must succeed.
fn success(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Appends a pipe's text to `sink` in the background.
fn collect(mut pipe: impl Read + Send + 'static, sink: Arc<Mutex<String>>) {
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
}
