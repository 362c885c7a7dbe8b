//! The control plane's series: ztunnel's `istio_xds_*` (meshd-xds counts them) and meshd's
//! count of istiod resources it holds but refuses to reach.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshd_workloadapi::model::Refusal;
use meshd_xds::metrics::XdsMetrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Created before the metrics registry (which is fixed once built) and registered in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct ControlPlaneMetrics {
    pub(crate) xds: Arc<XdsMetrics>,
    refused: Family<ReasonLabels, Gauge>,
}

impl ControlPlaneMetrics {
    /// Registers every series; each refusal reason starts at zero, so a dashboard sees the
    /// series before the first refusal.
    pub(crate) fn register(&self, registry: &mut Registry) {
        self.xds.register(registry);
        registry.register(
            "meshd_istiod_refused_resources",
            "Workloads and services from istiod that meshd holds but refuses to reach, by reason",
            self.refused.clone(),
        );
        self.set_refused(&BTreeMap::new());
    }

    /// The refusals held now.
    pub(crate) fn set_refused(&self, refused: &BTreeMap<Refusal, usize>) {
        for reason in Refusal::ALL {
            let n = refused.get(&reason).copied().unwrap_or(0);
            self.refused
                .get_or_create(&ReasonLabels {
                    reason: reason.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
