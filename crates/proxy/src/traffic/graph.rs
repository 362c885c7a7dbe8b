//! Who talks to whom: one edge per (from, to, verdict), aggregated from the connections that
//! ended, with the open ones laid over it when the view is read.
//!
//! Bounded: at most [`EDGES_KEPT`] edges are kept (the least recently seen is forgotten first,
//! and counted); an edge idle for the series' window is dropped. The view shows at most
//! [`NODES_SHOWN`] nodes and [`EDGES_SHOWN`] edges, the most recently seen first, and says how
//! many it left out.

use std::collections::{BTreeMap, HashMap};

use meshd_view as view;

use super::series::WINDOW_SECONDS;

/// Edges kept in memory: a node talks to a few dozen peers. An edge holds two names (a
/// workload name, an address, a SOCKS5 host of at most 255 bytes, or a SPIFFE ID, which the
/// SPIFFE spec bounds at 2 KiB): ~100 B each as usual, 256 edges stay under ~50 KiB, and under
/// ~1.1 MiB even if every name were a maximal SPIFFE ID.
pub const EDGES_KEPT: usize = 256;

/// Nodes the view shows: beyond a few dozen a drawn graph is no longer read at a glance.
pub const NODES_SHOWN: usize = 40;

/// Edges the view shows: about one and a half per node shown.
pub const EDGES_SHOWN: usize = 60;

/// What a node is; the order is the preference when one name is seen as several kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Kind {
    Local,
    Workload,
    Service,
    Identity,
    Address,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Local => "local",
            Kind::Workload => "workload",
            Kind::Service => "service",
            Kind::Identity => "identity",
            Kind::Address => "address",
        }
    }
}

/// A node: its name and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Node {
    pub(crate) kind: Kind,
    pub(crate) id: String,
}

impl Node {
    pub(crate) fn new(kind: Kind, id: String) -> Node {
        Node { kind, id }
    }
}

/// An edge: connections from one node to another with one verdict.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct EdgeKey {
    pub(crate) from: Node,
    pub(crate) to: Node,
    pub(crate) denied: bool,
}

/// Why the last connection of a denied edge was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub(crate) outcome: &'static str,
    pub(crate) policy: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Stats {
    connections: u64,
    open: u64,
    bytes: u64,
    /// Seconds since the epoch.
    last_seen: u64,
    refused: Option<Refused>,
}

/// The edges of the connections that ended within the window.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    edges: HashMap<EdgeKey, Stats>,
    forgotten: u64,
}

/// What the view shows of the graph.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Shown {
    pub(crate) nodes: Vec<view::TrafficNode>,
    pub(crate) edges: Vec<view::TrafficEdge>,
    pub(crate) omitted_nodes: usize,
    pub(crate) omitted_edges: usize,
    pub(crate) forgotten_edges: u64,
}

impl Graph {
    /// A connection of `key` ended at `now` after carrying `bytes`.
    pub(crate) fn closed(&mut self, key: EdgeKey, bytes: u64, now: u64, refused: Option<Refused>) {
        if !self.edges.contains_key(&key) && self.edges.len() >= EDGES_KEPT {
            // A linear scan, at most once per new edge while full: 256 entries.
            let oldest = self
                .edges
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                self.edges.remove(&oldest);
                self.forgotten += 1;
            }
        }
        let stats = self.edges.entry(key).or_default();
        stats.connections += 1;
        stats.bytes = stats.bytes.saturating_add(bytes);
        stats.last_seen = stats.last_seen.max(now);
        if refused.is_some() {
            stats.refused = refused;
        }
    }

    /// Drops the edges idle for the window.
    pub(crate) fn expire(&mut self, now: u64) {
        self.edges
            .retain(|_, s| s.last_seen.saturating_add(WINDOW_SECONDS) > now);
        if self.edges.capacity() > 2 * EDGES_KEPT {
            self.edges.shrink_to(EDGES_KEPT);
        }
    }

    /// The edges within the window at `now`, with the `open` connections (their edge and bytes
    /// so far) added.
    fn with_open(
        &self,
        open: impl IntoIterator<Item = (EdgeKey, u64)>,
        now: u64,
    ) -> HashMap<EdgeKey, Stats> {
        let mut all: HashMap<EdgeKey, Stats> = self
            .edges
            .iter()
            .filter(|(_, s)| s.last_seen.saturating_add(WINDOW_SECONDS) > now)
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        for (key, bytes) in open {
            let stats = all.entry(key).or_default();
            stats.connections += 1;
            stats.open += 1;
            stats.bytes = stats.bytes.saturating_add(bytes);
            stats.last_seen = stats.last_seen.max(now);
        }
        all
    }

    /// The graph as shown at `now`: the kept edges with `open` connections (their edge and
    /// bytes so far) laid over them, and every `local` workload as a node even when idle.
    /// `time` renders a time.
    pub(crate) fn view(
        &self,
        open: impl IntoIterator<Item = (EdgeKey, u64)>,
        local: &[String],
        now: u64,
        time: impl Fn(u64) -> String,
    ) -> Shown {
        let all = self.with_open(open, now);
        // Each name once, as the most specific kind it was seen as.
        let mut kinds: BTreeMap<&str, Kind> =
            local.iter().map(|l| (l.as_str(), Kind::Local)).collect();
        for key in all.keys() {
            for node in [&key.from, &key.to] {
                let kind = kinds.entry(node.id.as_str()).or_insert(node.kind);
                *kind = (*kind).min(node.kind);
            }
        }
        let mut edges: Vec<(&EdgeKey, &Stats)> = all.iter().collect();
        edges.sort_by(|(ka, a), (kb, b)| {
            (b.last_seen, b.connections)
                .cmp(&(a.last_seen, a.connections))
                .then_with(|| {
                    (&ka.from.id, &ka.to.id, ka.denied).cmp(&(&kb.from.id, &kb.to.id, kb.denied))
                })
        });
        let mut shown_nodes: Vec<&str> =
            local.iter().map(String::as_str).take(NODES_SHOWN).collect();
        let mut shown = Shown {
            forgotten_edges: self.forgotten,
            ..Shown::default()
        };
        for (key, stats) in edges {
            let mut missing: Vec<&str> = Vec::with_capacity(2);
            for id in [key.from.id.as_str(), key.to.id.as_str()] {
                if !shown_nodes.contains(&id) && !missing.contains(&id) {
                    missing.push(id);
                }
            }
            if shown.edges.len() >= EDGES_SHOWN || shown_nodes.len() + missing.len() > NODES_SHOWN {
                shown.omitted_edges += 1;
                continue;
            }
            shown_nodes.extend(missing);
            shown.edges.push(view::TrafficEdge {
                from: key.from.id.clone(),
                to: key.to.id.clone(),
                verdict: if key.denied { "denied" } else { "allowed" }.to_string(),
                connections: stats.connections,
                open: stats.open,
                bytes: stats.bytes,
                last_seen: time(stats.last_seen),
                outcome: stats.refused.as_ref().map(|r| r.outcome.to_string()),
                policy: stats.refused.as_ref().and_then(|r| r.policy.clone()),
            });
        }
        shown.omitted_nodes = kinds.len().saturating_sub(shown_nodes.len());
        shown.nodes = shown_nodes
            .into_iter()
            .map(|id| view::TrafficNode {
                id: id.to_string(),
                kind: kinds
                    .get(id)
                    .copied()
                    .unwrap_or(Kind::Address)
                    .as_str()
                    .to_string(),
            })
            .collect();
        shown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const T0: u64 = 1_800_000_000;

    fn key(from: &str, to: &str, denied: bool) -> EdgeKey {
        EdgeKey {
            from: Node::new(Kind::Workload, from.into()),
            to: Node::new(Kind::Local, to.into()),
            denied,
        }
    }

    fn show(g: &Graph, open: Vec<(EdgeKey, u64)>, local: &[&str], now: u64) -> Shown {
        let local: Vec<String> = local.iter().map(|s| s.to_string()).collect();
        g.view(open, &local, now, |t| t.to_string())
    }

    #[test]
    fn an_allowed_and_a_denied_edge_between_the_same_workloads_are_two_edges() {
        let mut g = Graph::default();
        g.closed(key("shop/web", "shop/db", false), 6000, T0, None);
        let refused = Refused {
            outcome: "denied",
            policy: Some("shop/deny-admin".into()),
        };
        g.closed(key("shop/web", "shop/db", true), 0, T0 + 5, Some(refused));
        // One open connection on the allowed edge, 100 bytes so far.
        let open = vec![(key("shop/web", "shop/db", false), 100)];
        let s = show(&g, open, &["shop/db", "shop/idle"], T0 + 6);
        let ids: Vec<(&str, &str)> = s
            .nodes
            .iter()
            .map(|n| (n.id.as_str(), n.kind.as_str()))
            .collect();
        assert_eq!(
            ids,
            [
                ("shop/db", "local"),
                ("shop/idle", "local"),
                ("shop/web", "workload")
            ]
        );
        assert_eq!(s.edges.len(), 2);
        let allowed = &s.edges[0];
        assert_eq!(
            (
                allowed.verdict.as_str(),
                allowed.connections,
                allowed.open,
                allowed.bytes
            ),
            ("allowed", 2, 1, 6100)
        );
        assert_eq!(allowed.last_seen, (T0 + 6).to_string());
        assert_eq!(allowed.outcome, None);
        let denied = &s.edges[1];
        assert_eq!(
            (denied.verdict.as_str(), denied.connections, denied.open),
            ("denied", 1, 0)
        );
        assert_eq!(denied.outcome.as_deref(), Some("denied"));
        assert_eq!(denied.policy.as_deref(), Some("shop/deny-admin"));
        assert_eq!(
            (s.omitted_edges, s.omitted_nodes, s.forgotten_edges),
            (0, 0, 0)
        );
    }

    // Bounded memory: past EDGES_KEPT the least recently seen edges are forgotten, and counted.
    #[test]
    fn past_the_cap_the_least_recently_seen_edges_are_forgotten() {
        let mut g = Graph::default();
        for i in 0..EDGES_KEPT as u64 + 44 {
            g.closed(key(&format!("peer-{i}"), "shop/db", false), 1, T0 + i, None);
        }
        assert_eq!(g.edges.len(), EDGES_KEPT);
        assert_eq!(g.forgotten, 44);
        assert!(!g.edges.contains_key(&key("peer-43", "shop/db", false)));
        assert!(g.edges.contains_key(&key("peer-44", "shop/db", false)));
        // A known edge is updated, never counted as new.
        g.closed(key("peer-44", "shop/db", false), 1, T0 + 400, None);
        assert_eq!((g.edges.len(), g.forgotten), (EDGES_KEPT, 44));
    }

    // The view shows at most NODES_SHOWN nodes and EDGES_SHOWN edges, the most recent first,
    // and says how many it left out.
    #[test]
    fn the_view_caps_nodes_and_edges_and_counts_what_it_left_out() {
        let mut g = Graph::default();
        for i in 0..100u64 {
            g.closed(
                key(&format!("peer-{i:03}"), "shop/db", false),
                1,
                T0 + i,
                None,
            );
        }
        let s = show(&g, vec![], &["shop/db"], T0 + 100);
        assert_eq!(s.nodes.len(), NODES_SHOWN);
        assert_eq!(s.edges.len(), NODES_SHOWN - 1);
        assert_eq!(s.edges[0].from, "peer-099");
        assert_eq!(s.omitted_edges, 100 - (NODES_SHOWN - 1));
        assert_eq!(s.omitted_nodes, 101 - NODES_SHOWN);
        // Many edges between few nodes: the edge cap binds.
        let mut g = Graph::default();
        for i in 0..10u64 {
            for j in 0..10u64 {
                let k = key(&format!("a{i}"), &format!("b{j}"), false);
                g.closed(k, 1, T0 + i * 10 + j, None);
            }
        }
        let s = show(&g, vec![], &[], T0 + 100);
        assert_eq!(
            (s.edges.len(), s.omitted_edges),
            (EDGES_SHOWN, 100 - EDGES_SHOWN)
        );
        // The 60 most recent: a9..a4 to every b.
        assert_eq!((s.nodes.len(), s.omitted_nodes), (16, 4));
    }

    #[test]
    fn idle_edges_leave_after_the_window() {
        let mut g = Graph::default();
        g.closed(key("shop/web", "shop/db", false), 1, T0, None);
        assert_eq!(
            show(&g, vec![], &[], T0 + WINDOW_SECONDS - 1).edges.len(),
            1
        );
        // Shown no more once idle for the window, even before expire runs.
        assert!(show(&g, vec![], &[], T0 + WINDOW_SECONDS).edges.is_empty());
        g.expire(T0 + WINDOW_SECONDS - 1);
        assert_eq!(g.edges.len(), 1);
        g.expire(T0 + WINDOW_SECONDS);
        assert!(g.edges.is_empty());
    }

    // A name seen as a peer workload on one edge and as a local workload on another is one
    // node, local.
    #[test]
    fn a_name_is_one_node_of_its_most_specific_kind() {
        let mut g = Graph::default();
        g.closed(key("shop/web", "shop/db", false), 1, T0, None);
        let back = EdgeKey {
            from: Node::new(Kind::Local, "shop/web".into()),
            to: Node::new(Kind::Address, "10.0.0.9".into()),
            denied: false,
        };
        g.closed(back, 1, T0, None);
        let s = show(&g, vec![], &[], T0);
        let web: Vec<_> = s.nodes.iter().filter(|n| n.id == "shop/web").collect();
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].kind, "local");
    }
}
