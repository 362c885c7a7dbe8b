//! `meshd ca init|issue`: the development CA, for trying meshd without a PKI.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use meshd_identity::{
    DEFAULT_DEV_TTL, DEFAULT_TRUST_DOMAIN, DevCa, format_duration, parse_duration,
};

/// `meshd ca` subcommands.
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a root (ECDSA P-256) in DIR: ca-cert.pem and ca-key.pem (mode 0600).
    Init(InitArgs),
    /// Issue a workload SVID from the CA in --ca, written as svid.pem, svid_key.pem and
    /// svid_bundle.pem (the spiffe-helper layout).
    Issue(IssueArgs),
}

/// Arguments of `meshd ca init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// The trust domain of the identities the CA issues.
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Where to write the CA; an existing CA is never overwritten.
    #[arg(long)]
    out: PathBuf,
}

/// Arguments of `meshd ca issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The CA directory made by `meshd ca init`.
    #[arg(long)]
    ca: PathBuf,
    /// The workload's namespace.
    #[arg(long)]
    namespace: String,
    /// The workload's service account.
    #[arg(long)]
    service_account: String,
    /// Lifetime, e.g. `24h`, `90m`.
    #[arg(long)]
    ttl: Option<String>,
    /// Where to write the SVID files.
    #[arg(long)]
    out: PathBuf,
}

/// Runs a `meshd ca` subcommand.
pub fn run(command: &CaCommand) -> anyhow::Result<ExitCode> {
    match command {
        CaCommand::Init(args) => {
            DevCa::init(&args.trust_domain, &args.out)
                .with_context(|| format!("cannot create a CA in {}", args.out.display()))?;
            println!(
                "created a development CA for trust domain {} in {}",
                args.trust_domain,
                args.out.display()
            );
        }
        CaCommand::Issue(args) => {
            let ttl = match &args.ttl {
                Some(text) => parse_duration(text)?,
                None => DEFAULT_DEV_TTL,
            };
            let svid = DevCa::issue_from(
                &args.ca,
                &args.namespace,
                &args.service_account,
                ttl,
                &args.out,
            )
            .with_context(|| format!("cannot issue from the CA in {}", args.ca.display()))?;
            println!(
                "issued {} valid for {} (until {}) into {}",
                svid.id,
                format_duration(ttl),
                svid.not_after,
                args.out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
