//! The control-plane counters, named as ztunnel's (`src/xds/metrics.rs`) so dashboards built
//! for ztunnel read meshd too.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Why an xDS stream ended (ztunnel's `ConnectionTerminationReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Termination {
    /// Could not connect or the stream broke at the transport.
    ConnectionError,
    /// istiod ended the stream with an error status.
    Error,
    /// istiod asked for a reconnect (GOAWAY, max connection age).
    Reconnect,
    /// istiod ended the stream cleanly.
    Complete,
}

impl Termination {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Termination::ConnectionError => "ConnectionError",
            Termination::Error => "Error",
            Termination::Reconnect => "Reconnect",
            Termination::Complete => "Complete",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UrlLabels {
    url: String,
}

/// `istio_xds_connection_terminations_total{reason}`, `istio_xds_message_total{url}`,
/// `istio_xds_message_bytes_total{url}`.
#[derive(Debug, Default)]
pub struct XdsMetrics {
    terminations: Family<ReasonLabels, Counter>,
    messages: Family<UrlLabels, Counter>,
    bytes: Family<UrlLabels, Counter>,
}

impl XdsMetrics {
    /// Registers the three families (prometheus-client adds `_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "istio_xds_connection_terminations",
            "Times the xDS stream to istiod ended, by reason",
            self.terminations.clone(),
        );
        registry.register(
            "istio_xds_message",
            "xDS responses received, by type URL",
            self.messages.clone(),
        );
        registry.register(
            "istio_xds_message_bytes",
            "Bytes of xDS responses received, by type URL",
            self.bytes.clone(),
        );
    }

    pub(crate) fn terminated(&self, reason: Termination) {
        self.terminations
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            })
            .inc();
    }

    pub(crate) fn message(&self, url: &str, bytes: usize) {
        let labels = UrlLabels { url: url.into() };
        self.messages.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }

    /// Terminations so far for `reason`.
    pub fn terminations(&self, reason: Termination) -> u64 {
        self.terminations
            .get_or_create(&ReasonLabels {
                reason: reason.as_str().into(),
            })
            .get()
    }

    /// Responses so far of `url`.
    pub fn messages(&self, url: &str) -> u64 {
        self.messages
            .get_or_create(&UrlLabels { url: url.into() })
            .get()
    }

    /// Bytes so far of `url`.
    pub fn message_bytes(&self, url: &str) -> u64 {
        self.bytes
            .get_or_create(&UrlLabels { url: url.into() })
            .get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_ztunnels_names() {
        let m = XdsMetrics::default();
        let mut r = Registry::default();
        m.register(&mut r);
        m.terminated(Termination::Reconnect);
        m.message("type.googleapis.com/istio.workload.Address", 42);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        assert!(
            text.contains("istio_xds_connection_terminations_total{reason=\"Reconnect\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "istio_xds_message_total{url=\"type.googleapis.com/istio.workload.Address\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("istio_xds_message_bytes_total{url=\"type.googleapis.com/istio.workload.Address\"} 42"), "{text}");
    }
}
