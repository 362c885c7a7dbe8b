//! The crate's one error type.

/// Why a redirect operation failed.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A required program is not installed (or not on `PATH`, `/usr/sbin`, `/sbin`).
    #[error("{program} not found: install {package}")]
    ProgramNotFound {
        /// The program looked for, e.g. `nft`.
        program: String,
        /// The Debian/Ubuntu package that provides it, e.g. `nftables`.
        package: String,
    },
    /// A program exists but could not be started or talked to.
    #[error("`{command}` could not be run: {message}")]
    Spawn {
        /// The command line.
        command: String,
        /// The operating system's reason.
        message: String,
    },
    /// A program ran and reported failure.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status, e.g. `exit status: 1`.
        status: String,
        /// What it printed on standard error, trimmed.
        stderr: String,
    },
    /// The configuration cannot be turned into a sound ruleset.
    #[error("invalid redirect config: {field}: {message}")]
    InvalidConfig {
        /// The camelCase field at fault, as written in the config file.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}
