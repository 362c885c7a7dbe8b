//! `meshd authz check`: the authorization engine as a batch dry-run.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use meshd_manifests::{LoadOptions, Snapshot, load_dir};
use meshd_proxy::MeshState;
use meshd_rbac::{Connection, Destination, Engine, Peer, Sym};
use serde::{Deserialize, Serialize};

use crate::ConfigArgs;

/// Arguments of `meshd authz check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The configuration directory.
    #[arg(long)]
    config_dir: PathBuf,
    #[command(flatten)]
    config: ConfigArgs,
    /// JSON Lines file of connections (default: stdin).
    #[arg(long, conflicts_with_all = ["from", "to"])]
    input: Option<PathBuf>,
    /// Human form: the source principal (`<td>/ns/<ns>/sa/<sa>`); omit for plaintext.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// Human form: the destination, `<namespace>/<workload>:<port>`. The workload is a
    /// WorkloadEntry name from the directory (its labels and address are used), or else taken
    /// as the value of an `app` label.
    #[arg(long)]
    to: Option<String>,
    /// Human form: the source IP.
    #[arg(long, default_value = "127.0.0.1")]
    source_ip: IpAddr,
    /// Human form: destination labels `k=v,...` (replace the workload's).
    #[arg(long)]
    labels: Option<String>,
    /// Human form: the destination IP (default: the WorkloadEntry's address, else 127.0.0.1).
    #[arg(long)]
    destination_ip: Option<IpAddr>,
    /// The state a meshd persisted from istiod (`<controlPlane.certDir>/istiod-state.pb`): its
    /// policies join the directory's, named `istiod:<namespace>/<name>`, and `--to` finds its
    /// workloads (their address and the policies istiod binds to them).
    #[arg(long)]
    istiod_state: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputLine {
    source: InputSource,
    destination: InputDestination,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSource {
    #[serde(default)]
    principal: Option<String>,
    ip: IpAddr,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputDestination {
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    ip: IpAddr,
    port: u16,
    /// The istiod policies bound to the destination workload (its `authorization_policies`).
    #[serde(default, rename = "boundPolicies")]
    bound_policies: Vec<String>,
}

#[derive(Debug, Serialize)]
struct OutputLine {
    decision: &'static str,
    policy: Option<String>,
    reason: String,
}

/// Runs the check; exit 1 if the directory is invalid or any input line was malformed.
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let options = LoadOptions {
        root_namespace: args.config.root_namespace.clone(),
    };
    let snapshot = match load_dir(&args.config_dir, &options) {
        Ok(snapshot) => snapshot,
        Err(rejected) => {
            for problem in &rejected.problems {
                eprintln!("{problem}");
            }
            eprintln!(
                "meshd: {}: configuration rejected; nothing checked",
                args.config_dir.display()
            );
            return Ok(ExitCode::FAILURE);
        }
    };
    let mesh = match &args.istiod_state {
        Some(path) => {
            let (mesh, skipped) = meshd_daemon::read_state(path)
                .with_context(|| format!("cannot read the istiod state {}", path.display()))?;
            if skipped > 0 {
                eprintln!(
                    "note: {skipped} resources of {} no longer decode: skipped",
                    path.display()
                );
            }
            mesh
        }
        None => MeshState::default(),
    };
    let engine = Engine::compile_all(
        snapshot.policies(),
        snapshot.peer_auths(),
        mesh.policies().map(|p| &**p),
        &options.root_namespace,
    );
    for key in engine.skipped() {
        eprintln!(
            "note: AuthorizationPolicy {key} uses targetRef(s): loaded but not enforced by meshd (waypoint-only)"
        );
    }
    match (&args.from, &args.to) {
        (_, Some(to)) => human(args, to, &snapshot, &mesh, &engine),
        (Some(_), None) => bail!("--from needs --to"),
        (None, None) => batch(args, &engine),
    }
}

fn batch(args: &CheckArgs, engine: &Engine) -> anyhow::Result<ExitCode> {
    let reader: Box<dyn BufRead> = match &args.input {
        Some(path) => Box::new(BufReader::new(
            File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => Box::new(std::io::stdin().lock()),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut malformed = 0usize;
    for (number, line) in reader.lines().enumerate() {
        let line = line.context("cannot read input")?;
        if line.trim().is_empty() {
            continue;
        }
        let json = match parse_line(&line) {
            Ok(conn) => serde_json::to_string(&decide(engine, &conn))?,
            Err(e) => {
                malformed += 1;
                serde_json::json!({ "error": format!("line {}: {e}", number + 1) }).to_string()
            }
        };
        writeln!(out, "{json}")?;
    }
    out.flush()?;
    if malformed > 0 {
        eprintln!(
            "meshd: {malformed} malformed input line{}",
            if malformed == 1 { "" } else { "s" }
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_line(line: &str) -> Result<Connection, String> {
    let input: InputLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let peer = match input.source.principal.as_deref() {
        None => None,
        Some(p) => Some(Peer::from_principal(p).map_err(|e| e.to_string())?),
    };
    Ok(Connection {
        peer,
        source_ip: input.source.ip,
        destination: Destination {
            namespace: input.destination.namespace,
            labels: input.destination.labels,
            ip: input.destination.ip,
            port: input.destination.port,
            bound_policies: input
                .destination
                .bound_policies
                .into_iter()
                .map(Sym::from)
                .collect(),
        },
    })
}

fn decide(engine: &Engine, conn: &Connection) -> OutputLine {
    let decision = engine.decide(conn);
    OutputLine {
        decision: if decision.allowed() { "allow" } else { "deny" },
        policy: decision.policy().map(ToString::to_string),
        reason: decision.to_string(),
    }
}

fn human(
    args: &CheckArgs,
    to: &str,
    snapshot: &Snapshot,
    mesh: &MeshState,
    engine: &Engine,
) -> anyhow::Result<ExitCode> {
    let (target, port) = to
        .rsplit_once(':')
        .with_context(|| format!("--to {to:?}: want <namespace>/<workload>:<port>"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("--to {to:?}: bad port {port:?}"))?;
    let (namespace, workload) = target
        .split_once('/')
        .with_context(|| format!("--to {to:?}: want <namespace>/<workload>:<port>"))?;
    let entry = snapshot
        .workload_entries
        .iter()
        .map(|s| &s.resource)
        .find(|w| w.metadata.namespace() == namespace && w.metadata.name() == workload);
    // istiod's workloads carry no labels: their selector policies are bound by name.
    let from_istiod = mesh
        .workloads()
        .find(|w| w.namespace == namespace && w.name == workload);
    let mut labels = match (entry, from_istiod) {
        (Some(w), _) => w.spec.labels.clone(),
        (None, Some(_)) => BTreeMap::new(),
        (None, None) => {
            eprintln!("note: no WorkloadEntry {namespace}/{workload}: using labels app={workload}");
            BTreeMap::from([("app".to_string(), workload.to_string())])
        }
    };
    if let Some(spec) = &args.labels {
        labels = parse_labels(spec)?;
    }
    let ip = args
        .destination_ip
        .or_else(|| entry.and_then(|w| w.spec.address.as_deref()?.parse().ok()))
        .or_else(|| from_istiod.and_then(|w| w.addresses.first().copied()))
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let bound_policies: Arc<[Sym]> = from_istiod
        .map(|w| Arc::clone(&w.authorization_policies))
        .unwrap_or_else(|| Arc::from([]));
    let peer = match &args.from {
        Some(p) => Some(Peer::from_principal(p)?),
        None => None,
    };
    let conn = Connection {
        peer,
        source_ip: args.source_ip,
        destination: Destination {
            namespace: namespace.to_string(),
            labels,
            ip,
            port,
            bound_policies,
        },
    };
    let out = decide(engine, &conn);
    let from = args.from.as_deref().unwrap_or("plaintext");
    let policy = out.policy.as_deref().unwrap_or("-");
    println!(
        "{}: {from} -> {namespace}/{workload}:{port} (policy {policy}): {}",
        out.decision.to_uppercase(),
        out.reason
    );
    Ok(ExitCode::SUCCESS)
}

fn parse_labels(spec: &str) -> anyhow::Result<BTreeMap<String, String>> {
    spec.split(',')
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("--labels: {l:?} is not key=value"))
        })
        .collect()
}
