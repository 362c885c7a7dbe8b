//! `meshd run`: the node proxy.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use meshd_daemon::Exit;
use meshd_daemon::MeshdConfig;
use meshd_daemon::settings::{self, Base, Flags, Settings};

use crate::logging::LogFormat;

/// The embedded default configuration (a dev setup on the example directory).
const DEFAULT_CONFIG: &str = include_str!("../../../config/meshd.yaml");

use crate::exit::CONFIG as EX_CONFIG;

/// Arguments of `meshd run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// meshd's configuration file (default: /etc/meshd/meshd.yaml if it exists, else the
    /// embedded development configuration, config/meshd.yaml).
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
    /// Override the configuration directory of Istio YAML (highest layer; `MESHD_CONFIG_DIR`
    /// sets it in the environment layer).
    #[arg(long)]
    config_dir: Option<PathBuf>,
    /// Join an Istio mesh with the directory `istioctl x workload entry configure` writes
    /// (cluster.env, mesh.yaml, root-cert.pem, istio-token, hosts): it becomes the lowest layer
    /// of `controlPlane:`, gives the trust domain, and the identity comes from the Istio CA.
    #[arg(long, env = "MESHD_ISTIO_BUNDLE")]
    istio_bundle: Option<PathBuf>,
    /// Where and how to log (access log included): `auto` is journald's native protocol when
    /// systemd connected stderr to the journal (`JOURNAL_STREAM`), else `text` (key=value
    /// lines on stderr); `json` is one JSON object per line on stderr.
    #[arg(long, env = "MESHD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Auto)]
    log_format: LogFormat,
}

/// Reads the daemon configuration in layers: defaults < the file (`path`, else
/// /etc/meshd/meshd.yaml if it exists, else the embedded development file) < `MESHD_*`
/// environment variables < flags.
pub fn load_settings(path: Option<&Path>, flags: &Flags) -> Result<Settings, String> {
    let installed = Path::new(settings::DEFAULT_PATH);
    let base = match path {
        Some(path) => Base::File(path),
        None if installed.exists() => Base::File(installed),
        None => Base::Embedded {
            name: "<embedded config/meshd.yaml>",
            text: DEFAULT_CONFIG,
        },
    };
    settings::load(base, flags).map_err(|e| e.to_string())
}

/// The effective daemon configuration (see [`load_settings`]), without flags.
pub fn load_config(path: Option<&Path>) -> Result<MeshdConfig, String> {
    load_settings(path, &Flags::default()).map(|s| s.config)
}

/// How long, once the daemon has drained, blocking work (file reads, a configuration load) may
/// take to finish before meshd exits without it.
const BLOCKING_GRACE: Duration = Duration::from_secs(1);

/// Runs until SIGINT or SIGTERM; a changed file or SIGHUP reloads the configuration directory.
pub fn run(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let set_log_level = crate::logging::init(args.log_format);
    // glibc keeps what a burst of connections freed; the trim thread gives it back, and glibc
    // stops shrinking and regrowing its heap under bulk traffic meanwhile (crates/memory).
    if let Err(e) = meshd_memory::start() {
        tracing::warn!(error = %e, "cannot start the heap trimming thread: freed memory stays resident");
    }
    let flags = Flags {
        config_dir: args.config_dir.clone(),
        istio_bundle: args.istio_bundle.clone(),
    };
    let config = match load_settings(args.config.as_deref(), &flags) {
        Ok(settings) => {
            for warning in &settings.warnings {
                tracing::warn!("{warning}");
            }
            settings.config
        }
        Err(e) => {
            eprintln!("meshd: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    // A reload re-reads the file to say which changed keys need a restart.
    let path = args.config.clone();
    let reread: meshd_daemon::RereadFn =
        Arc::new(move || load_settings(path.as_deref(), &flags).map(|s| s.config));
    // Before the workers start: one worker allocates from the main arena, which the trim
    // thread can shrink after a burst (crates/memory).
    meshd_memory::arenas_for_workers(config.worker_threads.get());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads.get())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("meshd: cannot start the async runtime: {e}");
            return Ok(ExitCode::from(crate::exit::SOFTWARE));
        }
    };
    let exit = runtime.block_on(meshd_daemon::run(config, set_log_level, reread))?;
    // Dropping a runtime waits for its blocking threads: one stuck reading a file on a hung
    // filesystem (a certificate, the configuration) would keep meshd from ever exiting.
    runtime.shutdown_timeout(BLOCKING_GRACE);
    match exit {
        Exit::Stopped => Ok(ExitCode::SUCCESS),
        Exit::Config(e) => {
            eprintln!("meshd: {e}");
            Ok(ExitCode::from(EX_CONFIG))
        }
    }
}
