//! `meshd run`: the node proxy.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use meshd_admin::LogLevelFn;
use meshd_config::{parse_file, parse_text};
use meshd_daemon::Exit;
use meshd_proxy::ProxyConfig;
use tracing_subscriber::EnvFilter;

/// The embedded default configuration (a dev setup on the example directory).
const DEFAULT_CONFIG: &str = include_str!("../../../config/meshd.yaml");

/// sysexits' EX_CONFIG: systemd's `RestartPreventExitStatus=78` stops restart loops on it.
const EX_CONFIG: u8 = 78;

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
    let set_log_level = init_logging(args.log_format);
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
    match runtime.block_on(meshd_daemon::run(config, set_log_level))? {
        Exit::Stopped => Ok(ExitCode::SUCCESS),
        Exit::Config(e) => {
            eprintln!("meshd: {e}");
            Ok(ExitCode::from(EX_CONFIG))
        }
    }
}

/// Installs the log subscriber (filter from `RUST_LOG`, default `info`) and returns the
/// function `/logging` changes the filter with.
fn init_logging(format: LogFormat) -> LogLevelFn {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only help a person at a terminal; journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal());
    macro_rules! reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            Arc::new(move |level: &str| {
                if !level.is_empty() {
                    let filter = EnvFilter::try_new(level)
                        .map_err(|e| format!("bad log filter {level:?}: {e}"))?;
                    handle.reload(filter).map_err(|e| e.to_string())?;
                    tracing::info!(filter = level, "log filter changed");
                }
                handle
                    .with_current(|f| f.to_string())
                    .map_err(|e| e.to_string())
            }) as LogLevelFn
        }};
    }
    match format {
        LogFormat::Text => reloadable!(builder),
        LogFormat::Json => reloadable!(builder.json().flatten_event(true)),
    }
}
