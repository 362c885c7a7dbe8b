//! `meshd status`: flags and wiring; the client and the tables are meshd-status's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use meshd_status::{Options, StatusError};

// Exit status when meshd cannot be asked (not running, wrong address, still starting).
use crate::exit::UNAVAILABLE as EX_UNAVAILABLE;

/// Arguments of `meshd status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// What to show (default: a summary).
    #[arg(value_enum, default_value_t = View::Summary)]
    view: View,
    /// Print the view as JSON (the shape documented in meshd-status's `view` module).
    #[arg(long)]
    json: bool,
    /// The admin endpoint (default: `listen.admin` of the daemon configuration,
    /// 127.0.0.1:15000 unless changed).
    #[arg(long, env = "MESHD_ADMIN")]
    admin: Option<SocketAddr>,
    /// The daemon configuration file to read `listen.admin` from, as for `meshd run`.
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
    /// How many denials to show, the most recent first.
    #[arg(long, default_value_t = 20)]
    last: usize,
}

/// The views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum View {
    /// Generation, last reload error, certificate, counts.
    Summary,
    /// The last ten minutes: connections, denials and bytes, and who talked to whom.
    Traffic,
    /// Local and remote workloads, the policies selecting local ones, mTLS mode per port.
    Workloads,
    /// Services: hosts, VIPs, ports, endpoints and their health.
    Services,
    /// AuthorizationPolicies and PeerAuthentications: scope, action, rules, warnings, source.
    Policies,
    /// The certificate in force, rotations, trust domains and their roots.
    Certs,
    /// istiod: the xDS stream, last ACK/NACK per type, resources per source, the Istio CA
    /// certificate.
    ControlPlane,
    /// Open connections.
    Connections,
    /// The last refused or denied connections with the deciding policy.
    Denials,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Summary => "summary",
            View::Traffic => "traffic",
            View::Workloads => "workloads",
            View::Services => "services",
            View::Policies => "policies",
            View::Certs => "certs",
            View::ControlPlane => "control-plane",
            View::Connections => "connections",
            View::Denials => "denials",
        }
    }
}

/// Where to reach the admin endpoint: the flag, else the daemon configuration's
/// `listen.admin` (an unspecified address is reached on loopback).
fn admin_addr(args: &StatusArgs) -> Result<SocketAddr, String> {
    if let Some(addr) = args.admin {
        return Ok(addr);
    }
    let config = crate::run::load_config(args.config.as_deref())
        .map_err(|e| format!("cannot read listen.admin ({e}); pass --admin ADDR"))?;
    let Some(addr) = config.listen.admin else {
        return Err("the admin endpoint is off (listen.admin is null); pass --admin ADDR".into());
    };
    Ok(match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    })
}

/// Prints the view; exit 69 when meshd cannot be asked, 1 for anything else that failed.
pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let admin = match admin_addr(args) {
        Ok(admin) => admin,
        Err(e) => {
            eprintln!("meshd status: {e}");
            return Ok(ExitCode::from(EX_UNAVAILABLE));
        }
    };
    match meshd_status::show(
        admin,
        args.view.name(),
        args.json,
        Options::for_stdout(args.last),
    ) {
        Ok(text) => {
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ StatusError::Client(_)) => {
            eprintln!("meshd status: {e}");
            Ok(ExitCode::from(EX_UNAVAILABLE))
        }
        Err(e) => Err(e.into()),
    }
}
