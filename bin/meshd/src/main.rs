//! `meshd`: the node proxy's command line. Parses flags and wires the library crates; every
//! behaviour lives in a crate under `crates/`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

mod authz;
mod ca;
mod exit;
mod generate;
mod logging;
mod redirect;
mod run;
mod status;
mod validate;
mod version;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use meshd_policy::meta::DEFAULT_ROOT_NAMESPACE;

/// meshd: Istio ambient's L4 secure overlay (HBONE, SPIFFE identities, AuthorizationPolicy) for
/// VMs and bare metal.
#[derive(Debug, Parser)]
#[command(name = "meshd", version, long_version = version::long(), about, long_about = None,
    after_help = exit::help())]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node proxy (the default configuration is a dev setup: see config/meshd.yaml).
    Run(run::RunArgs),
    /// Install, remove or show the nftables rules that capture traffic into meshd.
    #[command(subcommand)]
    Redirect(redirect::RedirectCommand),
    /// Load a configuration directory exactly as the daemon does and report every problem.
    Validate(ValidateArgs),
    /// Authorization dry-runs against a configuration directory.
    #[command(subcommand)]
    Authz(AuthzCommand),
    /// The built-in development CA (for trying meshd; production uses real certificates).
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// What a running meshd is doing: traffic, workloads, services, policies, certificates,
    /// open connections, recent denials (from its admin endpoint).
    Status(status::StatusArgs),
    /// The daemon configuration (meshd.yaml and its layers).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Man pages and shell completions into a directory (scripts/package.sh).
    #[command(subcommand, hide = true)]
    Generate(generate::GenerateCommand),
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration, each value with where it came from (default, the
    /// file, an environment variable, a flag).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The configuration file, as for `meshd run`.
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
    /// As for `meshd run`.
    #[arg(long)]
    config_dir: Option<PathBuf>,
}

/// Options shared by commands that load a configuration directory.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// The mesh root namespace: its policies apply mesh-wide.
    #[arg(long, env = "MESHD_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

#[derive(Debug, Args)]
struct ValidateArgs {
    /// The configuration directory (*.yaml / *.yml, subdirectories included); default: the
    /// daemon configuration's `configDir` when --daemon-config is given.
    #[arg(required_unless_present = "daemon_config")]
    dir: Option<PathBuf>,
    /// Also check the directory against this meshd configuration file (meshd.yaml): its own
    /// checks, and what this machine cannot enforce (STRICT without inbound capture).
    #[arg(long)]
    daemon_config: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum AuthzCommand {
    /// Decide connections: JSON Lines in (stdin or --input), one JSON decision per line out; or
    /// one connection described with --from/--to.
    Check(authz::CheckArgs),
}

/// `meshd config show`: one `key: value  # source` line per value, aligned.
fn show_config(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let flags = meshd_daemon::settings::Flags {
        config_dir: args.config_dir.clone(),
        istio_bundle: None,
    };
    let settings = match run::load_settings(args.config.as_deref(), &flags) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("meshd: {e}");
            return Ok(ExitCode::from(exit::CONFIG));
        }
    };
    let shown = settings.show();
    let width = shown
        .iter()
        .map(|s| s.key.len() + s.value.len() + 2)
        .max()
        .unwrap_or(0);
    for s in shown {
        let pair = format!("{}: {}", s.key, s.value);
        println!("{pair:width$}  # {}", s.source);
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are "errors" clap prints to stdout; they succeeded.
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::SUCCESS
            };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    // A panic on this thread is a bug: say so with EX_SOFTWARE, not Rust's 101. (The panic
    // message is printed by the default hook first.)
    let daemon = matches!(cli.command, Command::Run(_));
    let result = match std::panic::catch_unwind(move || dispatch(cli)) {
        Ok(result) => result,
        Err(_) => return ExitCode::from(exit::SOFTWARE),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("meshd: {e:#}");
            // The daemon's own failures are internal; a command's are the operation's.
            ExitCode::from(if daemon {
                exit::SOFTWARE
            } else {
                exit::FAILURE
            })
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run::run(&args),
        Command::Redirect(command) => redirect::run(&command),
        Command::Validate(args) => validate::run(
            args.dir.as_deref(),
            args.daemon_config.as_deref(),
            &args.config.root_namespace,
        ),
        Command::Authz(AuthzCommand::Check(args)) => authz::run(&args),
        Command::Ca(command) => ca::run(&command),
        Command::Config(ConfigCommand::Show(args)) => show_config(&args),
        Command::Status(args) => status::run(&args),
        Command::Generate(command) => generate::run(&command, Cli::command()),
    }
}
