//! istiod's Authorizations to matchers: the second input beside the files' AuthorizationPolicies.
//!
//! istiod has already converted the policy to L4 (labels resolved into workloads'
//! `authorization_policies`, L7 parts dropped or emptied), so the shape maps onto the same
//! [`CompiledRule`]: a group is a rule (its rules AND), a rule is a clause (its matches OR), a
//! match is a [`Matcher`] (fields AND, values OR, `not_` fields exclude). What differs is how
//! the nothing-to-match cases read, and meshd reads them so that they only ever refuse more:
//!
//! - An **empty match** (no L4 field: what istiod emits for an L7-only part, and for a
//!   `trustDomains`-only source) matches every connection in a DENY (meshd's M1: the DENY is
//!   enforced on its L4 parts alone; ztunnel skips it, which fails open) and never matches in
//!   an ALLOW. A rule whose every match is empty (or that has no match at all) therefore drops
//!   its whole group from an ALLOW; never just the `{}`, which would turn `[{}]` into `[]`, a
//!   clause that holds for everything.
//! - **Extensions** meshd cannot evaluate: on a match, the match never holds in an ALLOW and is
//!   read without them in a DENY; on the policy, an ALLOW allows nothing (it still applies) and
//!   a DENY denies on its groups.

use meshd_workloadapi::model::{Action, Authorization, Group, Match};

use crate::compile::{CompiledRule, Matcher, Positive};

/// The rules of an istiod policy (see the module documentation for the empty cases).
pub(crate) fn compile_istiod_rules(policy: &Authorization) -> Vec<CompiledRule> {
    let allow = policy.action == Action::Allow;
    if allow && policy.extensions {
        return Vec::new();
    }
    policy
        .groups
        .iter()
        .filter_map(|group| compile_group(group, allow))
        .collect()
}

/// A group, or `None` when it can never match (an ALLOW rule of only empty matches).
fn compile_group(group: &Group, allow: bool) -> Option<CompiledRule> {
    let mut clauses = Vec::new();
    for rule in &group.rules {
        if rule.matches.iter().all(Match::is_empty) {
            if allow {
                return None;
            }
            // DENY: the clause holds for every connection, so it restricts nothing.
            continue;
        }
        clauses.push(rule.matches.iter().map(|m| matcher(m, allow)).collect());
    }
    Some(CompiledRule { clauses })
}

fn positive<T: Clone>(values: &[T]) -> Positive<T> {
    (!values.is_empty()).then(|| values.to_vec())
}

fn matcher(m: &Match, allow: bool) -> Matcher {
    if m.is_empty() {
        return if allow {
            Matcher::nothing()
        } else {
            Matcher::everything()
        };
    }
    if allow && m.extensions {
        return Matcher::nothing();
    }
    let accounts = |list: &[meshd_workloadapi::model::ServiceAccount]| {
        list.iter()
            .map(|a| (a.namespace.clone(), a.name.clone()))
            .collect::<Vec<_>>()
    };
    Matcher {
        principals: positive(&m.principals),
        not_principals: m.not_principals.clone(),
        namespaces: positive(&m.namespaces),
        not_namespaces: m.not_namespaces.clone(),
        service_accounts: positive(&accounts(&m.service_accounts)),
        not_service_accounts: accounts(&m.not_service_accounts),
        // istiod's proto has no trust-domain field: `trustDomains` are dropped by istiod (M6
        // cannot hold for istiod's policies; documented in docs/architecture.md).
        trust_domains: None,
        not_trust_domains: Vec::new(),
        source_ips: positive(&m.source_ips),
        not_source_ips: m.not_source_ips.clone(),
        destination_ips: positive(&m.destination_ips),
        not_destination_ips: m.not_destination_ips.clone(),
        ports: positive(&m.destination_ports),
        not_ports: m.not_destination_ports.clone(),
    }
}
