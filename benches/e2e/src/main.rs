//! `meshd-bench`: the measuring side of the end-to-end benchmark (`benches/e2e/run.sh`).
//!
//! The script runs it inside the benchmark's network namespaces: `echo` on the server side,
//! the measuring subcommands on the client side, where the capture rules decide whether a
//! connection goes direct, through the HAProxy relay or through meshd. Every measuring
//! subcommand prints its figures, one `key value` pair a line, which the script files under
//! the run and the mode; `report` turns those results into the table.
//!
//! Latency clients use blocking sockets on one thread, as a C client would: no runtime
//! wake-ups of their own in the figures.

mod client;
mod echo;
mod hold;
mod report;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "meshd end-to-end benchmark tool (driven by benches/e2e/run.sh)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Echo server: every connection gets back what it sends, until it closes.
    Echo {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
    /// N sequential connections, each: connect, write 1 byte, read it back, close.
    Connect {
        /// The echo server.
        #[arg(long)]
        to: SocketAddr,
        /// Number of connections.
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// Request/response on one connection: write SIZE bytes, read SIZE bytes back, COUNT times.
    Rr {
        /// The echo server.
        #[arg(long)]
        to: SocketAddr,
        /// Round trips.
        #[arg(long, default_value_t = 20_000)]
        count: usize,
        /// Bytes per request (and response).
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// Processes whose CPU time per round trip is reported, as NAME=PID, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = client::parse_pid)]
        pids: Vec<(String, u32)>,
    },
    /// Opens COUNT connections (each proven end to end by a 1-byte echo) from PROCESSES
    /// processes, holds them, closes them, and reports the RSS of PIDS before, while held, and
    /// SETTLE seconds after closing, with their descriptors while held.
    Hold {
        /// The echo server.
        #[arg(long)]
        to: SocketAddr,
        /// Connections held at once.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Client processes sharing them.
        #[arg(long, default_value_t = 1)]
        processes: usize,
        /// Processes to measure (the two proxies), as NAME=PID, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = client::parse_pid)]
        pids: Vec<(String, u32)>,
        /// Seconds to wait after closing before the last reading.
        #[arg(long, default_value_t = 30)]
        settle: u64,
    },
    /// One of `hold`'s client processes: opens COUNT connections, prints `open`, closes them
    /// when its standard input closes.
    #[command(hide = true)]
    HoldPart {
        /// The echo server.
        #[arg(long)]
        to: SocketAddr,
        /// Connections to hold.
        #[arg(long)]
        count: usize,
    },
    /// Runs iperf3 against HOST:PORT and reports Gbit/s and the CPU seconds per GB of payload
    /// that PIDS spent during the run.
    Bulk {
        /// iperf3 server address.
        #[arg(long)]
        to: SocketAddr,
        /// Seconds.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Parallel streams (`iperf3 -P`).
        #[arg(long, default_value_t = 1)]
        parallel: u32,
        /// Processes whose CPU time is measured, as NAME=PID, comma-separated.
        #[arg(long, value_delimiter = ',', value_parser = client::parse_pid)]
        pids: Vec<(String, u32)>,
    },
    /// The resident set size of a process, in KiB.
    Rss {
        /// The process.
        pid: u32,
    },
    /// Reads the results file the script wrote and prints the table.
    Report {
        /// `run mode key value` lines.
        results: PathBuf,
    },
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    // Holding thousands of connections needs more descriptors than the usual 1024 soft limit.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let line = match cli.command {
        Command::Echo { listen } => {
            echo::serve(listen)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Connect { to, count } => client::connect(to, count)?,
        Command::Rr {
            to,
            count,
            size,
            pids,
        } => client::request_response(to, count, size, &pids)?,
        Command::Hold {
            to,
            count,
            processes,
            pids,
            settle,
        } => hold::hold(to, count, processes, &pids, Duration::from_secs(settle))?,
        Command::HoldPart { to, count } => {
            hold::part(to, count)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Bulk {
            to,
            seconds,
            parallel,
            pids,
        } => client::bulk(to, seconds, parallel, &pids)?,
        Command::Rss { pid } => format!("rss_kib {}", client::rss_kib(pid)?),
        Command::Report { results } => report::print(&results)?,
    };
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
