//! What keeping the client's address (`redirect.originalSource`, ztunnel's `ENABLE_ORIG_SRC`)
//! needs from the kernel besides the socket option: the replies of a local workload must come
//! back to meshd, although they are addressed to a client on another machine.
//!
//! meshd connects to the workload from a socket bound to the client's address
//! (`IP_TRANSPARENT`) and marked with its own mark. The workload's replies are addressed to
//! the client, so the main routing table would send them out of the machine. The same three
//! pieces as istio-cni installs for ztunnel's in-pod mode bring them back:
//! - nftables (chains in table `inet meshd`, [`render_chains`]): a packet of meshd's reaching
//!   `prerouting` through `lo` (so a connection to a local address) marks its connection
//!   [`MARK`]; a reply of such a connection gets the connection's mark as its packet mark;
//! - a routing rule: packets marked [`MARK`] look up table [`TABLE`];
//! - table [`TABLE`]: every address is local (`local default dev lo`), so the reply is
//!   delivered on this machine, to meshd's socket.
//!
//! The mark, table and rule priority are fixed (istio-cni's) rather than configurable, so that
//! `meshd redirect uninstall`, which reads no configuration, removes exactly what install added.

use std::fmt::Write as _;

use crate::nft::{find_program, run};
use crate::{Error, RedirectConfig};

/// The connection and packet mark of a connection meshd made to a local workload, as
/// istio-cni's `InpodTProxyMark` (0x111), compared under [`MASK`].
pub const MARK: u32 = 0x111;
/// The bits of the mark [`MARK`] lives in, as istio-cni's `InpodTProxyMask`.
pub const MASK: u32 = 0xfff;
/// The routing table replies are looked up in, as istio-cni's `RouteTableInbound` (100).
pub const TABLE: u32 = 100;
/// The routing rule's priority, as istio-cni's (32764: before `main` at 32766).
pub const RULE_PRIORITY: u32 = 32764;
/// At most this many copies of the rule are removed: more than any install could have added.
const MAX_RULE_COPIES: usize = 16;

/// Appends the two chains of table `inet meshd` that mark and restore (`s` is inside the
/// table's braces). Priority -150 is `mangle`, spelled out as in the nat chains.
pub(crate) fn render_chains(cfg: &RedirectConfig, s: &mut String) {
    let own = format!(
        "meta mark & {:#010x} == {:#010x}",
        cfg.mark_mask,
        cfg.mark & cfg.mark_mask
    );
    // `writeln!` into a String cannot fail; the results are ignored deliberately.
    let _ = writeln!(s, "\tchain origsrc_prerouting {{");
    let _ = writeln!(
        s,
        "\t\ttype filter hook prerouting priority -150; policy accept;"
    );
    // Only meshd's packets looped back through `lo`: its connections to this machine's own
    // addresses. Its connections to other machines never pass here with its mark, so their
    // replies keep the main table.
    let _ = writeln!(
        s,
        "\t\tiifname \"lo\" {own} ct mark set ct mark & {:#010x} | {MARK:#010x}",
        !MASK
    );
    let _ = writeln!(s, "\t}}");
    let _ = writeln!(s, "\tchain origsrc_output {{");
    // A `route` chain: the kernel routes the packet again when the chain changes its mark.
    let _ = writeln!(
        s,
        "\t\ttype route hook output priority -150; policy accept;"
    );
    let _ = writeln!(
        s,
        "\t\tct direction reply ct mark & {MASK:#010x} == {MARK:#010x} meta mark set ct mark"
    );
    let _ = writeln!(s, "\t}}");
}

/// The address families and their "every address" prefix.
const FAMILIES: [(&str, &str); 2] = [("-4", "0.0.0.0/0"), ("-6", "::/0")];

/// Adds the rule and the table's route for both families; adding what is there already is
/// not an error, so install can run again.
pub(crate) fn install_routes() -> Result<(), Error> {
    for (family, all) in FAMILIES {
        // `replace` adds or leaves the one route: idempotent by itself.
        let route = route_args(family, "replace", all);
        match ip(&route) {
            Ok(_) => {}
            // A kernel without IPv6 has nothing to route back.
            Err(e) if family == "-6" && no_family(&e) => {
                tracing::warn!("IPv6 is off in this kernel: original source for IPv4 only");
                continue;
            }
            Err(e) => return Err(e),
        }
        match ip(&rule_args(family, "add")) {
            Ok(_) => {}
            // The kernel refuses a second identical rule (NLM_F_EXCL, Linux 4.11 and later).
            Err(Error::CommandFailed { stderr, .. }) if stderr.contains("File exists") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes the rule (every copy) and the table's route for both families; what is absent is
/// not an error, nor is a machine without `ip` (nothing can have been installed).
pub(crate) fn remove_routes() -> Result<(), Error> {
    if find_program("ip").is_none() {
        return Ok(());
    }
    for (family, all) in FAMILIES {
        for _ in 0..MAX_RULE_COPIES {
            match ip(&rule_args(family, "del")) {
                Ok(_) => {}
                Err(e) if absent(&e) || no_family(&e) => break,
                Err(e) => return Err(e),
            }
        }
        match ip(&route_args(family, "del", all)) {
            Ok(_) => {}
            Err(e) if absent(&e) || no_family(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Original source's routing as `ip` prints it: the rule and table 100's routes, each line
/// prefixed with its family (`-4`, `-6`); empty when none is installed.
pub fn show_routes() -> Result<Vec<String>, Error> {
    let mut lines = Vec::new();
    if find_program("ip").is_none() {
        return Ok(lines);
    }
    let table = TABLE.to_string();
    let rule = format!("fwmark {MARK:#x}/{MASK:#x} lookup {TABLE}");
    for (family, _) in FAMILIES {
        let words = |w: &[&str]| w.iter().map(ToString::to_string).collect::<Vec<_>>();
        let rules = match ip(&words(&[family, "rule", "show"])) {
            Ok(out) => out,
            Err(e) if no_family(&e) => continue,
            Err(e) => return Err(e),
        };
        let ours = rules
            .lines()
            .filter(|l| l.starts_with(&format!("{RULE_PRIORITY}:")) && l.contains(&rule));
        lines.extend(ours.map(|l| format!("{family} rule {}", l.trim())));
        match ip(&words(&[family, "route", "show", "table", &table])) {
            Ok(out) => lines.extend(
                out.lines()
                    .map(|l| format!("{family} route table {TABLE}: {}", l.trim())),
            ),
            Err(e) if absent(&e) || no_family(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(lines)
}

/// `ip FAMILY rule ACTION fwmark 0x111/0xfff lookup 100 pref 32764`.
fn rule_args(family: &str, action: &str) -> Vec<String> {
    let words = [
        family,
        "rule",
        action,
        "fwmark",
        &format!("{MARK:#x}/{MASK:#x}"),
        "lookup",
        &TABLE.to_string(),
        "pref",
        &RULE_PRIORITY.to_string(),
    ];
    words.iter().map(ToString::to_string).collect()
}

/// `ip FAMILY route ACTION local ALL dev lo table 100`.
fn route_args(family: &str, action: &str, all: &str) -> Vec<String> {
    let words = [
        family,
        "route",
        action,
        "local",
        all,
        "dev",
        "lo",
        "table",
        &TABLE.to_string(),
    ];
    words.iter().map(ToString::to_string).collect()
}

/// Runs `ip ARGS`.
fn ip(args: &[String]) -> Result<String, Error> {
    let program = find_program("ip").ok_or_else(|| Error::ProgramNotFound {
        program: "ip".into(),
        package: "iproute2".into(),
    })?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&program, &args, None)
}

/// Whether `ip` failed because the rule or route is not there (messages in the C locale,
/// which `run` sets): ENOENT for a rule, ESRCH for a route, and iproute2's own message for a
/// route in a table that has none.
fn absent(e: &Error) -> bool {
    matches!(e, Error::CommandFailed { stderr, .. }
        if stderr.contains("No such file or directory")
            || stderr.contains("No such process")
            || stderr.contains("FIB table does not exist"))
}

/// Whether `ip` failed because the kernel lacks the address family (IPv6 off).
fn no_family(e: &Error) -> bool {
    matches!(e, Error::CommandFailed { stderr, .. }
        if stderr.contains("Address family not supported"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // The rule and the route are istio-cni's, spelled as iproute2 takes them.
    #[test]
    fn commands_are_istio_cnis() {
        assert_eq!(
            rule_args("-4", "add").join(" "),
            "-4 rule add fwmark 0x111/0xfff lookup 100 pref 32764"
        );
        assert_eq!(
            route_args("-6", "replace", "::/0").join(" "),
            "-6 route replace local ::/0 dev lo table 100"
        );
    }

    // Absent rules and routes are told from real failures by their C-locale messages.
    #[test]
    fn absent_and_no_family() {
        let failed = |stderr: &str| Error::CommandFailed {
            command: "ip".into(),
            status: "exit status: 2".into(),
            stderr: stderr.into(),
        };
        assert!(absent(&failed(
            "RTNETLINK answers: No such file or directory"
        )));
        assert!(absent(&failed("RTNETLINK answers: No such process")));
        assert!(absent(&failed("Error: FIB table does not exist.")));
        assert!(!absent(&failed(
            "RTNETLINK answers: Operation not permitted"
        )));
        assert!(no_family(&failed(
            "RTNETLINK answers: Address family not supported by protocol"
        )));
        assert!(!no_family(&failed("RTNETLINK answers: File exists")));
    }

    // The chains mark meshd's looped-back connections and restore the mark on their replies,
    // under meshd's configured mark.
    #[test]
    fn chains() {
        let cfg = RedirectConfig {
            mark: 0x10000,
            mark_mask: 0xff0000,
            ..RedirectConfig::default()
        };
        let mut s = String::new();
        render_chains(&cfg, &mut s);
        assert!(s.contains("type filter hook prerouting priority -150; policy accept;"));
        assert!(s.contains(
            "iifname \"lo\" meta mark & 0x00ff0000 == 0x00010000 ct mark set ct mark & 0xfffff000 | 0x00000111"
        ), "{s}");
        assert!(s.contains("type route hook output priority -150; policy accept;"));
        assert!(s.contains(
            "ct direction reply ct mark & 0x00000fff == 0x00000111 meta mark set ct mark"
        ));
    }
}
