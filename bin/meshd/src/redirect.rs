//! `meshd redirect install|uninstall|show`: the nftables rules that capture traffic into meshd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::run::load_config;

/// `meshd redirect` subcommands.
#[derive(Debug, Subcommand)]
pub enum RedirectCommand {
    /// Install (or replace) the capture rules from the configuration's `redirect:` section,
    /// with `originalSource` also the routing that brings workloads' replies back to meshd.
    Install(RedirectArgs),
    /// Remove the capture rules and original source's routing rule and table (no error if
    /// absent).
    Uninstall,
    /// Print the installed rules (and original source's routing rule and table, if any).
    Show,
}

/// Arguments of `meshd redirect install`.
#[derive(Debug, Args)]
pub struct RedirectArgs {
    /// meshd's configuration file, as for `meshd run` (default: /etc/meshd/meshd.yaml if it
    /// exists, else the embedded development configuration).
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
}

/// Runs a `meshd redirect` subcommand.
pub fn run(command: &RedirectCommand) -> anyhow::Result<ExitCode> {
    match command {
        RedirectCommand::Install(args) => {
            let config = match load_config(args.config.as_deref()) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("meshd: {e}");
                    return Ok(ExitCode::from(crate::exit::CONFIG));
                }
            };
            meshd_redirect::install(&config.redirect)?;
            println!(
                "capture rules installed (nftables table inet {}{})",
                meshd_redirect::TABLE_NAME,
                if config.redirect.original_source {
                    ", original source's routing rule and table"
                } else {
                    ""
                }
            );
        }
        RedirectCommand::Uninstall => {
            meshd_redirect::uninstall()?;
            println!("capture rules removed");
        }
        RedirectCommand::Show => {
            match meshd_redirect::show()? {
                Some(rules) => print!("{rules}"),
                None => println!("no capture rules installed"),
            }
            // redirect.originalSource's routing, when installed (outside nftables).
            for line in meshd_redirect::show_original_source_routes()? {
                println!("{line}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
