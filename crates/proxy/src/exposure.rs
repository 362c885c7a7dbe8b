//! What a configuration asks for that this meshd, as set up, cannot enforce. Checked at start,
//! on every reload and by `meshd validate --daemon-config`, so the gap is said out loud rather
//! than discovered.

use std::collections::BTreeMap;

use crate::config::ProxyConfig;
use crate::state::ProxyState;

/// STRICT PeerAuthentications that select local workloads while inbound capture is off: meshd
/// can only refuse the plaintext that reaches it, and without capture plaintext reaches the
/// workload directly. One warning per PeerAuthentication, naming the workloads.
pub fn strict_without_capture(config: &ProxyConfig, state: &ProxyState) -> Vec<String> {
    if config.listen.inbound_plaintext.is_some() {
        return Vec::new();
    }
    let mut by_policy: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for workload in state.registry.local_workloads() {
        if let Some(policy) = state
            .engine
            .strict_anywhere(workload.namespace(), workload.labels())
        {
            by_policy
                .entry(policy.to_string())
                .or_default()
                .push(workload.key());
        }
    }
    by_policy
        .into_iter()
        .map(|(policy, workloads)| {
            format!(
                "PeerAuthentication {policy} requires mTLS (STRICT) for local workload{} {}, but inbound capture is off (listen.inboundPlaintext is not set): plaintext connections reach {} directly and are not refused; set listen.inboundPlaintext and redirect.inboundPort, then run `meshd redirect install`",
                if workloads.len() == 1 { "" } else { "s" },
                workloads.join(", "),
                if workloads.len() == 1 { "it" } else { "them" },
            )
        })
        .collect()
}
