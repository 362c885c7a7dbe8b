//! Applying, removing and reading table `inet meshd` through the `nft` binary.
//!
//! No netlink crate: `nft -f` is the stable interface, applies a script as one atomic
//! transaction, and is what an operator would run by hand.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, RedirectConfig, origsrc, render};

/// The nftables table meshd owns (family `inet`, so one table covers IPv4 and IPv6).
pub const TABLE_NAME: &str = "meshd";

/// Where `nft` lives when `PATH` lacks the sbin directories (e.g. a non-root service user).
const SBIN_DIRS: [&str; 2] = ["/usr/sbin", "/sbin"];

/// Installs (or atomically replaces) table `inet meshd` with the rules for `cfg`; with
/// `originalSource`, first the routing rule and table that bring the workloads' replies back.
/// Running it again changes nothing.
pub fn install(cfg: &RedirectConfig) -> Result<(), Error> {
    cfg.validate()?;
    if cfg.original_source {
        // Routes before marks: a mark with nowhere to route it would send replies out.
        origsrc::install_routes()?;
    } else {
        // Turning the key off and installing again leaves nothing of it behind.
        origsrc::remove_routes()?;
    }
    nft(&["-f", "-"], Some(&render(cfg)))?;
    tracing::info!(outbound_port = cfg.outbound_port, inbound_port = ?cfg.inbound_port, original_source = cfg.original_source, "installed nftables table inet {TABLE_NAME}");
    Ok(())
}

/// Removes table `inet meshd` and original source's routing rule and table route; succeeds
/// when they are already absent.
pub fn uninstall() -> Result<(), Error> {
    // Declaring then deleting in one transaction deletes the table whether or not it existed
    // (nft's `destroy` does the same but needs nftables 1.0.8, newer than Debian 12's).
    let script = format!("table inet {TABLE_NAME} {{}}\ndelete table inet {TABLE_NAME}\n");
    nft(&["-f", "-"], Some(&script))?;
    origsrc::remove_routes()?;
    tracing::info!("removed nftables table inet {TABLE_NAME}");
    Ok(())
}

/// The current table `inet meshd` as `nft list table` prints it, or `None` when absent.
pub fn show() -> Result<Option<String>, Error> {
    match nft(&["list", "table", "inet", TABLE_NAME], None) {
        Ok(out) => Ok(Some(out)),
        Err(err @ Error::CommandFailed { .. }) => {
            // Tell "no such table" from real failures without parsing nft's (possibly
            // localised) message: list the table names and look for ours.
            let tables = nft(&["list", "tables", "inet"], None)?;
            let ours = format!("table inet {TABLE_NAME}");
            if tables.lines().any(|l| l.trim() == ours) {
                Err(err)
            } else {
                Ok(None)
            }
        }
        Err(err) => Err(err),
    }
}

/// Runs `nft ARGS`, feeding `stdin` if given, and returns its standard output.
fn nft(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let program = find_program("nft").ok_or_else(|| Error::ProgramNotFound {
        program: "nft".into(),
        package: "nftables".into(),
    })?;
    run(&program, args, stdin)
}

/// Looks `name` up on `PATH`, then in the sbin directories.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SBIN_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `program ARGS` to completion; a non-zero exit becomes [`Error::CommandFailed`].
pub(crate) fn run(program: &Path, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let spawn_err = |e: std::io::Error| Error::Spawn {
        command: command.clone(),
        message: e.to_string(),
    };
    let mut child = Command::new(program)
        .args(args)
        // English messages in errors, whatever the operator's locale.
        .env("LC_ALL", "C")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Dropping the pipe at the end of this block closes it, so nft sees end of input.
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::CommandFailed {
            command,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A missing program is reported as such, not as a spawn failure.
    #[test]
    fn missing_program() {
        assert_eq!(find_program("meshd-no-such-program"), None);
        let err = Error::ProgramNotFound {
            program: "nft".into(),
            package: "nftables".into(),
        };
        assert_eq!(err.to_string(), "nft not found: install nftables");
    }

    // A failing command's error names the command line and carries its stderr.
    #[test]
    fn failure_names_command_and_stderr() {
        let sh = find_program("sh").unwrap();
        let err = run(&sh, &["-c", "echo oops >&2; exit 3"], None).unwrap_err();
        assert_eq!(
            err,
            Error::CommandFailed {
                command: format!("{} -c echo oops >&2; exit 3", sh.display()),
                status: "exit status: 3".into(),
                stderr: "oops".into(),
            }
        );
    }

    // Standard input reaches the program and its output comes back.
    #[test]
    fn stdin_roundtrip() {
        let cat = find_program("cat").unwrap();
        assert_eq!(run(&cat, &[], Some("hello\n")).unwrap(), "hello\n");
    }
}
