//! `tokio_*` metrics of the runtime meshd's connections run on, read at scrape time.
//!
//! The set and the names are ztunnel's (`src/metrics/tokio_runtime.rs`): what tokio's stable
//! `RuntimeMetrics` offers without `--cfg tokio_unstable`. The per-worker counters need 64-bit
//! atomics, as in tokio.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
#[cfg(target_has_atomic = "64")]
use prometheus_client::metrics::MetricType;
#[cfg(target_has_atomic = "64")]
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use tokio::runtime::RuntimeMetrics;

/// The tokio collector (registered under the `tokio_` prefix).
#[derive(Debug)]
pub(crate) struct RuntimeCollector {
    metrics: RuntimeMetrics,
}

impl RuntimeCollector {
    pub(crate) fn new(runtime: &tokio::runtime::Handle) -> RuntimeCollector {
        RuntimeCollector {
            metrics: runtime.metrics(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkerLabels {
    worker: usize,
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    value: usize,
) -> Result<(), std::fmt::Error> {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter per worker (prometheus-client adds `_total`, as it does for ztunnel's).
#[cfg(target_has_atomic = "64")]
fn per_worker<N>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    workers: usize,
    value: impl Fn(usize) -> N,
) -> Result<(), std::fmt::Error>
where
    ConstCounter<N>: EncodeMetric,
{
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for worker in 0..workers {
        let labels = WorkerLabels { worker };
        ConstCounter::new(value(worker)).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for RuntimeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let workers = m.num_workers();
        gauge(
            &mut encoder,
            "num_workers",
            "the number of worker threads used by the runtime",
            workers,
        )?;
        gauge(
            &mut encoder,
            "global_queue_depth",
            "the number of tasks currently scheduled in the runtime's global queue",
            m.global_queue_depth(),
        )?;
        gauge(
            &mut encoder,
            "num_alive_tasks",
            "the number of alive tasks in the runtime",
            m.num_alive_tasks(),
        )?;
        #[cfg(target_has_atomic = "64")]
        {
            per_worker(
                &mut encoder,
                "worker_total_busy_duration_seconds",
                "the amount of time worker threads have been busy",
                workers,
                |w| m.worker_total_busy_duration(w).as_secs_f64(),
            )?;
            per_worker(
                &mut encoder,
                "worker_park_count",
                "the total number of times the given worker thread has parked",
                workers,
                |w| m.worker_park_count(w),
            )?;
            per_worker(
                &mut encoder,
                "worker_park_unpark_count",
                "the total number of times the given worker thread has parked and unparked",
                workers,
                |w| m.worker_park_unpark_count(w),
            )?;
        }
        Ok(())
    }
}
