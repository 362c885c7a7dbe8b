//! `meshd redirect install|uninstall|show`: the nftables rules that capture traffic into meshd.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::run::load_config;

/// `meshd redirect` subcommands.
#[derive(Debug, Subcommand)]
pub enum RedirectCommand {
    /// Install (or replace) the capture rules from the configuration's `redirect:` section.
    Install(RedirectArgs),
    /// Remove the capture rules (no error if absent).
    Uninstall,
    /// Print the installed rules.
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
                "capture rules installed (nftables table inet {})",
                meshd_redirect::TABLE_NAME
            );
        }
        RedirectCommand::Uninstall => {
            meshd_redirect::uninstall()?;
            println!("capture rules removed");
        }
        RedirectCommand::Show => match meshd_redirect::show()? {
            Some(rules) => print!("{rules}"),
            None => println!("no capture rules installed"),
        },
    }
    Ok(ExitCode::SUCCESS)
}
