//! The results table: medians with min–max over the runs, and ratios taken within each run.
//!
//! The results file holds `run mode key value` lines. Ratios are computed run by run (meshd's
//! figure over the direct figure of the same run) and only then summarised, because the
//! direct baseline itself moves from run to run on these VMs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

const MODES: [&str; 3] = ["direct", "relay", "meshd"];

/// Human names for the keys the script records, in table order; other keys follow by name.
const LABELS: &[(&str, &str)] = &[
    ("bulk1.gbps", "bulk, 1 stream, Gbit/s"),
    ("bulk8.gbps", "bulk, 8 streams, Gbit/s"),
    (
        "bulk1.cpu_s_per_gb.sum",
        "CPU s per GB, both sides summed, 1 stream",
    ),
    (
        "bulk1.cpu_s_per_gb.client",
        "CPU s per GB, client side, 1 stream",
    ),
    (
        "bulk1.cpu_s_per_gb.server",
        "CPU s per GB, server side, 1 stream",
    ),
    (
        "bulk8.cpu_s_per_gb.sum",
        "CPU s per GB, both sides summed, 8 streams",
    ),
    (
        "connect.connect_p50_us",
        "new connection + 1 B echo, p50, µs",
    ),
    (
        "connect.connect_p99_us",
        "new connection + 1 B echo, p99, µs",
    ),
    ("cold.us", "first connection after a fresh start, µs"),
    (
        "hbone.connections",
        "HBONE connections after the 2 000 connections",
    ),
    ("rr.rr_p50_us", "1 KiB request/response, p50, µs"),
    ("rr.rr_p99_us", "1 KiB request/response, p99, µs"),
    ("rr.rr_rate", "1 KiB request/response, round trips/s"),
    (
        "rr.cpu_us_per_trip.client",
        "1 KiB request/response, CPU µs per round trip, client side",
    ),
    (
        "rr.cpu_us_per_trip.server",
        "1 KiB request/response, CPU µs per round trip, server side",
    ),
    (
        "idle.rss_kib.client",
        "RSS idle after start, client side, KiB",
    ),
    (
        "idle.rss_kib.server",
        "RSS idle after start, server side, KiB",
    ),
    (
        "hold.hold_per_conn_bytes.client",
        "RSS per held connection, client side, bytes",
    ),
    (
        "hold.hold_per_conn_bytes.server",
        "RSS per held connection, server side, bytes",
    ),
    (
        "hold.hold_before_kib.client",
        "RSS before the held connections, client side, KiB",
    ),
    (
        "hold.hold_held_kib.client",
        "RSS while held, client side, KiB",
    ),
    (
        "hold.hold_after_kib.client",
        "RSS SETTLE s after they close, client side, KiB",
    ),
    (
        "hold.hold_anon_before_kib.client",
        "anonymous RSS before, client side, KiB",
    ),
    (
        "hold.hold_anon_after_kib.client",
        "anonymous RSS SETTLE s after, client side, KiB",
    ),
    (
        "hold.hold_before_kib.server",
        "RSS before the held connections, server side, KiB",
    ),
    (
        "hold.hold_held_kib.server",
        "RSS while held, server side, KiB",
    ),
    (
        "hold.hold_after_kib.server",
        "RSS SETTLE s after they close, server side, KiB",
    ),
    (
        "hold.hold_anon_before_kib.server",
        "anonymous RSS before, server side, KiB",
    ),
    (
        "hold.hold_anon_after_kib.server",
        "anonymous RSS SETTLE s after, server side, KiB",
    ),
    ("hold.hold_count", "connections held"),
    (
        "hold.hold_fds.client",
        "descriptors while held, client side",
    ),
    (
        "hold.hold_fds.server",
        "descriptors while held, server side",
    ),
];

/// key → mode → run → value.
type Results = BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>;

fn parse(text: &str) -> anyhow::Result<Results> {
    let mut results = Results::new();
    for (n, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [run, mode, key, value] = fields[..] else {
            anyhow::bail!("line {}: expected `run mode key value`: {line:?}", n + 1);
        };
        let value: f64 = value
            .parse()
            .with_context(|| format!("line {}: {value:?}", n + 1))?;
        results
            .entry(key.to_owned())
            .or_default()
            .entry(mode.to_owned())
            .or_default()
            .insert(run.to_owned(), value);
    }
    Ok(results)
}

/// Median and range of `values`, or `None` when there are none.
fn summary(mut values: Vec<f64>) -> Option<(f64, f64, f64)> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    Some((median, values[0], values[n - 1]))
}

fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn cell(values: Vec<f64>) -> String {
    match summary(values) {
        None => "—".to_owned(),
        Some((m, lo, hi)) if lo == hi => number(m),
        Some((m, lo, hi)) => format!("{} ({}–{})", number(m), number(lo), number(hi)),
    }
}

/// Per-run `f(a, b)` over the runs where both modes have the key.
fn paired(
    by_mode: &BTreeMap<String, BTreeMap<String, f64>>,
    a: &str,
    b: &str,
    f: impl Fn(f64, f64) -> f64,
) -> Vec<f64> {
    let (Some(a), Some(b)) = (by_mode.get(a), by_mode.get(b)) else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|(run, x)| b.get(run).map(|y| f(*x, *y)))
        .collect()
}

fn mode_values(by_mode: &BTreeMap<String, BTreeMap<String, f64>>, mode: &str) -> Vec<f64> {
    by_mode
        .get(mode)
        .map(|runs| runs.values().copied().collect())
        .unwrap_or_default()
}

/// The markdown table for the results file at `path`.
pub fn print(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let results = parse(&text)?;
    let runs: std::collections::BTreeSet<&String> = results
        .values()
        .flat_map(|m| m.values().flat_map(|r| r.keys()))
        .collect();
    let mut keys: Vec<(&str, &str)> = LABELS
        .iter()
        .filter(|(k, _)| results.contains_key(*k))
        .copied()
        .collect();
    for key in results.keys() {
        // Byte counts are only the denominators of the other figures.
        if !LABELS.iter().any(|(k, _)| k == key) && !key.ends_with(".bytes") {
            keys.push((key.as_str(), key.as_str()));
        }
    }
    let mut out = format!(
        "{} runs; median (min–max); ratios are taken within each run, then summarised\n\n",
        runs.len()
    );
    out.push_str("| measure | direct | relay (HAProxy, no TLS) | meshd | meshd ÷ direct | relay ÷ direct | meshd ÷ relay |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    let ratio = |x: f64, y: f64| x / y;
    for (key, label) in keys {
        let by_mode = &results[key];
        // Counters that never moved (a system call neither proxy makes) say nothing.
        if by_mode
            .values()
            .flat_map(|runs| runs.values())
            .all(|v| *v == 0.0)
        {
            continue;
        }
        let _ = write!(out, "| {label} |");
        for mode in MODES {
            let _ = write!(out, " {} |", cell(mode_values(by_mode, mode)));
        }
        for (a, b) in [("meshd", "direct"), ("relay", "direct"), ("meshd", "relay")] {
            let _ = write!(out, " {} |", cell(paired(by_mode, a, b, ratio)));
        }
        out.push('\n');
        // Latencies also as time added over direct: how issue 13 states its targets.
        if key.ends_with("p50_us") && by_mode.contains_key("direct") {
            let _ = write!(out, "| {label}, added over direct | — |");
            for mode in ["relay", "meshd"] {
                let added = paired(by_mode, mode, "direct", |x, y| x - y);
                let _ = write!(out, " {} |", cell(added));
            }
            out.push_str(" — | — | — |\n");
            // Issue 26 states its latency target against the relay of the same run.
            let over_relay = paired(by_mode, "meshd", "relay", |x, y| x - y);
            if !over_relay.is_empty() {
                let _ = writeln!(
                    out,
                    "| {label}, meshd minus relay | — | — | {} | — | — | — |",
                    cell(over_relay)
                );
            }
        }
    }
    Ok(out.trim_end().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Ratios pair values of the same run, and the median of three is the middle one.
    #[test]
    fn ratios_within_runs() {
        let text = "1 direct bulk1.gbps 10\n1 meshd bulk1.gbps 5\n\
                    2 direct bulk1.gbps 20\n2 meshd bulk1.gbps 16\n\
                    3 direct bulk1.gbps 30\n3 meshd bulk1.gbps 27\n";
        let results = parse(text).unwrap();
        let by_mode = &results["bulk1.gbps"];
        let mut r = paired(by_mode, "meshd", "direct", |x, y| x / y);
        r.sort_by(f64::total_cmp);
        assert_eq!(r, vec![0.5, 0.8, 0.9]);
        assert_eq!(summary(r), Some((0.8, 0.5, 0.9)));
    }

    // A malformed line is an error naming the line.
    #[test]
    fn bad_line() {
        let err = parse("1 direct key\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
