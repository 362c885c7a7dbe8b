//! The held-connections measure: COUNT connections open at once, spread over several client
//! processes (each one's descriptors count against its own open-file limit, as an application
//! fleet's would), then closed; the proxies' memory and descriptors read around it.
//!
//! The parent starts PROCESSES copies of this tool (`meshd-bench hold-part`), each opening its
//! share and proving every connection with a 1-byte echo. A part prints `open` once all its
//! connections are up and closes them when its standard input closes, so the parent decides
//! when every part lets go, at once.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::client::{echo, open, status_kib};

/// One part: opens `count` connections, says `open`, holds them until stdin closes.
pub fn part(to: SocketAddr, count: usize) -> anyhow::Result<()> {
    let mut held = Vec::with_capacity(count);
    let mut back = [0u8; 1];
    for i in 0..count {
        let mut stream = open(to)?;
        echo(&mut stream, b"h", &mut back).with_context(|| format!("held connection {i}"))?;
        held.push(stream);
    }
    println!("open");
    let mut rest = Vec::new();
    // EOF (or any error) on stdin: the parent says close.
    let _ = std::io::stdin().read_to_end(&mut rest);
    drop(held);
    Ok(())
}

/// A process's figures at one moment.
#[derive(Debug, Clone, Copy)]
struct Reading {
    rss_kib: u64,
    anon_kib: u64,
    fds: u64,
}

fn read(pid: u32) -> anyhow::Result<Reading> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid}"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("descriptors of process {pid}"))?
        .count() as u64;
    Ok(Reading {
        rss_kib: status_kib(&status, "VmRSS:")
            .with_context(|| format!("no VmRSS for process {pid}"))?,
        anon_kib: status_kib(&status, "RssAnon:").unwrap_or(0),
        fds,
    })
}

fn start_parts(to: SocketAddr, count: usize, processes: usize) -> anyhow::Result<Vec<Child>> {
    let me = std::env::current_exe().context("this tool's path")?;
    let processes = processes.clamp(1, count.max(1));
    let mut parts = Vec::with_capacity(processes);
    for p in 0..processes {
        // The first parts take the remainder, so the shares add up to `count`.
        let share = count / processes + usize::from(p < count % processes);
        let child = Command::new(&me)
            .args([
                "hold-part",
                "--to",
                &to.to_string(),
                "--count",
                &share.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("start a hold part")?;
        parts.push(child);
    }
    for (p, child) in parts.iter_mut().enumerate() {
        let out = child.stdout.take().context("a part's stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        anyhow::ensure!(
            line.trim() == "open",
            "hold part {p} did not open its connections (it said {line:?})"
        );
    }
    Ok(parts)
}

/// Opens `count` connections over `processes` parts, holds them, closes them; the figures of
/// each of `pids` before, while held and `settle` after the close.
pub fn hold(
    to: SocketAddr,
    count: usize,
    processes: usize,
    pids: &[(String, u32)],
    settle: Duration,
) -> anyhow::Result<String> {
    let read_all =
        || -> anyhow::Result<Vec<Reading>> { pids.iter().map(|(_, p)| read(*p)).collect() };
    let before = read_all()?;
    let mut parts = start_parts(to, count, processes)?;
    // Let the proxies finish whatever per-connection work follows the first bytes.
    std::thread::sleep(Duration::from_secs(2));
    let during = read_all()?;
    for part in &mut parts {
        drop(part.stdin.take());
    }
    for part in &mut parts {
        let status = part.wait()?;
        anyhow::ensure!(status.success(), "a hold part failed: {status}");
    }
    std::thread::sleep(settle);
    let after = read_all()?;
    let mut out = String::new();
    let _ = writeln!(out, "hold_count {count}");
    for (i, (name, _)) in pids.iter().enumerate() {
        let (b, d, a) = (before[i], during[i], after[i]);
        let per_conn = (d.rss_kib as f64 - b.rss_kib as f64) * 1024.0 / count.max(1) as f64;
        let _ = writeln!(out, "hold_before_kib.{name} {}", b.rss_kib);
        let _ = writeln!(out, "hold_held_kib.{name} {}", d.rss_kib);
        let _ = writeln!(out, "hold_after_kib.{name} {}", a.rss_kib);
        let _ = writeln!(out, "hold_per_conn_bytes.{name} {per_conn:.0}");
        let _ = writeln!(out, "hold_anon_before_kib.{name} {}", b.anon_kib);
        let _ = writeln!(out, "hold_anon_after_kib.{name} {}", a.anon_kib);
        let _ = writeln!(out, "hold_fds.{name} {}", d.fds);
    }
    Ok(out.trim_end().to_owned())
}
