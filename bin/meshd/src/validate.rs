//! `meshd validate [DIR] [--daemon-config FILE]`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use meshd_daemon::MeshdConfig;
use meshd_manifests::{LoadOptions, load_dir};
use meshd_proxy::strict_without_capture;
use meshd_proxy::{ProxyState, local_predicate};

/// Prints every problem, then a one-line summary; exit 1 when there is any error.
pub fn run(
    dir: Option<&Path>,
    daemon_config: Option<&Path>,
    root_namespace: &str,
) -> anyhow::Result<ExitCode> {
    let daemon = match daemon_config {
        Some(path) => match crate::run::load_config(Some(path)) {
            Ok(config) => Some(config),
            Err(e) => {
                println!("{e}");
                println!(
                    "{}: INVALID: the daemon configuration would be rejected",
                    path.display()
                );
                return Ok(ExitCode::FAILURE);
            }
        },
        None => None,
    };
    let dir = dir
        .or(daemon.as_ref().map(|c| c.config_dir.as_path()))
        .context("no configuration directory given")?;
    let options = LoadOptions {
        root_namespace: daemon
            .as_ref()
            .map_or(root_namespace.to_string(), |c| c.root_namespace.clone()),
    };
    match load_dir(dir, &options) {
        Ok(snapshot) => {
            for warning in &snapshot.warnings {
                println!("{warning}");
            }
            if let (Some(config), Some(path)) = (&daemon, daemon_config)
                && !check_daemon(config, path, &snapshot)
            {
                return Ok(ExitCode::FAILURE);
            }
            println!("{}: OK: {}", dir.display(), snapshot.summary());
            Ok(ExitCode::SUCCESS)
        }
        Err(rejected) => {
            for problem in &rejected.problems {
                println!("{problem}");
            }
            let errors = rejected.errors().count();
            let warnings = rejected.problems.len() - errors;
            println!(
                "{}: INVALID: {errors} error{}, {warnings} warning{}; the configuration would be rejected",
                dir.display(),
                plural(errors),
                plural(warnings)
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The daemon configuration's own checks and what it cannot enforce on this machine; false
/// when the daemon would refuse to start.
fn check_daemon(config: &MeshdConfig, path: &Path, snapshot: &meshd_manifests::Snapshot) -> bool {
    match config.check() {
        Ok(warnings) => {
            for warning in warnings {
                println!("{}: warning: {warning}", path.display());
            }
        }
        Err(e) => {
            println!("{}: {e}", path.display());
            println!(
                "{}: INVALID: the daemon would refuse to start",
                path.display()
            );
            return false;
        }
    }
    let proxy = config.proxy();
    let state = ProxyState::build(
        snapshot,
        &meshd_proxy::MeshState::default(),
        &config.trust_domain,
        0,
        local_predicate(&proxy),
    );
    for warning in strict_without_capture(&proxy, &state) {
        println!("{}: warning: {warning}", path.display());
    }
    true
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
