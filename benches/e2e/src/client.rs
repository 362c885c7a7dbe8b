//! The measuring clients: connection setup, request/response, held connections, bulk.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long any single socket operation may take before the measurement counts as failed.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// `/proc/PID/stat` counts CPU time in clock ticks of USER_HZ, which Linux fixes at 100 on
/// every architecture it exposes to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// Parses `NAME=PID`.
pub fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=PID"))?;
    let pid = pid.parse().map_err(|e| format!("{s:?}: {e}"))?;
    Ok((name.to_owned(), pid))
}

pub(crate) fn open(to: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream =
        TcpStream::connect_timeout(&to, IO_TIMEOUT).with_context(|| format!("connect {to}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

/// Writes `message` and reads as many bytes back; an early close is an error.
pub(crate) fn echo(stream: &mut TcpStream, message: &[u8], back: &mut [u8]) -> anyhow::Result<()> {
    stream.write_all(message)?;
    stream
        .read_exact(&mut back[..message.len()])
        .context("echo: connection closed or timed out")?;
    if back[..message.len()] != *message {
        bail!("echo returned different bytes");
    }
    Ok(())
}

/// Sorted durations' percentile (nearest rank), in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

fn latency_lines(prefix: &str, mut samples: Vec<Duration>) -> String {
    samples.sort_unstable();
    let mut out = String::new();
    let _ = writeln!(out, "{prefix}_p50_us {:.1}", percentile_us(&samples, 50.0));
    let _ = write!(out, "{prefix}_p99_us {:.1}", percentile_us(&samples, 99.0));
    out
}

/// `count` sequential connect + 1-byte echo + close.
pub fn connect(to: SocketAddr, count: usize) -> anyhow::Result<String> {
    let mut samples = Vec::with_capacity(count);
    let mut back = [0u8; 1];
    for i in 0..count {
        let start = Instant::now();
        let mut stream = open(to)?;
        echo(&mut stream, b"x", &mut back).with_context(|| format!("connection {i}"))?;
        drop(stream);
        samples.push(start.elapsed());
    }
    if count == 1 {
        return Ok(format!("us {:.1}", samples[0].as_secs_f64() * 1e6));
    }
    Ok(latency_lines("connect", samples))
}

/// `count` round trips of `size` bytes each way on one connection; with the CPU time `pids`
/// spent per round trip (utime + stime, in µs: ticks of 10 ms over the whole run).
pub fn request_response(
    to: SocketAddr,
    count: usize,
    size: usize,
    pids: &[(String, u32)],
) -> anyhow::Result<String> {
    let cpu_before = cpu_all(pids)?;
    let mut stream = open(to)?;
    let request: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    let all = Instant::now();
    for _ in 0..count {
        let start = Instant::now();
        echo(&mut stream, &request, &mut back)?;
        samples.push(start.elapsed());
    }
    let rate = count as f64 / all.elapsed().as_secs_f64();
    drop(stream);
    let cpu_after = cpu_all(pids)?;
    let mut out = format!("{}\nrr_rate {rate:.0}", latency_lines("rr", samples));
    for (i, (name, _)) in pids.iter().enumerate() {
        let us = (cpu_after[i] - cpu_before[i]) * 1e6 / count as f64;
        let _ = write!(out, "\ncpu_us_per_trip.{name} {us:.2}");
    }
    Ok(out)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    status_kib(&status, "VmRSS:").with_context(|| format!("no VmRSS for process {pid}"))
}

/// A `Field:   123 kB` line of `/proc/PID/status`, in KiB.
pub(crate) fn status_kib(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid}"))?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // plain numbers, utime and stime being fields 14 and 15 of the whole line.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("bad /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .with_context(|| format!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // `rest` starts at field 3, so fields 14 and 15 are at indexes 11 and 12.
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}

/// utime + stime of each of `pids`, in seconds.
fn cpu_all(pids: &[(String, u32)]) -> anyhow::Result<Vec<f64>> {
    pids.iter().map(|(_, p)| cpu_seconds(*p)).collect()
}

/// One iperf3 run; Gbit/s received and, per process, CPU seconds per GB of payload.
pub fn bulk(
    to: SocketAddr,
    seconds: u32,
    parallel: u32,
    pids: &[(String, u32)],
) -> anyhow::Result<String> {
    let before = cpu_all(pids)?;
    let output = Command::new("iperf3")
        .args(["-c", &to.ip().to_string(), "-p", &to.port().to_string()])
        .args([
            "-t",
            &seconds.to_string(),
            "-P",
            &parallel.to_string(),
            "-J",
        ])
        .output()
        .context("run iperf3 (Debian package iperf3)")?;
    let after = cpu_all(pids)?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .with_context(|| format!("iperf3 output: {}", String::from_utf8_lossy(&output.stderr)))?;
    if let Some(error) = json.get("error") {
        bail!("iperf3: {error}");
    }
    let received = &json["end"]["sum_received"];
    let (Some(bits), Some(bytes)) = (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_f64(),
    ) else {
        bail!("iperf3 JSON has no end.sum_received");
    };
    let gb = bytes / 1e9;
    let mut out = format!("gbps {:.3}\nbytes {bytes:.0}", bits / 1e9);
    let mut sum = 0.0;
    for (i, (name, _)) in pids.iter().enumerate() {
        let cpu = after[i] - before[i];
        sum += cpu;
        let _ = write!(out, "\ncpu_s_per_gb.{name} {:.3}", cpu / gb);
    }
    if !pids.is_empty() {
        let _ = write!(out, "\ncpu_s_per_gb.sum {:.3}", sum / gb);
    }
    Ok(out)
}
