//! `meshd_heap_*`: what the memory policy (meshd-memory) did, read at scrape time. Nothing is
//! reported while the trimming thread is not running (tests, or a libc without it), so a
//! dashboard cannot mistake "no policy" for "nothing to trim".

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads [`meshd_memory::stats`] on each scrape.
#[derive(Debug, Default)]
pub(crate) struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(stats) = meshd_memory::stats() else {
            return Ok(());
        };
        let trims = ConstCounter::new(stats.trims);
        trims.encode(encoder.encode_descriptor(
            "heap_trims",
            "Times the memory policy gave the heap's free pages back to the kernel (malloc_trim)",
            None,
            trims.metric_type(),
        )?)?;
        let returned = ConstCounter::new(stats.returned_bytes);
        returned.encode(encoder.encode_descriptor(
            "heap_returned_bytes",
            "Anonymous resident memory the trims gave back, summed",
            None,
            returned.metric_type(),
        )?)?;
        let free = ConstGauge::new(stats.free_bytes as i64);
        free.encode(encoder.encode_descriptor(
            "heap_free_bytes",
            "Bytes free inside glibc's arenas at the last check (held by the process, unused)",
            None,
            free.metric_type(),
        )?)
    }
}
