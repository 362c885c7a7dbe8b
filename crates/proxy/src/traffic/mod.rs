//! This node's traffic as a picture, for the admin page's traffic view: a time series of
//! connections, denials and bytes ([`series`]), and who talks to whom ([`graph`]), both fed
//! from the connection records [`crate::Live`] receives and both bounded in memory whatever
//! the traffic.

pub(crate) mod graph;
pub(crate) mod series;

pub use graph::{EDGES_KEPT, EDGES_SHOWN, NODES_SHOWN};
pub use series::{BUCKET_SECONDS, BUCKETS, WINDOW_SECONDS};

use meshd_record::{ConnectionRecord, Direction, Outcome, WorkloadMeta};

use graph::{EdgeKey, Kind, Node};

/// True for the outcomes the denials view lists: refusals and denials, not connections that
/// carried traffic or failed on their own after being established.
pub(crate) fn is_refusal(outcome: Outcome) -> bool {
    !matches!(outcome, Outcome::Allowed | Outcome::Failed)
}

/// A workload's node name: `namespace/name`, as the workloads view names file workloads.
pub(crate) fn workload_name(meta: &WorkloadMeta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

/// The host of `host:port` (an address or a name; `[v6]:port` loses its brackets), or the
/// whole text when it has no port: peers are told apart by host, not by port.
fn host(destination: &str) -> String {
    if let Ok(addr) = destination.parse::<std::net::SocketAddr>() {
        return addr.ip().to_string();
    }
    match destination.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => host.to_string(),
        _ => destination.to_string(),
    }
}

/// The graph edge a connection belongs to: inbound from its peer (workload, else identity,
/// else address) to the local workload; outbound from the local workload to where it went
/// (workload, else service, else address); denied when it was refused or denied.
pub(crate) fn edge_key(r: &ConnectionRecord) -> EdgeKey {
    let facts = &r.facts;
    let source_address = || Node::new(Kind::Address, facts.source.ip().to_string());
    let destination = |peer: Kind| match (&r.destination_workload_meta, &r.destination_workload) {
        (Some(meta), _) => Node::new(peer, workload_name(meta)),
        (None, Some(key)) => Node::new(peer, key.clone()),
        (None, None) => Node::new(Kind::Address, host(&r.destination)),
    };
    let (from, to) = match facts.direction {
        Direction::Inbound => {
            let from = match (&facts.source_workload, &facts.source_identity) {
                (Some(meta), _) => Node::new(Kind::Workload, workload_name(meta)),
                (None, Some(id)) => Node::new(Kind::Identity, id.as_str().to_string()),
                (None, None) => source_address(),
            };
            (from, destination(Kind::Local))
        }
        Direction::Outbound => {
            let from = facts
                .source_workload
                .as_ref()
                .map_or_else(source_address, |m| Node::new(Kind::Local, workload_name(m)));
            let to = match (&r.destination_workload_meta, &r.destination_service) {
                (None, Some(service)) if r.destination_workload.is_none() => {
                    Node::new(Kind::Service, service.clone())
                }
                _ => destination(Kind::Workload),
            };
            (from, to)
        }
    };
    EdgeKey {
        from,
        to,
        denied: is_refusal(r.outcome),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use meshd_identity::SpiffeId;
    use meshd_record::{Facts, Identity, TraceParent};

    use super::*;

    fn record(direction: Direction, destination: &str) -> ConnectionRecord {
        let facts = Facts::new(
            TraceParent::random(),
            direction,
            "127.10.60.1:40000".parse().unwrap(),
        );
        ConnectionRecord::new(Arc::new(facts), destination)
    }

    fn meta(name: &str) -> Arc<WorkloadMeta> {
        Arc::new(WorkloadMeta {
            name: name.into(),
            namespace: "shop".into(),
            ..WorkloadMeta::default()
        })
    }

    #[test]
    fn inbound_edges_go_from_the_best_known_peer_name_to_the_local_workload() {
        let mut r = record(Direction::Inbound, "127.10.60.2:5432");
        // Nothing known: addresses (the destination's host, without its port).
        let k = edge_key(&r);
        assert_eq!(
            (k.from.id.as_str(), k.from.kind),
            ("127.10.60.1", Kind::Address)
        );
        assert_eq!(
            (k.to.id.as_str(), k.to.kind),
            ("127.10.60.2", Kind::Address)
        );
        assert!(!k.denied);
        let id = SpiffeId::new("spiffe://cluster.local/ns/shop/sa/web").unwrap();
        let mut facts = (*r.facts).clone();
        facts.source_identity = Some(Arc::new(Identity::new(id)));
        r.facts = Arc::new(facts.clone());
        r.destination_workload = Some("shop/db".into());
        let k = edge_key(&r);
        assert_eq!(k.from.id, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!((k.to.id.as_str(), k.to.kind), ("shop/db", Kind::Local));
        facts.source_workload = Some(meta("web"));
        r.facts = Arc::new(facts);
        r.outcome = Outcome::Denied;
        let k = edge_key(&r);
        assert_eq!(
            (k.from.id.as_str(), k.from.kind),
            ("shop/web", Kind::Workload)
        );
        assert!(k.denied);
    }

    #[test]
    fn outbound_edges_go_from_the_local_workload_to_a_workload_service_or_host() {
        let mut r = record(Direction::Outbound, "db.shop.mesh.internal:5432");
        let k = edge_key(&r);
        assert_eq!(k.to.id, "db.shop.mesh.internal");
        r.destination_service = Some("shop/db".into());
        assert_eq!(edge_key(&r).to.kind, Kind::Service);
        r.destination_workload_meta = Some(meta("db-1"));
        let mut facts = (*r.facts).clone();
        facts.source_workload = Some(meta("web"));
        r.facts = Arc::new(facts);
        r.outcome = Outcome::Failed;
        let k = edge_key(&r);
        assert_eq!((k.from.id.as_str(), k.from.kind), ("shop/web", Kind::Local));
        assert_eq!((k.to.id.as_str(), k.to.kind), ("shop/db-1", Kind::Workload));
        // A failure after being set up is not a denial.
        assert!(!k.denied);
    }

    #[test]
    fn hosts_lose_their_port_only() {
        assert_eq!(host("[::1]:80"), "::1");
        assert_eq!(host("example.com:443"), "example.com");
        assert_eq!(host("example.com"), "example.com");
        assert_eq!(host("-"), "-");
        assert_eq!(host("a:b:c"), "a:b:c");
    }
}
