//! meshd's exit statuses: sysexits(3)'s where one fits, so scripts and systemd can tell a usage
//! error from a configuration error from a meshd that cannot be reached. The unit's
//! `RestartPreventExitStatus=78` depends on [`CONFIG`]; the man page's EXIT STATUS section is
//! [`TABLE`].

/// The command did what was asked.
pub const SUCCESS: u8 = 0;
/// The answer is no: `meshd validate` found errors, `meshd authz check` a denial or a malformed
/// line; or the operation failed for a reason the message gives (a CA that already exists).
pub const FAILURE: u8 = 1;
/// EX_USAGE: the command line is wrong (unknown flag, bad value, missing argument).
pub const USAGE: u8 = 64;
/// EX_UNAVAILABLE: what the command needs is not there (`meshd status` cannot reach meshd).
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error (the runtime cannot start, a bug that panicked).
pub const SOFTWARE: u8 = 70;
/// EX_CONFIG: the configuration is rejected (meshd.yaml or the directory, at start).
pub const CONFIG: u8 = 78;

/// Each status and what it means, for the man page and `--help`.
pub const TABLE: [(u8, &str); 6] = [
    (SUCCESS, "success"),
    (
        FAILURE,
        "the answer is no (meshd validate found errors, meshd authz check denied or read a malformed line), or the operation failed as the message says",
    ),
    (
        USAGE,
        "usage error: an unknown flag or subcommand, a bad or missing value (EX_USAGE)",
    ),
    (
        UNAVAILABLE,
        "what the command needs cannot be reached: meshd status finds no meshd (EX_UNAVAILABLE)",
    ),
    (
        SOFTWARE,
        "internal error: the runtime could not start, or a bug (EX_SOFTWARE)",
    ),
    (
        CONFIG,
        "the configuration is rejected: meshd.yaml or the configuration directory at start; systemd does not restart meshd on it (EX_CONFIG)",
    ),
];

/// `--help`'s closing lines: the statuses, one a line.
pub fn help() -> String {
    let mut text = String::from("Exit status:\n");
    for (code, meaning) in TABLE {
        text.push_str(&format!("  {code:<3} {meaning}\n"));
    }
    text
}
