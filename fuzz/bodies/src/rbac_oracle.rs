//! A naive evaluator of AuthorizationPolicy, written from the semantics in meshd-rbac's crate
//! docs and docs/configuration.md ("How policies are enforced") rather than from its compiler:
//! every policy is looked at for every connection, straight from the resource types, with no
//! matcher compilation, no scopes index and no candidate index. It is the differential target's
//! second oracle; the first, `Engine::compile_unindexed`, shares everything with the engine but
//! the candidate index.
//!
//! The effective PeerAuthentication mode is taken from the engine (`Engine::mtls_mode`): it has
//! no index to check, and its rules are covered by crates/rbac's own tests.

use std::net::IpAddr;

use meshd_policy::authz::{Condition, Operation, Rule, Source};
use meshd_policy::values::{L7_OPERATION_FIELDS, L7_SOURCE_FIELDS, parse_ip_block, parse_port};
use meshd_policy::{Action, AuthorizationPolicy};
use meshd_rbac::{Connection, Decision, Engine, PolicyKey, Reason};

/// Istio's string forms: `*` any non-empty value, `*x` suffix, `x*` prefix, else exact. A
/// plaintext peer has no value at all, which no pattern matches.
fn pattern(value: &str, candidate: Option<&str>) -> bool {
    let Some(c) = candidate.filter(|c| !c.is_empty()) else {
        return false;
    };
    if value == "*" {
        true
    } else if let Some(suffix) = value.strip_prefix('*') {
        c.ends_with(suffix)
    } else if let Some(prefix) = value.strip_suffix('*') {
        c.starts_with(prefix)
    } else {
        c == value
    }
}

/// One field: `None` is no restriction; a positive list holds when a value hits (an empty list
/// never holds); a negative list holds when no value hits.
struct Field<'a> {
    values: Option<&'a Vec<String>>,
    negative: bool,
}

impl Field<'_> {
    /// Whether the field restricts anything at all (a negative list must name something).
    fn restricts(&self) -> bool {
        match self.values {
            None => false,
            Some(v) => !self.negative || !v.is_empty(),
        }
    }

    fn holds(&self, hit: impl Fn(&str) -> bool) -> bool {
        match self.values {
            None => true,
            Some(v) if self.negative => !v.iter().any(|x| hit(x)),
            Some(v) => v.iter().any(|x| hit(x)),
        }
    }
}

fn pos(values: &Option<Vec<String>>) -> Field<'_> {
    Field {
        values: values.as_ref(),
        negative: false,
    }
}

fn neg(values: &Option<Vec<String>>) -> Field<'_> {
    Field {
        values: values.as_ref(),
        negative: true,
    }
}

fn in_block(block: &str, ip: IpAddr) -> bool {
    parse_ip_block(block).is_ok_and(|net| net.contains(&ip.to_canonical()))
}

fn port_is(value: &str, port: u16) -> bool {
    parse_port(value).is_ok_and(|p| p == port)
}

/// Evaluates fields; an L4-unrestricted part matches everything if it had L7 fields (only DENY
/// and CUSTOM rules keep those: fail closed) and nothing otherwise.
/// A field and what a value hits.
type Check<'a> = (Field<'a>, &'a dyn Fn(&str) -> bool);

fn all_of(fields: &[Check<'_>], has_l7: bool) -> bool {
    if !fields.iter().any(|(f, _)| f.restricts()) {
        return has_l7;
    }
    fields.iter().all(|(f, hit)| f.holds(hit))
}

fn source_matches(source: &Source, policy_ns: &str, conn: &Connection) -> bool {
    let peer = conn.peer.as_ref();
    let principal = peer.map(|p| p.principal());
    let namespace = peer.map(|p| p.namespace());
    let trust_domain = peer.map(|p| p.trust_domain());
    let account = |v: &str| {
        let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
        peer.is_some_and(|p| p.namespace() == ns && p.service_account() == sa)
    };
    let has_l7 = source
        .fields()
        .iter()
        .any(|(name, v)| v.is_some() && L7_SOURCE_FIELDS.contains(name));
    let principal_hit = |v: &str| pattern(v, principal);
    let namespace_hit = |v: &str| pattern(v, namespace);
    let domain_hit = |v: &str| pattern(v, trust_domain);
    let ip_hit = |v: &str| in_block(v, conn.source_ip);
    all_of(
        &[
            (pos(&source.principals), &principal_hit),
            (neg(&source.not_principals), &principal_hit),
            (pos(&source.namespaces), &namespace_hit),
            (neg(&source.not_namespaces), &namespace_hit),
            (pos(&source.service_accounts), &account),
            (neg(&source.not_service_accounts), &account),
            (pos(&source.trust_domains), &domain_hit),
            (neg(&source.not_trust_domains), &domain_hit),
            (pos(&source.ip_blocks), &ip_hit),
            (neg(&source.not_ip_blocks), &ip_hit),
        ],
        has_l7,
    )
}

fn operation_matches(operation: &Operation, conn: &Connection) -> bool {
    let has_l7 = operation
        .fields()
        .iter()
        .any(|(name, v)| v.is_some() && L7_OPERATION_FIELDS.contains(name));
    let port_hit = |v: &str| port_is(v, conn.destination.port);
    all_of(
        &[
            (pos(&operation.ports), &port_hit),
            (neg(&operation.not_ports), &port_hit),
        ],
        has_l7,
    )
}

fn condition_matches(condition: &Condition, conn: &Connection) -> bool {
    let peer = conn.peer.as_ref();
    let hit: Box<dyn Fn(&str) -> bool + '_> = match condition.key.as_deref().unwrap_or_default() {
        "source.ip" => Box::new(|v| in_block(v, conn.source_ip)),
        "source.namespace" => Box::new(move |v| pattern(v, peer.map(|p| p.namespace()))),
        "source.principal" => Box::new(move |v| pattern(v, peer.map(|p| p.principal()))),
        "destination.ip" => Box::new(|v| in_block(v, conn.destination.ip)),
        "destination.port" => Box::new(|v| port_is(v, conn.destination.port)),
        // Any other key is L7: it only survives in DENY and CUSTOM rules, where it matches.
        _ => return true,
    };
    all_of(
        &[
            (pos(&condition.values), &*hit),
            (neg(&condition.not_values), &*hit),
        ],
        false,
    )
}

fn rule_matches(rule: &Rule, policy_ns: &str, conn: &Connection) -> bool {
    let from = rule.from.as_ref().is_none_or(|from| {
        from.iter()
            .filter_map(|f| f.source.as_ref())
            .any(|s| source_matches(s, policy_ns, conn))
    });
    let to = rule.to.as_ref().is_none_or(|to| {
        to.iter()
            .filter_map(|t| t.operation.as_ref())
            .any(|o| operation_matches(o, conn))
    });
    let when = rule
        .when
        .iter()
        .flatten()
        .all(|c| condition_matches(c, conn));
    from && to && when
}

fn policy_matches(policy: &AuthorizationPolicy, conn: &Connection) -> bool {
    // ALLOW and AUDIT rules with L7 attributes are dropped (ztunnel's behaviour).
    let drop_l7 = matches!(policy.spec.action(), Action::Allow | Action::Audit);
    policy
        .spec
        .rules
        .iter()
        .flatten()
        .filter(|r| !drop_l7 || r.l7_attributes().is_empty())
        .any(|r| rule_matches(r, policy.metadata.namespace(), conn))
}

/// The order policies are consulted and reported in: mesh-wide, namespace-wide, the
/// namespace's selector policies, then the root namespace's selector policies; selector policies
/// by their selector's first label, then by key.
fn order<'a>(policy: &'a AuthorizationPolicy, root: &str) -> (u8, &'a str, &'a str, &'a str) {
    let ns = policy.metadata.namespace();
    let selector = policy.spec.selector.as_ref().map(|s| &s.match_labels);
    let first = selector
        .and_then(|l| l.keys().next())
        .map_or("", String::as_str);
    let rank = match (ns == root, first.is_empty()) {
        (true, true) => 0,
        (false, true) => 1,
        (false, false) => 2,
        (true, false) => 3,
    };
    (rank, first, ns, policy.metadata.name())
}

/// The decision, computed naively.
pub fn decide(
    engine: &Engine,
    policies: &[&AuthorizationPolicy],
    root: &str,
    conn: &Connection,
) -> Decision {
    let dst = &conn.destination;
    let mut decision = Decision {
        reason: Reason::NoAllowPolicies,
        audited: Vec::new(),
        dry_run: Vec::new(),
    };
    if conn.peer.is_none() {
        let mode = engine.mtls_mode(&dst.namespace, &dst.labels, dst.port);
        if let (true, Some(source)) = (mode.strict, mode.source) {
            decision.reason = Reason::PlaintextRefused {
                peer_authentication: source,
                port: dst.port,
            };
            return decision;
        }
    }
    let mut applying: Vec<&AuthorizationPolicy> = policies
        .iter()
        .copied()
        .filter(|p| !p.spec.has_target_refs())
        .filter(|p| p.metadata.namespace() == root || p.metadata.namespace() == dst.namespace)
        .filter(|p| {
            p.spec
                .selector
                .iter()
                .flat_map(|s| &s.match_labels)
                .all(|(k, v)| dst.labels.get(k) == Some(v))
        })
        .collect();
    applying.sort_by(|a, b| order(a, root).cmp(&order(b, root)));
    let key = |p: &AuthorizationPolicy| PolicyKey::new(p.metadata.namespace(), p.metadata.name());
    let enforced =
        |p: &&&AuthorizationPolicy| p.spec.action() != Action::Audit && !p.metadata.is_dry_run();

    for p in applying
        .iter()
        .filter(|p| !enforced(p))
        .filter(|p| policy_matches(p, conn))
    {
        if p.metadata.is_dry_run() {
            decision
                .dry_run
                .push((key(p), p.spec.action() == Action::Allow));
        } else {
            decision.audited.push(key(p));
        }
    }
    let first = |actions: &[Action]| {
        applying
            .iter()
            .filter(enforced)
            .find(|p| actions.contains(&p.spec.action()) && policy_matches(p, conn))
    };
    if let Some(p) = first(&[Action::Deny, Action::Custom]) {
        decision.reason = match p.spec.action() {
            Action::Custom => Reason::CustomDenied(key(p)),
            _ => Reason::Denied(key(p)),
        };
    } else if let Some(p) = first(&[Action::Allow]) {
        decision.reason = Reason::Allowed(key(p));
    } else if applying
        .iter()
        .filter(enforced)
        .any(|p| p.spec.action() == Action::Allow)
    {
        decision.reason = Reason::NotAllowed;
    }
    decision
}
