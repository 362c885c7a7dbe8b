//! `meshd run`: the node proxy.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use meshd_config::{LoadOptions, load_dir, parse_file, parse_text};
use meshd_identity::{IdentityManager, IdentitySource};
use meshd_proxy::access_log::AccessLog;
use meshd_proxy::exposure::strict_without_capture;
use meshd_proxy::plugins::PluginRegistry;
use meshd_proxy::record::Sinks;
use meshd_proxy::{Proxy, ProxyConfig, ProxyState, local_predicate};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// The embedded default configuration (a dev setup on the example directory).
const DEFAULT_CONFIG: &str = include_str!("../../../config/meshd.yaml");

/// sysexits' EX_CONFIG: systemd's `RestartPreventExitStatus=78` stops restart loops on it.
const EX_CONFIG: u8 = 78;

/// How long open connections get to finish on shutdown.
const DRAIN: Duration = Duration::from_secs(5);

/// Arguments of `meshd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// meshd's configuration file (default: the embedded dev configuration, config/meshd.yaml).
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
    /// Override the configuration directory of Istio YAML.
    #[arg(long, env = "MESHD_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    /// Log lines (access log included) as text (key=value) or one JSON object each.
    #[arg(long, env = "MESHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// key=value fields, journal-friendly.
    Text,
    /// One JSON object per line.
    Json,
}

/// Reads the daemon configuration: the file given, or the embedded default.
pub fn load_config(path: Option<&Path>) -> Result<ProxyConfig, String> {
    match path {
        Some(path) => parse_file(path).map_err(|p| p.to_string()),
        None => parse_text(Path::new("<embedded config/meshd.yaml>"), DEFAULT_CONFIG)
            .map_err(|p| p.to_string()),
    }
}

/// Runs until SIGINT or SIGTERM; SIGHUP reloads the configuration directory.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    let mut config = match load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("meshd: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if let Some(dir) = &args.config_dir {
        config.config_dir = dir.clone();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config))
}

fn load_state(config: &ProxyConfig, generation: u64) -> Result<ProxyState, String> {
    let options = LoadOptions {
        root_namespace: config.root_namespace.clone(),
    };
    let snapshot = load_dir(&config.config_dir, &options).map_err(|e| e.to_string())?;
    for warning in &snapshot.warnings {
        tracing::warn!("{warning}");
    }
    tracing::info!("configuration loaded: {}", snapshot.summary());
    let state = ProxyState::build(
        &snapshot,
        &config.trust_domain,
        generation,
        local_predicate(config),
    );
    for warning in strict_without_capture(config, &state) {
        tracing::warn!("{warning}");
    }
    Ok(state)
}

async fn serve(config: ProxyConfig) -> anyhow::Result<ExitCode> {
    // Signal streams first: SIGHUP's default action would kill a meshd still starting.
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    let state = match load_state(&config, 1) {
        Ok(state) => state,
        Err(e) => {
            eprintln!("meshd: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let identity = match IdentityManager::start(&config.identity).await {
        Ok(manager) => manager,
        Err(e) => {
            eprintln!("meshd: identity: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    if let IdentitySource::DevCa(source) = &config.identity {
        tracing::warn!(
            "using the development CA in {}: for trying meshd only, production uses real certificates",
            source.dir.display()
        );
    }
    let local: Vec<String> = state
        .registry
        .local_workloads()
        .map(|w| w.key.clone())
        .collect();
    let (states, updates) = watch::channel(Arc::new(state));
    let proxy = match Proxy::start(
        &config,
        identity.handle(),
        updates,
        Sinks::new(vec![Arc::new(AccessLog)]),
        &PluginRegistry::builtin(),
    )
    .await
    {
        Ok(proxy) => proxy,
        Err(e) => {
            eprintln!("meshd: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let addrs = proxy.addrs().clone();
    tracing::info!(
        identity = %identity.handle().current().id(),
        hbone = %addrs.hbone,
        local_workloads = ?local,
        "meshd ready"
    );
    // A machine-readable line for supervisors and tests.
    println!(
        "meshd ready hbone={} socks5={} outbound={} inbound_plaintext={} listeners={}",
        addrs.hbone,
        addrs.socks5.map_or("-".to_string(), |a| a.to_string()),
        addrs.outbound.map_or("-".to_string(), |a| a.to_string()),
        addrs
            .inbound_plaintext
            .map_or("-".to_string(), |a| a.to_string()),
        addrs
            .listeners
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(","),
    );

    let mut generation = 1;
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                // The generation counts configurations applied: a rejected one takes no number.
                match load_state(&config, generation + 1) {
                    Ok(state) => {
                        generation += 1;
                        states.send_replace(Arc::new(state));
                        tracing::info!(generation, "configuration reloaded");
                    }
                    // The last good configuration stays in force.
                    Err(e) => tracing::error!("reload rejected, keeping the previous configuration: {e}"),
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("shutting down");
    proxy.shutdown(DRAIN).await;
    Ok(ExitCode::SUCCESS)
}
