//! `process_*` metrics, read from `/proc/self` at scrape time.
//!
//! ztunnel exports `process_open_fds` and `process_max_fds`; the others are the standard
//! Prometheus process metrics (client_golang's names), so the usual process dashboards work on
//! a VM where no cAdvisor measures the container. Linux only: elsewhere, or when `/proc` cannot
//! be read, a metric is left out of the scrape rather than reported as zero.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Clock ticks per second when `/proc/self/auxv` does not say (`USER_HZ` on every Linux
/// architecture meshd builds for).
const DEFAULT_CLOCK_TICKS: u64 = 100;
/// Page size when `/proc/self/auxv` does not say.
const DEFAULT_PAGE_SIZE: u64 = 4096;
/// auxv entry types (`<linux/auxvec.h>`).
const AT_PAGESZ: u64 = 6;
const AT_CLKTCK: u64 = 17;

/// The `process_*` collector.
#[derive(Debug)]
pub(crate) struct ProcessCollector {
    clock_ticks: u64,
    page_size: u64,
    /// Boot time (Unix seconds), to turn the start time in ticks since boot into a timestamp.
    boot_time: Option<u64>,
}

impl ProcessCollector {
    pub(crate) fn new() -> ProcessCollector {
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let positive = |v: u64| (v > 0).then_some(v);
        ProcessCollector {
            clock_ticks: auxv_value(&auxv, AT_CLKTCK)
                .and_then(positive)
                .unwrap_or(DEFAULT_CLOCK_TICKS),
            page_size: auxv_value(&auxv, AT_PAGESZ)
                .and_then(positive)
                .unwrap_or(DEFAULT_PAGE_SIZE),
            boot_time: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| boot_time(&s)),
        }
    }
}

/// The fields of `/proc/self/stat` meshd reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// User plus system CPU time, in clock ticks.
    pub(crate) cpu_ticks: u64,
    /// Threads.
    pub(crate) threads: u64,
    /// Start time, in clock ticks since boot.
    pub(crate) start_ticks: u64,
    /// Virtual memory size, in bytes.
    pub(crate) virtual_bytes: u64,
    /// Resident set size, in pages.
    pub(crate) resident_pages: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)). The command name is in parentheses and may hold spaces
/// and parentheses itself, so fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after) = text.rsplit_once(')')?;
    // Field 3 (state) is the first after the name.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n.checked_sub(3)?)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        threads: field(20)?,
        start_ticks: field(22)?,
        virtual_bytes: field(23)?,
        resident_pages: field(24)?,
    })
}

/// The soft `Max open files` limit from `/proc/<pid>/limits`; `None` when unlimited.
pub(crate) fn parse_max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `btime` from `/proc/stat`.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// An entry of the auxiliary vector: native-endian (type, value) word pairs.
fn auxv_value(auxv: &[u8], wanted: u64) -> Option<u64> {
    const WORD: usize = std::mem::size_of::<usize>();
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (kind, value) = pair.split_at(WORD);
        let word = |b: &[u8]| b.try_into().ok().map(usize::from_ne_bytes);
        if word(kind)? as u64 == wanted {
            word(value).map(|v| v as u64)
        } else {
            None
        }
    })
}

fn open_fds() -> Option<u64> {
    // The directory's own descriptor is listed too.
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(entries.saturating_sub(1))
}

fn gauge<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: N,
) -> Result<(), std::fmt::Error>
where
    ConstGauge<N>: EncodeMetric,
{
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if let Some(fds) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Number of open file descriptors",
                fds,
            )?;
        }
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        if let Some(max) = limits.as_deref().and_then(parse_max_open_files) {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Maximum number of file descriptors",
                max,
            )?;
        }
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let Some(stat) = stat.as_deref().and_then(parse_stat) else {
            return Ok(());
        };
        let ticks = self.clock_ticks as f64;
        let cpu = ConstCounter::new(stat.cpu_ticks as f64 / ticks);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        gauge(
            &mut encoder,
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            stat.resident_pages.saturating_mul(self.page_size),
        )?;
        gauge(
            &mut encoder,
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            stat.virtual_bytes,
        )?;
        gauge(
            &mut encoder,
            "process_threads",
            "Number of OS threads in the process",
            stat.threads,
        )?;
        if let Some(boot) = self.boot_time {
            gauge(
                &mut encoder,
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds",
                boot as f64 + stat.start_ticks as f64 / ticks,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A command name with a space and a parenthesis must not shift the fields.
    #[test]
    fn stat_counts_fields_after_the_name() {
        let text = "4242 (meshd (x) y) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    250 50 0 0 20 0 7 0 123456 104857600 2560 18446744073709551615 \
                    1 1 0 0 0 0 0 4096 17630 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 300,
                threads: 7,
                start_ticks: 123456,
                virtual_bytes: 104857600,
                resident_pages: 2560,
            })
        );
    }

    // A truncated line is no metric, not a panic.
    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_stat("4242 (meshd) S 1 2 3"), None);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn max_open_files_is_the_soft_limit() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max processes             63432                63432                processes \n\
                    Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_open_files(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_open_files(unlimited), None);
    }

    #[test]
    fn boot_time_from_proc_stat() {
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn auxv_finds_its_entry() {
        let mut auxv = Vec::new();
        for (k, v) in [(AT_PAGESZ, 4096usize), (AT_CLKTCK, 100), (0, 0)] {
            auxv.extend_from_slice(&(k as usize).to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_CLKTCK), Some(100));
        assert_eq!(auxv_value(&auxv, AT_PAGESZ), Some(4096));
        assert_eq!(auxv_value(&auxv, 99), None);
        assert_eq!(auxv_value(&auxv[..5], AT_CLKTCK), None);
    }
}
