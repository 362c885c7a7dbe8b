//! Where `meshd run` logs: natively to journald when systemd connected its stderr to the
//! journal, else text (key=value) or JSON lines on stderr.
//!
//! Under systemd every line written to stderr reaches the journal at one priority (info), with
//! meshd's own timestamp in front of journald's, so `journalctl -p warning` showed nothing.
//! Sent over journald's native protocol instead, each record carries its priority, no second
//! timestamp, and its fields as journal fields: `TARGET` (`access` for the access log),
//! `CODE_FILE`/`CODE_LINE`, and the access log's connection fields (`SRC_ADDR`, `DST_ADDR`,
//! `DECISION`, `POLICY`, … from `src.addr`, `dst.addr`, …), so
//! `journalctl -u meshd TARGET=access DECISION=deny` selects denials.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use meshd_admin::LogLevelFn;
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// journald's native protocol when stderr is the journal (systemd sets `JOURNAL_STREAM`),
    /// else text.
    Auto,
    /// key=value fields on stderr.
    Text,
    /// One JSON object per line on stderr.
    Json,
    /// journald's native protocol (/run/systemd/journal/socket); text on stderr when the
    /// socket cannot be reached.
    Journal,
}

/// The filtered registry the output layer sits on.
type Filtered = Layered<reload::Layer<EnvFilter, Registry>, Registry>;
/// The layer that writes the records.
type Output = Box<dyn Layer<Filtered> + Send + Sync>;

/// Installs the log subscriber (filter from `RUST_LOG`, default `info`) and returns the
/// function `/logging` changes the filter with.
pub fn init(format: LogFormat) -> LogLevelFn {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let journal = match format {
        LogFormat::Auto if stderr_is_journal() => Some(journald()),
        LogFormat::Journal => Some(journald()),
        _ => None,
    };
    let (output, unreachable): (Output, _) = match (journal, format) {
        (Some(Ok(layer)), _) => (Box::new(layer), None),
        (Some(Err(e)), _) => (text(), Some(e)),
        (None, LogFormat::Json) => (
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .json()
                    .flatten_event(true),
            ),
            None,
        ),
        (None, _) => (text(), None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .init();
    if let Some(e) = unreachable {
        tracing::warn!(error = %e, "cannot reach journald's socket, logging text to stderr");
    }
    Arc::new(move |level: &str| {
        if !level.is_empty() {
            let filter =
                EnvFilter::try_new(level).map_err(|e| format!("bad log filter {level:?}: {e}"))?;
            handle.reload(filter).map_err(|e| e.to_string())?;
            tracing::info!(filter = level, "log filter changed");
        }
        handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string())
    })
}

/// key=value lines on stderr.
fn text() -> Output {
    Box::new(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only help a person at a terminal; log files get plain text.
            .with_ansi(std::io::stderr().is_terminal()),
    )
}

/// The journald layer: tracing's levels as the syslog priorities their names say (info is
/// `info`, not the crate's default `notice`, so `journalctl -p notice` is not every line),
/// and fields under their own names (no `F` prefix: `DECISION=deny`, not `FDECISION=deny`).
/// No meshd field is named as one of journald's own (`MESSAGE`, `PRIORITY`, `CODE_*`,
/// `SYSLOG_*`, `ERRNO`); the trusted ones (`_PID`, `_SYSTEMD_UNIT`, …) journald sets itself.
fn journald() -> std::io::Result<tracing_journald::Layer> {
    let priorities = PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    };
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_priority_mappings(priorities)
        .with_syslog_identifier("meshd".to_string()))
}

/// Whether stderr is the journal stream systemd made: `JOURNAL_STREAM` is `device:inode` of
/// it. Checked against stderr itself, as systemd.exec(5) asks: a child meshd whose stderr was
/// redirected (a shell pipeline under the unit) inherits the variable but not the stream.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else {
        return false;
    };
    // fstat of our stderr, through a duplicate of the descriptor (std's File closes its own).
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == device && m.ino() == inode)
}
